"""Distributed evaluation that cannot hang or corrupt training (issue 19), with two real processes
(torch.distributed gloo on 127.0.0.1, CPU, `torch.multiprocessing.spawn`) on the tiny model:

- without failures, two processes score their own shares and the main process aggregates the records
  of a one-process run;
- a failure on process 1 only (its second batch) stops both processes at the same round boundary with
  `EvaluationError` and the same message, in seconds (a 30 s process-group timeout: a hang would show);
  each generate call takes part in a collective, as generation does under ZeRO-3 (`synced_gpus`), so a
  process that kept generating after its peer failed would meet a mismatched collective;
- `EvalCallback` takes the same decision on both processes: `on_error: log` trains on (a later
  collective still matches), `stop` raises on both;

and, in one process: TRL's generation context is restored when the evaluation raises inside it, with the
trainer's own gradient checkpointing kwargs; a failure inside collective passes ends the process
(`EvaluationAborted`, which `on_error: log` does not swallow); a scorer that runs the model (`bind`)
scores on the main process.

The two processes start in ~25-40 s on a busy 2-core machine (each imports torch and transformers);
the evaluations themselves take about a second."""

import datetime
import json
import os
import socket
import time
import traceback
import types

import pytest

WORLD = 2
FAIL_ON_CALL = 2  # process 1's second generate call raises
CONDS = ["base", "wrong_think"]


def eval_recipe(**evaluation):
    from rlvlm.recipe import build_recipe

    # 4 items x 2 conditions, one per batch: 8 batches, 4 rounds per process
    return build_recipe({"data": {"eval": [{"name": "shapes", "split": "eval", "n": 4}]},
                         "evaluation": {"conditions": CONDS, "max_new_tokens": 4, "batch_size": 1, **evaluation}})


def _outcome(fn) -> dict:
    start = time.perf_counter()
    try:
        value = fn()
        return {"ok": True, "value": value, "seconds": time.perf_counter() - start}
    except BaseException as e:  # noqa: BLE001 - reported to the test
        return {"ok": False, "type": type(e).__name__, "message": str(e), "seconds": time.perf_counter() - start,
                "traceback": traceback.format_exc()}


