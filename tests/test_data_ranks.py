"""All processes evaluate and train on the same items (issue 22), with two real processes
(torch.distributed gloo on 127.0.0.1, CPU, `torch.multiprocessing.spawn`), each with its own image cache
as two machines would have, loading a Pixmo-Count copy whose images come from a server on 127.0.0.1
through `load_eval_sets`, where the evaluator loads its sets:

- every image served: both processes hold the same items and go on;
- one image served once only (the local main process, which fetches first, gets it; the other process's
  download fails): both processes stop with the same DataError naming the dataset and what each holds,
  in seconds (a 30 s process-group timeout: a hang would show), instead of scoring completions against
  misaligned items or waiting in a collective;
- a file that cannot be read: the local main process fails inside the block it runs first, and the other
  process is released to fail alike rather than left waiting for it;
- a set that fails to load on one process only (every image of it served once: the other process is left
  with no usable row), followed by a set that loads: the failing process still loads the second set (every
  process enters each set's main-process-first block) and both stop with the same DataError naming the
  process, the set and its error; the evaluation callback's `sync_error` that follows sees that error on
  both, instead of one process's gather meeting the other's items check.

The two processes start in ~15-30 s on a busy 2-core machine (each imports torch and datasets)."""

import datetime
import hashlib
import json
import os
import socket
import traceback

import pytest
from datasets import Dataset, Value

from image_server import ImageServer, png  # tests/image_server.py

WORLD = 2


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pixmo(path, server, prefix: str, files: dict[str, bytes]) -> str:
    rows = [{"image_url": server.url(f"{prefix}/{name}"), "image_sha256": _sha(data), "count": i + 1,
             "label": name.split(".")[0]} for i, (name, data) in enumerate(files.items())]
    Dataset.from_list(rows).cast_column("count", Value("int32")).to_parquet(str(path))
    return str(path)


def _worker(rank: int, port: int, paths: list[str], out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD), OMP_NUM_THREADS="1",
                      RLVLM_CACHE=os.path.join(out_dir, f"cache{rank}"))  # a machine each
    import torch.distributed as dist

    from rlvlm.evaluation.distributed import sync_error
    from rlvlm.evaluation.items import load_eval_sets
    from rlvlm.recipe import build_recipe

    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=30))
    outcomes = {}  # a hang would end as the process group's timeout, not as the DataError asserted
    for scenario, path in zip(("all_served", "one_fails_on_one_process", "unreadable_file"), paths):
        recipe = build_recipe({"data": {"eval": [{"name": "pixmo_count", "split": "train", "path": path, "n": 10}]}})
        try:
            sets = load_eval_sets(recipe)
            outcomes[scenario] = {"ok": True, "ids": sorted(e["id"] for e in sets["pixmo_count"])}
        except Exception as e:  # noqa: BLE001 - reported to the test
            outcomes[scenario] = {"ok": False, "type": type(e).__name__, "message": str(e),
                                  "traceback": traceback.format_exc()}
    # as the evaluation callback builds its evaluator: the load, then sync_error whatever happened
    specs = [{"name": "pixmo_count", "split": "train", "path": p, "n": 10} for p in paths[3:]]
    error = None
    try:
        load_eval_sets(build_recipe({"data": {"eval": specs}}))
    except Exception as e:  # noqa: BLE001 - shared below, as the callback does
        error = f"{type(e).__name__}: {e}"
        outcomes["fails_on_one_process_only"] = {"type": type(e).__name__, "message": str(e),
                                                 "traceback": traceback.format_exc()}
    outcomes["synced_error"] = sync_error(error)
    dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(outcomes, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(240)
def test_a_download_failing_on_one_process_stops_both_with_the_named_mismatch(tmp_path):
    import torch.multiprocessing as mp

    images = {"apples.png": png("red"), "birds.png": png("blue"), "cars.png": png("green")}
    files = {f"/{prefix}/{name}": data for prefix in ("ok", "flaky", "gone", "later") for name, data in images.items()}
    with ImageServer(files, once=("/flaky/birds.png", *(f"/gone/{name}" for name in images))) as server:
        (tmp_path / "broken.parquet").write_bytes(b"not parquet")  # fails inside the main-first block
        paths = [_pixmo(tmp_path / "ok.parquet", server, "/ok", images),
                 _pixmo(tmp_path / "flaky.parquet", server, "/flaky", images), str(tmp_path / "broken.parquet"),
                 _pixmo(tmp_path / "gone.parquet", server, "/gone", images),
                 _pixmo(tmp_path / "later.parquet", server, "/later", images)]
        mp.spawn(_worker, args=(_free_port(), paths, str(tmp_path)), nprocs=WORLD, join=True)
        assert server.requests["/flaky/birds.png"] == 1 + 3  # process 0's, then process 1's three tries
        assert all(server.requests[f"/gone/{name}"] == 1 + 3 for name in images)
    out = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]

    for rank in range(WORLD):
        ok = out[rank]["all_served"]
        assert ok["ok"], ok.get("traceback")
        assert ok["ids"] == ["pixmo_count-0", "pixmo_count-1", "pixmo_count-2"]

    failed = [o["one_fails_on_one_process"] for o in out]
    for f in failed:
        assert not f["ok"] and f["type"] == "DataError", f.get("traceback")
        assert "Dataset 'pixmo_count' (data.eval pixmo_count): the processes loaded different items" in f["message"]
        assert "process 0: 3 items" in f["message"] and "process 1: 2 items" in f["message"]
    assert failed[0]["message"] == failed[1]["message"]

    # the local main process fails inside the block it runs first: the other one is not left waiting for
    # it (a process-group timeout), it reads the file in its turn and stops with the same error
    for o in out:
        broken = o["unreadable_file"]
        assert not broken["ok"] and broken["type"] == "DataError", broken.get("traceback")
        assert "Dataset 'pixmo_count': cannot load split 'train'" in broken["message"]

    # one process only fails to load a set: both stop with the same DataError naming who failed and why,
    # the failing one having loaded the next set too; the callback's sync_error then agrees on it
    one = [o["fails_on_one_process_only"] for o in out]
    for o in one:
        assert o["type"] == "DataError", o["traceback"]
        assert o["message"].startswith("Loading the data failed on some processes only: process 1 "
                                       "(data.eval pixmo_count-train-0): DataError: Dataset 'pixmo_count' "
                                       "(split 'train') has no usable row"), o["message"]
        assert "process(es) 0 loaded every set" in o["message"] and "process 0 (" not in o["message"]
    assert one[0]["message"] == one[1]["message"]
    assert out[0]["synced_error"] == out[1]["synced_error"] == f"DataError: {one[0]['message']}"
    assert all(server.requests[f"/later/{name}"] == WORLD for name in images)  # both loaded the second set
