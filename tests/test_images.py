"""Images as the data layer keeps them (rlvlm.data.images): URLs fetched by pooch from a server on
127.0.0.1 (in parallel, once per cache, checked against the source's sha256, failures counted as skip
reasons), `model.max_pixels` applied to the images themselves, and encoded images decoded per batch by
the evaluation and by the training dataset, multi-image examples included."""

import hashlib
import logging

import pytest
from datasets import Dataset, Value

from image_server import ImageServer, png  # tests/image_server.py
from rlvlm.data.images import decode, fetch_images, image_dataset, size
from rlvlm.data.load import load_examples
from rlvlm.recipe import DatasetSpec


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixmo_file(path, rows: list[dict]) -> str:
    Dataset.from_list(rows, features=None).cast_column("count", Value("int32")).to_parquet(str(path))
    return str(path)


def test_pixmo_urls_fetched_once_checked_and_failures_counted(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("RLVLM_CACHE", str(tmp_path / "cache"))
    red, blue, green = png("red"), png("blue"), png("green")
    with ImageServer({"/a.png": red, "/b.png": blue, "/c.png": green}) as server:
        rows = [{"image_url": server.url("/a.png"), "image_sha256": sha(red), "count": 3, "label": "apples"},
                {"image_url": server.url("/b.png"), "image_sha256": sha(blue), "count": 2, "label": "birds"},
                # the host serves another file than the one the source hashed
                {"image_url": server.url("/c.png"), "image_sha256": sha(red), "count": 1, "label": "cars"},
                {"image_url": server.url("/gone.png"), "image_sha256": sha(red), "count": 4, "label": "dogs"}]
        path = pixmo_file(tmp_path / "train.parquet", rows)
        exs = {e["id"]: e for e in load_examples(DatasetSpec(name="pixmo_count", path=path, n=10))}
        assert set(exs) == {"pixmo_count-0", "pixmo_count-1"}
        assert decode(exs["pixmo_count-1"]["image"]).getpixel((0, 0)) == (0, 0, 255)
        skipped = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        assert "does not match its sha256: 1" in skipped and "image download failed: 1" in skipped
        # pooch retried the failures (DOWNLOAD_RETRIES more tries each) and fetched the others once
        assert server.requests["/a.png"] == 1 and server.requests["/gone.png"] == 3
        again = load_examples(DatasetSpec(name="pixmo_count", path=path, n=10))
        assert sorted(e["id"] for e in again) == ["pixmo_count-0", "pixmo_count-1"]
        assert server.requests["/a.png"] == 1 and server.requests["/b.png"] == 1  # read from the cache


def test_fetch_images_in_parallel_reports_each_url(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVLM_CACHE", str(tmp_path / "cache"))
    files = {f"/{i}.png": png(c) for i, c in enumerate(["red", "green", "blue", "white", "black"])}
    with ImageServer(files) as server:
        got = fetch_images({server.url(p): sha(b) for p, b in files.items()} | {server.url("/none.png"): None},
                           retries=0)
    assert {u: (r.read_bytes() if hasattr(r, "read_bytes") else str(r)) for u, r in got.items()} == (
        {server.url(p): b for p, b in files.items()} | {server.url("/none.png"): "image download failed (HTTPError)"})


def test_max_pixels_caps_the_images_every_processor_sees(tmp_path):
    rows = [{"id": "big", "image": {"bytes": png("red", (400, 300)), "path": None}, "question": "Color?",
             "options": ["red", "blue"], "answer": "A"},
            {"id": "small", "image": {"bytes": png("blue", (40, 30)), "path": None}, "question": "Color?",
             "options": ["red", "blue"], "answer": "B"}]
    path = tmp_path / "d.parquet"
    from datasets import Features, Image, List

    Dataset.from_list(rows, features=Features({"id": Value("string"), "image": Image(), "question": Value("string"),
                                               "options": List(Value("string")), "answer": Value("string")})
                      ).to_parquet(str(path))
    exs = {e["id"]: e for e in load_examples(DatasetSpec(name="custom", path=str(path)), max_pixels=10_000)}
    width, height = size(exs["custom-big"]["image"])
    assert width * height <= 10_000 and abs(width / height - 4 / 3) < 0.02
    assert exs["custom-small"]["image"] == png("blue", (40, 30))  # under the cap: the stored bytes, untouched
    uncapped = {e["id"]: e for e in load_examples(DatasetSpec(name="custom", path=str(path)))}
    assert size(uncapped["custom-big"]["image"]) == (400, 300)


def test_multi_image_examples_through_evaluation_and_training_rows():
    """A two-image example (SAT) reaches the evaluation's prompt with two image blocks and two decoded
    images per batch, and the training dataset as an `images` column that decodes as it is read."""
    from rlvlm.evaluation.items import item_images, prepare_items, prompt_lengths
    from rlvlm.train import grpo_rows

    two = {"id": "sat-0", "images": [png("red"), png("blue", (32, 16))], "question": "Did the camera move left?",
           "options": ["yes", "no"], "answer": "B", "source": "sat"}
    one = {"id": "sat-1", "image": png("green"), "question": "Is it left?", "options": ["yes", "no"],
           "answer": "A", "source": "sat"}
    items = prepare_items({"sat": [two, one]}, ["base"])
    first = next(it for it in items if it["id"] == "sat-0")
    blocks = [b for m in first["prompt"] for b in (m["content"] if isinstance(m["content"], list) else [])]
    assert [b["type"] for b in blocks].count("image") == 2
    decoded = item_images(first)
    assert [im.getpixel((0, 0)) for im in decoded] == [(255, 0, 0), (0, 0, 255)] and decoded[1].size == (32, 16)

    class Patches:  # a processor's image arithmetic: one token per 8 x 8 pixels
        merge_size = 1

        def get_number_of_image_patches(self, height, width):
            return (height // 8) * (width // 8)

    class Processor:
        image_processor = Patches()

        def tokenizer(self, texts, add_special_tokens=False):
            return {"input_ids": [[0] * 10 for _ in texts]}

    for it in items:
        it["_text"] = "x"
    lengths = dict(zip([it["id"] for it in items], prompt_lengths(Processor(), items)))
    assert lengths == {"sat-0": 10 + (2 * 1 - 1) + (2 * 4 - 1), "sat-1": 10 + (2 * 1 - 1)}

    rows = grpo_rows([two, one], seed=0)
    ds = image_dataset(rows)
    assert [len(r["images"]) for r in ds] == [2, 1]
    assert ds[0]["images"][1].size == (32, 16) and ds[1]["images"][0].getpixel((0, 0)) == (0, 128, 0)
    # the preflight calls the rewards with the images as the trainer's dataset gives them: decoded
    from rlvlm.preflight import reward_call

    _, kwargs = reward_call(rows)
    assert [[im.size for im in ims] for ims in kwargs["images"]][::2] == [[(16, 12), (32, 16)], [(16, 12)]]


@pytest.mark.parametrize("value", [b"not an image", {"bytes": b"\x89PNG broken", "path": None}])
def test_decode_names_an_unreadable_image(value):
    from rlvlm.data.images import ImageError

    with pytest.raises(ImageError, match="unreadable image"):
        decode(value)