def _worker(rank: int, port: int, model_path: str, out_dir: str) -> None:
    """One process of the two: every scenario in turn, each outcome into out_dir/rank<r>.json."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD), OMP_NUM_THREADS="1")
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerControl, TrainerState

    from rlvlm.callbacks import EvalCallback
    from rlvlm.evaluation import evaluator as evaluator_module
    from rlvlm.evaluation.distributed import process_state
    from rlvlm.evaluation.evaluator import Evaluator

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=30))
    out: dict = {"rank": rank}

    def save():
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)

    try:
        state = process_state()
        out["num_processes"] = state.num_processes
        model = AutoModelForImageTextToText.from_pretrained(model_path)
        processor = AutoProcessor.from_pretrained(model_path)
        evaluator = Evaluator.from_recipe(eval_recipe(), processor)

        # 1. no failure: each process scores its own items; the main process holds all the records
        real_score, scored = evaluator_module.score, []

        def score(items, *args, **kwargs):
            scored.extend(it["id"] + "/" + it["condition"] for it in items)
            return real_score(items, *args, **kwargs)

        evaluator_module.score = score
        ok = _outcome(lambda: evaluator.run(model, step=3).records)
        evaluator_module.score = real_score
        ok["scored"] = scored
        out["clean"] = ok
        save()
        if not ok["ok"]:
            return

        # 2. a failure on process 1's second batch; every generate call takes part in a collective
        real_generate = evaluator_module.generate_transformers
        calls = {"n": 0}

        def generate(*args, **kwargs):
            calls["n"] += 1
            dist.all_reduce(torch.ones(1))  # the collectives inside generate under ZeRO-3 (synced_gpus)
            if rank == 1 and calls["n"] == FAIL_ON_CALL:
                raise RuntimeError(f"injected failure on process 1, generate call {FAIL_ON_CALL}")
            return real_generate(*args, **kwargs)

        evaluator_module.generate_transformers = generate
        fail = _outcome(lambda: evaluator.run(model, step=4))
        fail["calls"] = calls["n"]
        out["failure"] = fail
        save()
        if fail.get("type") != "EvaluationError":
            return

        # 3. the callback, on_error: log, then stop; a minimal stand-in for the trainer's state
        def drive(on_error, name):
            calls["n"] = 0
            cb = EvalCallback(eval_recipe(on_error=on_error), run_dir=os.path.join(out_dir, name))
            state = TrainerState()
            state.global_step = 0
            state.is_world_process_zero = rank == 0
            cb.on_train_begin(None, state, TrainerControl(), model=model, processing_class=processor)
            total = torch.ones(1)
            dist.all_reduce(total)  # "training goes on": the next collective matches on both processes
            return {"history": cb.history, "next_collective": total.item()}

        out["callback_log"] = _outcome(lambda: drive("log", "cb_log"))
        save()
        if not out["callback_log"]["ok"]:
            return
        out["callback_stop"] = _outcome(lambda: drive("stop", "cb_stop"))
        save()
    finally:
        save()
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(tiny_model_path), AutoProcessor.from_pretrained(tiny_model_path)


@pytest.fixture(scope="module")
def two_processes(tiny_model_path, tmp_path_factory):
    import torch.multiprocessing as mp

    out_dir = tmp_path_factory.mktemp("two-processes")
    with socket.socket() as sock:  # a free port: other jobs on the machine may hold the default one
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.perf_counter()
    mp.spawn(_worker, args=(port, str(tiny_model_path), str(out_dir)), nprocs=WORLD, join=True)
    seconds = time.perf_counter() - start
    ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(WORLD)]
    print(f"two processes: {seconds:.1f}s;", {k: round(v["seconds"], 1) for k, v in ranks[0].items() if isinstance(v, dict)})
    return {"ranks": ranks, "dir": out_dir, "seconds": seconds}


def _show(outcome: dict) -> str:
    return outcome.get("traceback") or outcome.get("message") or ""


@pytest.mark.timeout(240)
def test_two_processes_score_their_shares_into_the_records_of_one(two_processes, tiny):
    import torch

    from rlvlm.evaluation.evaluator import Evaluator

    r0, r1 = two_processes["ranks"]
    assert r0["num_processes"] == r1["num_processes"] == WORLD
    assert r0["clean"]["ok"], _show(r0["clean"])
    assert r1["clean"]["ok"], _show(r1["clean"])
    model, processor = tiny
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the two processes: float sums then add up in the same order
    try:
        one = Evaluator.from_recipe(eval_recipe(), processor).run(model, step=3).records
    finally:
        torch.set_num_threads(threads)
    assert len(one) == 8
    one = json.loads(json.dumps(one))
    assert len(r0["clean"]["value"]) == len(one)
    for got, want in zip(r0["clean"]["value"], one):  # the same records, in the same order
        assert got == want, {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)}
    assert r1["clean"]["value"] == []  # only the main process aggregates
    # the scoring (judge calls) was shared: each process scored its own 4 items, together all 8 once
    s0, s1 = r0["clean"]["scored"], r1["clean"]["scored"]
    assert len(s0) == len(s1) == 4 and sorted(s0 + s1) == sorted(f"{r['id']}/{r['condition']}" for r in one)


@pytest.mark.timeout(240)
def test_a_failure_on_one_process_stops_both_at_the_same_round(two_processes):
    r0, r1 = two_processes["ranks"]
    f0, f1 = r0.get("failure"), r1.get("failure")
    assert f0 is not None and f1 is not None, (r0, r1)
    assert f0["type"] == f1["type"] == "EvaluationError", (_show(f0), _show(f1))
    assert f0["message"] == f1["message"]
    assert "process 1" in f0["message"] and "injected failure" in f0["message"]
    # the round boundary: process 0 generated no batch after the round in which process 1 failed
    assert f0["calls"] == f1["calls"] == FAIL_ON_CALL
    # no hang: both left well inside the 30 s process-group timeout
    assert f0["seconds"] < 20 and f1["seconds"] < 20, (f0["seconds"], f1["seconds"])


@pytest.mark.timeout(240)
def test_callback_takes_the_same_decision_on_both_processes(two_processes):
    r0, r1 = two_processes["ranks"]
    log0, log1 = r0.get("callback_log"), r1.get("callback_log")
    assert log0 is not None and log1 is not None, (r0, r1)
    assert log0["ok"] and log1["ok"], (_show(log0), _show(log1))  # on_error: log -> training goes on
    assert log0["value"]["next_collective"] == log1["value"]["next_collective"] == WORLD
    (h0,), (h1,) = log0["value"]["history"], log1["value"]["history"]
    assert h0 == h1 and "injected failure" in h0["error"]
    errors = (two_processes["dir"] / "cb_log" / "eval" / "errors.jsonl").read_text().splitlines()
    assert len(errors) == 1  # recorded once, by the main process
    stop0, stop1 = r0["callback_stop"], r1["callback_stop"]
    assert stop0["type"] == stop1["type"] == "EvaluationError", (_show(stop0), _show(stop1))
    assert stop0["message"] == stop1["message"] and "on_error: stop" in stop0["message"]


# ------------------------------------------------------------------ one process


def _fake_trainer(model, kwargs):
    accelerator = types.SimpleNamespace(unwrap_model=lambda m: m,
                                        state=types.SimpleNamespace(deepspeed_plugin=None, fsdp_plugin=None))
    args = types.SimpleNamespace(ds3_gather_for_generation=True, gradient_checkpointing_kwargs=kwargs)
    return types.SimpleNamespace(model_wrapped=model, accelerator=accelerator, args=args)


def _reentrant(model) -> set:
    return {m._gradient_checkpointing_func.keywords.get("use_reentrant") for m in model.modules()
            if getattr(m, "gradient_checkpointing", False) and hasattr(m, "_gradient_checkpointing_func")}


@pytest.mark.timeout(60)
def test_generation_context_is_restored_after_an_error_with_the_trainers_checkpointing_kwargs(tiny):
    """TRL's unwrap_model_for_generation has no try/finally: an error inside it skipped the restore
    (ZeRO-3 hooks, gradient checkpointing). And without the trainer's kwargs, transformers re-enabled
    checkpointing with use_reentrant=False, undoing what TRL forces for LoRA + ZeRO-3."""
    from rlvlm.callbacks import EvalCallback

    model, _ = tiny
    kwargs = {"use_reentrant": True}
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    try:
        cb = EvalCallback(eval_recipe())
        cb.trainer = _fake_trainer(model, kwargs)
        with cb._model(model) as unwrapped:
            assert not unwrapped.is_gradient_checkpointing  # off for generation
        assert model.is_gradient_checkpointing and _reentrant(model) == {True}

        with pytest.raises(RuntimeError, match="inside generation"):
            with cb._model(model):
                raise RuntimeError("inside generation")
        assert model.is_gradient_checkpointing and _reentrant(model) == {True}
    finally:
        model.gradient_checkpointing_disable()


@pytest.mark.timeout(60)
def test_a_failure_inside_collective_passes_ends_the_process(tiny, tmp_path, monkeypatch):
    """Where the passes are collectives (ZeRO-3, FSDP), the peers of a failed pass cannot be reached:
    EvaluationAborted, a BaseException, goes through the evaluator and through on_error: log."""
    from transformers import TrainerControl, TrainerState

    from rlvlm.callbacks import EvalCallback
    from rlvlm.evaluation import evaluator as evaluator_module
    from rlvlm.evaluation.evaluator import EvaluationAborted

    model, processor = tiny

    def boom(*a, **k):
        raise RuntimeError("out of memory inside generate")

    monkeypatch.setattr(evaluator_module, "generate_transformers", boom)
    monkeypatch.setattr(evaluator_module, "passes_are_collective", lambda state, model=None: True)
    cb = EvalCallback(eval_recipe(on_error="log"), run_dir=tmp_path)
    state = TrainerState()
    state.global_step = 0
    model.train()
    with pytest.raises(EvaluationAborted, match="out of memory inside generate"):
        cb.on_train_begin(None, state, TrainerControl(), model=model, processing_class=processor)
    assert model.training  # the evaluator's finally ran on the way out (train mode restored)
    model.eval()
    assert not issubclass(EvaluationAborted, Exception)


@pytest.mark.timeout(60)
def test_a_scorer_that_runs_the_model_scores_on_the_main_process(tiny):
    """A scorer with `bind` (the counterfactual one) reads the policy: it is bound and called once, on the
    main process, with every output (not sharded)."""
    from rlvlm.evaluation.evaluator import Evaluator

    model, processor = tiny
    evaluator = Evaluator.from_recipe(eval_recipe(batch_size=4), processor)
    calls = []

    class PolicyScorer:
        def bind(self, model_, processor_, collective=True):
            calls.append(("bind", model_ is model, collective))

        def __call__(self, completions, **kwargs):
            calls.append(("score", len(completions)))
            return [True] * len(completions)

    evaluator.scorer = PolicyScorer()
    result = evaluator.run(model, step=1)
    assert calls == [("bind", True, False), ("score", 8)]
    assert [r["id"] + r["condition"] for r in result.records] == [it["id"] + it["condition"] for it in evaluator.items]
    assert all(r["consistent"] for r in result.records)
