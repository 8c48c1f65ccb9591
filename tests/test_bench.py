"""`rlvlm bench`: every measurement runs at a tiny scale on the CPU and yields finite, positive figures;
the plain-TRL side really is the same run; the GPU throughput path runs with a tiny size."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from rewards import accuracy_reward, format_reward
from rlvlm import bench
from rlvlm.recipe import parse_overrides
from rlvlm.tiny import TINY_TEXT, TINY_VISION

# The embedded default, scaled down: untrained tiny model, small batches, a 4-example eval set.
TINY = bench.Settings(
    rounds=1, warmup_steps=1, timed_steps=1, rule_completions=500, rule_repeats=1, memory_steps=1,
    overrides={
        "warm_start.enabled": False,
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 16,
        "data.eval": [{"name": "shapes", "split": "eval", "n": 4}],
        "evaluation.max_new_tokens": 16,
    },
)


def positive_finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


# ------------------------------------------------------------------ no model


def test_synthetic_batch_is_reproducible_and_varied():
    batch = bench.synthetic_batch(300, seed=1)
    assert batch == bench.synthetic_batch(300, seed=1)
    assert all(len(col) == 300 for col in batch.values())
    assert any(isinstance(c, list) for c in batch["completions"])  # conversational form
    assert any(isinstance(c, str) for c in batch["completions"])
    assert any(p is not None for p in batch["think_prefix"])

    acc = accuracy_reward(batch["completions"], answer=batch["answer"], options=batch["options"], think_prefix=batch["think_prefix"])
    fmt = format_reward(batch["completions"], think_prefix=batch["think_prefix"])
    assert {0.0, 1.0} <= set(acc) and {0.0, 1.0} <= set(fmt)  # both outcomes: not a trivial workload


def test_rule_reward_throughput():
    out = bench.rule_reward_throughput(400, repeats=2)
    assert positive_finite(out["value"]) and out["completions"] == 400


def test_goals_pass_and_fail_at_their_bounds():
    metrics = bench.with_goals({
        "trainer_overhead_ratio": {"value": 1.05},
        "eval_cost_fraction": {"value": 0.26},
        "counterfactual_reward_fraction": {"value": 0.1},
        "rule_reward_throughput": {"value": 19_999.0},
        "peak_memory_mb": {"value": 900.0},
    })
    assert {k: m["pass"] for k, m in metrics.items()} == {
        "trainer_overhead_ratio": True, "eval_cost_fraction": False, "counterfactual_reward_fraction": True,
        "rule_reward_throughput": False, "peak_memory_mb": True,
    }
    assert metrics["rule_reward_throughput"]["goal"] == ">= 20000"
    assert "FAIL" in bench.table(metrics) and "pass" in bench.table(metrics)


def test_train_command_passes_overrides_as_rlvlm_reads_them(tmp_path):
    cmd = bench.train_command(TINY, tmp_path, steps=3)
    assert cmd[1:5] == ["-m", "rlvlm", "train", str(bench.RECIPE)]
    parsed = parse_overrides(cmd[5:cmd.index("--quiet")] + cmd[cmd.index("--quiet") + 1:])
    assert parsed == {**TINY.overrides, "output_dir": str(tmp_path), "max_steps": 3, "save_steps": 3, "report_to": "none"}


# ------------------------------------------------------------------ trainers (tiny model)


@pytest.fixture(scope="module")
def model_dir(tiny_model_path):
    return bench.model_path(TINY)


def test_model_path_is_the_recipes_tiny_model(model_dir, tiny_model_path):
    assert model_dir == str(tiny_model_path)  # warm start disabled by TINY's overrides


def test_plain_trl_side_is_the_same_run(model_dir, tmp_path):
    recipe = bench.bench_recipe(TINY, tmp_path / "a")
    ours = bench.rlvlm_trainer(recipe)
    plain = bench.plain_trainer(bench.bench_recipe(TINY, tmp_path / "b"), model_dir)
    assert type(plain).__module__.startswith("trl.") and type(plain) is type(ours)
    for key in ("per_device_train_batch_size", "num_generations", "max_completion_length", "learning_rate",
                "reward_weights", "seed", "max_steps", "temperature", "beta"):
        assert getattr(plain.args, key) == getattr(ours.args, key), key
    # rlvlm wraps each plain reward function (checks, logging); TRL gets the function itself
    assert [f.components[0][1] for f in ours.reward_funcs] == plain.reward_funcs == [accuracy_reward, format_reward]
    assert plain.train_dataset["prompt"] == ours.train_dataset["prompt"]
    assert len(plain.train_dataset) == TINY.overrides["per_device_train_batch_size"] // TINY.overrides["num_generations"] * 2
    assert not any(type(cb).__name__ == "EvalCallback" for cb in ours.callback_handler.callbacks)


def test_plain_trl_side_reads_encoded_images_as_images(model_dir, tmp_path, monkeypatch):
    """A real dataset's examples hold their images as encoded bytes: the plain side's rows type them
    datasets.Image (decoded as read), as rlvlm's trainer does, not as a binary column."""
    from datasets import Image as ImageFeature
    from PIL import Image

    from rlvlm.data import load
    from rlvlm.data.images import encode

    real = load.load_examples

    def encoded(spec, max_pixels=None):
        return [{**ex, "image": encode(ex["image"])} for ex in real(spec, max_pixels)]

    monkeypatch.setattr(load, "load_examples", encoded)
    plain = bench.plain_trainer(bench.bench_recipe(TINY, tmp_path), model_dir)
    assert isinstance(plain.train_dataset.features["image"], ImageFeature)
    assert isinstance(plain.train_dataset[0]["image"], Image.Image)


