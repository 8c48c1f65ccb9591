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
