"""Inputs that used to be accepted and then silently reinterpreted (or failed late): GRPOConfig values
TRL would read differently from what the recipe says, the model section's loading arguments, and (below)
custom data files and the shared warm-start cache."""

import pytest

from rlvlm.recipe import RecipeError, build_recipe


# ------------------------------------------------------------------------------ GRPOConfig values


@pytest.mark.parametrize("raw, named", [
    ({"max_steps": -3}, "'max_steps': -3"),
    ({"max_steps": 0}, "'max_steps': 0"),
    ({"save_steps": 0}, "'save_steps': 0"),
    ({"save_steps": -2, "save_strategy": "steps"}, "'save_steps': -2"),
    ({"logging_steps": -1}, "'logging_steps': -1"),
    ({"save_total_limit": 0}, "'save_total_limit': 0"),
    ({"num_generations": 1}, "'num_generations': 1"),
    ({"gradient_accumulation_steps": 0}, "'gradient_accumulation_steps': 0"),
    ({"max_completion_length": 0}, "'max_completion_length': 0"),
    ({"num_train_epochs": 0}, "'num_train_epochs': 0"),
    ({"temperature": 0}, "'temperature': 0"),
    ({"model_init_kwargs": {"dtype": "float32"}}, "model.dtype"),
])
def test_values_trl_would_reinterpret_are_rejected(raw, named):
    with pytest.raises(RecipeError) as e:
        build_recipe(raw)
    assert named in str(e.value)


@pytest.mark.parametrize("raw", [
    {},  # TRL's own default max_steps (-1: train by epochs) is not the recipe's to reject
    {"max_steps": 5, "save_steps": 0.5},  # a fraction of max_steps
    {"save_steps": 0, "save_strategy": "no"},
    {"num_train_epochs": 0, "max_steps": 3},
    {"save_total_limit": None},
])
def test_values_trl_reads_as_written_are_kept(raw):
    build_recipe(raw)


def test_cli_exits_2_on_negative_max_steps(capsys):
    from rlvlm.cli import main

    assert main(["train", "recipes/tiny-shapes.yaml", "--max_steps", "-3", "--report_to", "none"]) == 2
    assert "'max_steps': -3" in capsys.readouterr().err


def test_per_device_batch_not_divisible_by_num_generations_fails_before_the_model():
    from rlvlm.train import validate

    recipe = build_recipe({"per_device_train_batch_size": 3, "num_generations": 2, "report_to": "none",
                           "evaluation": {"enabled": False}, "warm_start": {"enabled": False}})
    with pytest.raises(RecipeError, match=r"generation_batch_size \(3\) must be divisible by num_generations \(2\)"):
        validate(recipe)


# ------------------------------------------------------------------------------ model loading arguments


def test_model_dtype_and_attention_reach_trl(monkeypatch):
    import importlib.util

    import torch

    recipe = build_recipe({"model": {"name": "Qwen/Qwen2.5-VL-7B-Instruct", "dtype": "bfloat16"}, "report_to": "none"})
    assert recipe.grpo_config().model_init_kwargs == {"dtype": "bfloat16", "attn_implementation": "sdpa"}
    from rlvlm.models import attn_implementation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else real_find_spec(name, *a))
    assert attn_implementation(recipe.model) == "flash_attention_2"
    fp32 = build_recipe({"model": {"dtype": "float32"}})  # flash-attn runs 16-bit weights only
    assert attn_implementation(fp32.model) == "sdpa"
    monkeypatch.undo()
    eager = build_recipe({"model": {"attn_implementation": "eager"}, "model_init_kwargs": {"revision": "main"}})
    assert eager.grpo_kwargs()["model_init_kwargs"] == {"dtype": "auto", "attn_implementation": "eager", "revision": "main"}
    with pytest.raises(RecipeError, match="model.attn_implementation"):
        build_recipe({"model": {"attn_implementation": "flash"}})


# ------------------------------------------------------------------------------ the shared warm-start cache


def test_concurrent_warm_starts_build_once(tmp_path, monkeypatch):
    """Two runs on a fresh cache: the second waits for the first one's warm-start and reuses it (a stub
    SFT that takes a while stands in for the real one)."""
    import threading
    import time

    import transformers
    import trl

    from rlvlm import warmstart
    from rlvlm.recipe import WarmStartSection

    trained = []

    class Saves:
        def save_pretrained(self, path):
            (path / "processor.json").write_text("{}")

    class StubSFT:
        def __init__(self, model, args, **kw):
            self.args = args

        def train(self):
            trained.append(threading.current_thread().name)
            time.sleep(0.5)

        def save_model(self, path):
            (warmstart.Path(path) / "model.safetensors").write_text("weights")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", lambda *a, **k: Saves())
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", lambda *a, **k: object())
    monkeypatch.setattr(trl, "SFTTrainer", StubSFT)
    monkeypatch.setattr(trl, "SFTConfig", lambda **kw: kw)
    monkeypatch.setattr(warmstart, "sft_rows", lambda section: [{"prompt": "p"}])
    base = tmp_path / "cache" / "tiny"
    base.mkdir(parents=True)
    section = WarmStartSection(vision_steps=0)
    results, errors = [], []

    def run():
        try:
            results.append(warmstart.warm_start(base, section, progress=False))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, name=f"run{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert len(trained) == 1, trained  # one build; the other run reused it
    out = warmstart.warm_start_dir(base, section)
    assert results == [out, out] and (out / "rlvlm_warm_start.json").is_file()
    assert not [p for p in base.parent.iterdir() if ".tmp" in p.name]  # no half-written copy left behind