def test_plain_trl_side_refuses_gated_rewards(model_dir, tmp_path):
    with pytest.raises(ValueError, match="no gates"):
        bench.plain_trainer(bench.bench_recipe(TINY, tmp_path, bench.WITH_COUNTERFACTUAL), model_dir)


@pytest.mark.slow
def test_side_by_side_yields_every_ratio(model_dir, tmp_path):
    runs = bench.side_by_side(TINY, model_dir, tmp_path)
    assert {k: len(v) for k, v in runs.items()} == {"rlvlm": 1, "trl": 1, "counterfactual": 1, "eval_seconds": 1}
    assert len(runs["rlvlm"][0]["step_seconds"]) == TINY.timed_steps  # warmup dropped
    metrics = bench.summarise(runs, save_every=50)
    assert set(metrics) == {"trainer_overhead_ratio", "eval_cost_fraction", "counterfactual_reward_fraction"}
    for m in metrics.values():
        assert positive_finite(m["value"])
    assert positive_finite(metrics["counterfactual_reward_fraction"]["full_batch_bound"])
    ratio = metrics["trainer_overhead_ratio"]
    assert ratio["value"] == pytest.approx(ratio["rlvlm_step_seconds"] / ratio["trl_step_seconds"])


@pytest.mark.slow
def test_peak_memory_of_the_main_job(model_dir, tmp_path):
    out = bench.peak_memory(TINY, tmp_path)
    assert out["steps"] == 1 and 100 < out["value"] < 64_000
    trace = [json.loads(line) for line in (tmp_path / "memory" / "eval" / "trace.jsonl").read_text().splitlines()]
    assert {row["step"] for row in trace} == {0, 1}  # it evaluated at the start and at its checkpoint


# ------------------------------------------------------------------ GPU path, scaled down to run on a CPU

# the tiny model's shapes, with a vocabulary larger than the tokenizer's as the real sizes have
TINY_SIZE = {"tiny": {"text": dict(TINY_TEXT, vocab_size=2048), "vision": TINY_VISION, "tie_word_embeddings": True}}


def test_padded_tokenizer_decodes_every_model_id(tiny_model_path):
    processor = bench.full_vocab_processor(2048)
    tok = processor.tokenizer
    assert len(tok) == 2048
    assert tok.decode([2047]) == "<|rand_2047|>"
    assert tok.convert_ids_to_tokens([2047]) == ["<|rand_2047|>"]  # unpadded, this is [None]
    from PIL import Image

    grid = processor.image_processor(images=[Image.new("RGB", (448, 448))], return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 32, 32]]  # Qwen2.5-VL's pixel limits: 448 px stays 448 px (256 merged tokens)