# ------------------------------------------------------------------------------ custom data files


def write_rows(path, rows, image="a.png"):
    import io
    import json

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    (path.parent / image).write_bytes(buf.getvalue())
    path.write_text("".join(json.dumps({"image": image, "question": "Colour?", **r}) + "\n" for r in rows))
    return str(path)


def custom(path, **kw):
    from rlvlm.recipe import DatasetSpec

    from pathlib import Path

    kw.setdefault("image_root", str(Path(path).parent))
    return DatasetSpec(name="custom", path=path, n=100, **kw)


def test_duplicate_options_name_file_line_and_option(tmp_path, caplog):
    import logging

    from rlvlm.data.load import load_examples

    path = write_rows(tmp_path / "mine.jsonl", [
        {"id": "ok", "options": ["red", "blue"], "answer": "A"},
        {"id": "dup", "options": ["red", "blue", "red"], "answer": "C"},  # answering the first "red" scored 0
        {"id": "dup-text", "options": ["red", "blue", "red"], "answer": "red"},  # was "gold not among options"
    ])
    with pytest.raises(RecipeError) as e:
        load_examples(custom(path, on_bad_row="stop"))
    assert f"{path} line " in str(e.value) and "duplicate option 'red' (options A and C)" in str(e.value)
    caplog.set_level(logging.WARNING, logger="rlvlm.data")
    assert [ex["id"] for ex in load_examples(custom(path))] == ["custom-ok"]
    logged = caplog.text
    assert "duplicate option: 2" in logged and f"custom-dup ({path} line 2)" in logged


def test_text_answer_equal_to_one_option_is_its_letter(tmp_path):
    from rlvlm.data.load import load_examples

    path = write_rows(tmp_path / "mine.jsonl", [
        {"id": "text", "options": ["red", "blue", "green"], "answer": "blue"},
        {"id": "index", "options": ["red", "blue", "green"], "answer": 2},
        {"id": "two-ways", "options": ["1", "2", "3"], "answer": 2},  # index 2 (C) or the text of B?
    ])
    exs = {ex["id"]: ex["answer"] for ex in load_examples(custom(path))}
    assert exs == {"custom-text": "B", "custom-index": "C"}
    with pytest.raises(RecipeError, match=r"line 3\).*gold 2 is ambiguous: option B's text, or index 2 \(option C"):
        load_examples(custom(path, on_bad_row="stop", seed=3))


def test_empty_file_is_named(tmp_path):
    from rlvlm.data.load import check_dataset

    for name in ("empty.jsonl", "blank.json"):
        path = tmp_path / name
        path.write_text("" if name.endswith("l") else "\n  \n")
        with pytest.raises(RecipeError, match=f"{path} is empty"):
            check_dataset(custom(str(path)))


def test_broken_json_line_is_named(tmp_path):
    from rlvlm.data.load import check_dataset

    path = write_rows(tmp_path / "mine.jsonl", [{"options": ["a", "b"], "answer": "A"}] * 3)
    lines = (tmp_path / "mine.jsonl").read_text().splitlines()
    lines[1] = lines[1][:-5]
    (tmp_path / "mine.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RecipeError, match=f"{path} line 2 is not valid JSON"):
        check_dataset(custom(path))
    json_path = tmp_path / "mine.json"
    json_path.write_text('[{"question": "q",\n "answer": }]')
    with pytest.raises(RecipeError, match=f"{json_path} line 2 is not valid JSON"):
        check_dataset(custom(str(json_path)))


def test_missing_columns_are_named(tmp_path):
    from rlvlm.data.load import check_dataset, load_examples

    no_options = write_rows(tmp_path / "free.jsonl", [{"answer": "4"}])
    with pytest.raises(RecipeError, match=r"no column for options \('options'; .*free_form: true"):
        check_dataset(custom(no_options))
    assert load_examples(custom(no_options, free_form=True))[0]["answer"] == "4"  # declared: free-form
    no_answer = write_rows(tmp_path / "q.jsonl", [{"options": ["a", "b"], "label": "A"}])
    with pytest.raises(RecipeError, match=r"no column for answer \('answer'\).*'label'"):
        check_dataset(custom(no_answer))
    assert load_examples(custom(no_answer, columns={"answer": "label"}))[0]["answer"] == "A"
    with pytest.raises(RecipeError, match="free_form: true"):
        check_dataset(custom(no_answer, free_form=True, columns={"answer": "label"}))  # options there too
    with pytest.raises(RecipeError, match="'free_form' applies to name: custom only"):
        check_dataset(DatasetSpec_(name="cv_bench", free_form=True))


def DatasetSpec_(**kw):
    from rlvlm.recipe import DatasetSpec

    return DatasetSpec(**kw)


def test_parquet_without_options_column_is_named(tmp_path):
    from datasets import Dataset

    from rlvlm.data.load import load_examples

    path = str(tmp_path / "d.parquet")
    Dataset.from_dict({"image": ["x.png"], "question": ["How many?"], "answer": ["4"]}).to_parquet(path)
    with pytest.raises(RecipeError, match=r"d.parquet has no column for options"):
        load_examples(custom(path))


def test_custom_data_errors_exit_2(tmp_path, capsys):
    from rlvlm.cli import main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {{train: {{name: custom, path: {empty}}}}}\nreport_to: none\n"
                      f"output_dir: {tmp_path / 'run'}\n")
    assert main(["train", str(recipe)]) == 2
    assert f"{empty} is empty" in capsys.readouterr().err