@pytest.mark.slow
def test_gpu_throughput_path_on_cpu(tiny_model_path):
    gs = bench.GpuSettings(sizes=TINY_SIZE, image_size=112, completion_length=8, num_generations=4,
                           warmup_steps=1, timed_steps=1, lora=False, eval_items=4, eval_batch_size=2, eval_new_tokens=6)
    out = bench.gpu_throughput(gs, device="cpu")
    run = out["sizes"]["tiny"]["transformers"]
    assert run["mean_completion_length"] == 8  # min_new_tokens holds every completion at the fixed length
    assert run["generated_tokens_per_step"] == 4 * 8
    assert positive_finite(run["tokens_per_s_per_gpu"])
    assert out["sizes"]["tiny"]["vllm_colocate"] is None and out["vllm_skipped"] == "no CUDA device"
    evaluation = out["evaluation"]["tiny"]["transformers"]
    assert evaluation["responses"] == 4 and 0 < evaluation["mean_response_tokens"] <= 6
    assert positive_finite(evaluation["tokens_per_s_per_gpu"]) and out["evaluation"]["tiny"]["vllm"] is None
    rows = bench.gpu_table(out).splitlines()
    assert rows[1].split()[:2] == ["tiny", "transformers"] and rows[2].split()[-2:] == ["-", "-"]
    assert rows[3].split()[:2] == ["tiny", "eval/transformers"] and rows[4].split()[-2:] == ["-", "-"]
    assert rows[-1] == "vllm_colocate skipped: no CUDA device"


def test_gpu_only_without_a_gpu_exits_2(capsys, monkeypatch):
    import torch

    from rlvlm.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench, "bench_cli", lambda args: pytest.fail("bench ran without a GPU"))
    assert main(["bench", "--gpu-only"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "Traceback" not in err


def test_summarise_on_stand_in_runs():
    """The three ratios from measured step times (the slow test above measures them for real)."""
    def run(*seconds, scorer=None):
        return {"step_seconds": list(seconds), "scorer_seconds": list(scorer or [0.0] * len(seconds)),
                "mean_completion_length": 8.0}

    runs = {"rlvlm": [run(1.1, 1.3)], "trl": [run(1.0, 1.0)], "eval_seconds": [30.0],
            "counterfactual": [{**run(2.0, 3.0, scorer=[0.5, 1.0]), "full_batch_seconds": 2.4}]}
    metrics = bench.summarise(runs, save_every=50)
    assert set(metrics) == {"trainer_overhead_ratio", "eval_cost_fraction", "counterfactual_reward_fraction"}
    ratio = metrics["trainer_overhead_ratio"]
    assert ratio["value"] == pytest.approx(1.2) and ratio["rlvlm_step_seconds"] == pytest.approx(1.2)
    assert metrics["eval_cost_fraction"]["value"] == pytest.approx(30.0 / (1.2 * 50))
    scorer = metrics["counterfactual_reward_fraction"]
    assert scorer["value"] == pytest.approx((0.5 / 1.5 + 1.0 / 2.0) / 2)  # the scorer's share of the rest, median
    assert scorer["full_batch_bound"] == pytest.approx(2.0)
    for m in metrics.values():
        assert positive_finite(m["value"])


def test_gpu_settings_take_the_7b_recipes_per_device_batch():
    gs = bench.gpu_settings_from_recipe()
    # 8 completions per device x 4 accumulation steps per generation round = 4 prompts x 8 rollouts
    assert (gs.prompts_per_step, gs.num_generations, gs.completion_length) == (4, 8, 1024)
    assert (gs.eval_batch_size, gs.eval_new_tokens) == (16, 1024)


def test_qwen_sizes_are_the_published_configs():
    from transformers import Qwen2_5_VLConfig

    for name, size in bench.QWEN_SIZES.items():
        config = Qwen2_5_VLConfig(text_config=size["text"], vision_config=size["vision"])
        assert config.vision_config.out_hidden_size == config.text_config.hidden_size, name
    seven = bench.QWEN_SIZES["qwen2.5-vl-7b"]["text"]
    assert (seven["hidden_size"], seven["num_hidden_layers"], seven["intermediate_size"], seven["vocab_size"]) == (3584, 28, 18944, 152064)


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_bench_quick_writes_json(rlvlm_cache, tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, "-m", "rlvlm", "bench", "--quick", "--out", str(out)], check=True, timeout=1800)
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["gpu"] is None and report["gpu_reason"] == "no CUDA device"
    assert set(report["metrics"]) == set(bench.GOALS)
    for m in report["metrics"].values():
        assert positive_finite(m["value"]) and isinstance(m["pass"], bool)
    for key in ("date", "torch", "trl", "transformers", "cpu_count", "device"):
        assert report[key]
