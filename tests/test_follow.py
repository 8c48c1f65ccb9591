"""Evaluation at scale: the follower (`evaluation.mode: follow`, `rlvlm eval --follow`), kill and resume,
`evaluation.every`, `rlvlm eval --plan` on every recipe, and the vLLM branches.

The vLLM tests run against objects with the engine's interface (TRL's VLLMGeneration and vllm.LLM),
which generate with the tiny transformers model: they check rlvlm's calls, not vLLM itself."""

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml

from rlvlm.evaluation import trace
from rlvlm.evaluation.evaluator import Evaluator
from rlvlm.evaluation.follow import RESOLVED_RECIPE, complete_checkpoints
from rlvlm.evaluation.generation import LocalEngine, TrainerEngine
from rlvlm.evaluation.plan import evaluated_steps
from rlvlm.evaluation.schedule import is_evaluated
from rlvlm.recipe import build_recipe, load_recipe

ROOT = Path(__file__).resolve().parent.parent
CONDS = ["base", "wrong_caption"]


def raw_recipe(output_dir, **extra) -> dict:
    raw = {
        "name": "follow",
        "model": {"name": "tiny", "seed": 0},
        "warm_start": {"enabled": False},
        "data": {"train": {"name": "shapes", "split": "train", "n": 16}, "eval": [{"name": "shapes", "split": "eval", "n": 6}]},
        "rewards": [{"name": "format", "weight": 1.0}],
        "evaluation": {"conditions": CONDS, "max_new_tokens": 8, "batch_size": 16},
        "max_steps": 4,
        "save_steps": 2,
        "num_generations": 2,
        "per_device_train_batch_size": 4,
        "max_completion_length": 8,
        "learning_rate": 1e-2,
        "temperature": 1.5,  # an untrained model: diverse samples, so the format reward varies and weights move
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": 0,
        "output_dir": str(output_dir),
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def rows_by_key(eval_dir):
    rows = trace.trace_rows(eval_dir)
    keys = [(r["step"], r["dataset"], r["condition"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate trace rows"
    return {k: r for k, r in zip(keys, rows)}


def close_rows(a: dict, b: dict, tol: float) -> bool:
    return a["n"] == b["n"] and all(
        abs(a[m] - b[m]) <= tol for m in ("accuracy", "consistency", "consistent_accuracy", "option_entropy", "p_correct")
    )


# ------------------------------------------------------------------ which checkpoints, what it costs


def test_every_kth_save_and_the_last_one_are_evaluated():
    assert [s for s in (2, 4, 6, 8, 10) if is_evaluated(s, 2, 2, 10)] == [4, 8, 10]
    assert all(is_evaluated(s, 2, 1, 10) for s in (2, 4, 6, 8, 10))
    assert evaluated_steps(1500, 250, 1, at_start=True) == [0, 250, 500, 750, 1000, 1250, 1500]
    assert evaluated_steps(1500, 250, 2, at_start=False) == [500, 1000, 1500]
    assert evaluated_steps(1400, 250, 2, at_start=True) == [0, 500, 1000, 1400]  # the final save, off the grid


def run_recipes():
    """Every run recipe in the repository (a sweep recipe, with `configs`, is not one)."""
    paths = sorted(ROOT.glob("recipes/**/*.yaml"))
    return [p for p in paths if "configs" not in yaml.safe_load(p.read_text())]


@pytest.mark.parametrize("path", run_recipes(), ids=lambda p: str(p.relative_to(ROOT)))
def test_plan_on_every_recipe(path, capsys):
    from rlvlm.cli import main

    assert main(["eval", "--plan", str(path), "--tokens_per_s", "1000"]) == 0
    plan = json.loads(capsys.readouterr().out)
    recipe = load_recipe(path)
    assert plan["generations_per_checkpoint"] == sum(d["generations"] for d in plan["datasets"].values())
    n_conditions = len(recipe.evaluation.conditions or []) or 8
    assert plan["datasets"] and all(d["generations"] == d["items"] * n_conditions for d in plan["datasets"].values())
    assert plan["checkpoints_evaluated"] == len(plan["evaluated_steps"]) and plan["evaluated_steps"][-1] == recipe.grpo["max_steps"]
    expected_hours = plan["generations_per_checkpoint"] * recipe.evaluation.max_new_tokens / 1000 / 3600
    assert plan["hours_per_checkpoint"] == pytest.approx(expected_hours)
    if "qwen2.5-vl-7b" in str(path):
        assert plan["generations_per_checkpoint"] <= 32_000


def test_plan_bad_input_exits_2(tmp_path, capsys):
    from rlvlm.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("evaluation: {every: 0}\n")
    assert main(["eval", "--plan", str(bad)]) == 2
    assert "every" in capsys.readouterr().err
    assert main(["eval", "--plan", str(tmp_path / "missing.yaml")]) == 2
    assert main(["eval", "tiny", "--plan", str(bad)]) == 2  # one of MODEL, --follow, --plan
    assert "one of" in capsys.readouterr().err
    assert main(["eval", "--follow", str(tmp_path)]) == 2  # no recipe.yaml there
    assert "recipe.yaml" in capsys.readouterr().err


def test_resolved_recipe_builds_the_same_recipe(tmp_path):
    recipe = load_recipe(ROOT / "recipes/tiny-shapes.yaml", {"max_steps": 4, "evaluation.mode": "follow"})
    again = build_recipe(yaml.safe_load(yaml.safe_dump(recipe.resolved())))
    assert again.resolved() == recipe.resolved()
    assert again.evaluation.mode == "follow" and again.grpo["max_steps"] == 4


# ------------------------------------------------------------------ vLLM engines, by their interface


def greedy_on_ids(model, processor, prompt_ids, images, max_tokens):
    """What a greedy engine returns for token ids + images: completion ids, generated by the tiny
    transformers model with left padding (as rlvlm's own batches are)."""
    import torch

    tok = processor.tokenizer
    width = max(len(p) for p in prompt_ids)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompt_ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
    kwargs = {}
    if images:
        kwargs = dict(processor.image_processor(images=[im for row in images for im in row], return_tensors="pt"))
    out = model.generate(input_ids=ids, attention_mask=mask, **kwargs, max_new_tokens=max_tokens, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    completions = []
    for row in out[:, width:].tolist():
        completions.append(row[: row.index(tok.pad_token_id)] if tok.pad_token_id in row else row)
    return completions


class FakeVLLMGeneration:
    """TRL's VLLMGeneration as the trainer holds it: sampling settings as attributes, sync_weights(),
    generate(prompts=token ids, images, num_generations)."""

    def __init__(self, model, processor):
        self.model, self.processor = model, processor
        self.temperature, self.top_p, self.top_k, self.min_p, self.repetition_penalty = 1.0, 0.9, 50, 0.0, 1.1
        self.max_completion_length, self.logprobs = 256, 0
        self.structured_outputs_regex, self.generation_kwargs = None, {"min_tokens": 3}
        self.syncs, self.calls = 0, []

    def sync_weights(self):
        self.syncs += 1

    def generate(self, prompts, images, num_generations, profiler=None):
        self.calls.append({"n": len(prompts), "temperature": self.temperature, "top_k": self.top_k,
                           "max_tokens": self.max_completion_length, "generation_kwargs": self.generation_kwargs,
                           "num_generations": num_generations})
        completions = greedy_on_ids(self.model, self.processor, prompts, images, self.max_completion_length)
        return prompts, completions, None, None


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(tiny_model_path), AutoProcessor.from_pretrained(tiny_model_path)


def one_batch_recipe():
    # one batch holds every item: the transformers path pads them exactly as the fake engines do
    return build_recipe({"data": {"eval": [{"name": "shapes", "split": "eval", "n": 4}]},
                         "evaluation": {"conditions": CONDS, "max_new_tokens": 6, "batch_size": 64}})


def test_trainer_engine_generates_greedily_and_restores_the_trainer_settings(tiny):
    model, processor = tiny
    evaluator = Evaluator.from_recipe(one_batch_recipe(), processor)
    reference = evaluator.run(model, step=3)
    fake = FakeVLLMGeneration(model, processor)
    engine = TrainerEngine(fake)
    engine.sync()
    result = evaluator.run(model, step=3, engine=engine)
    assert fake.syncs == 1
    (call,) = fake.calls  # one engine call for this process's whole share
    assert call == {"n": len(evaluator.items), "temperature": 0.0, "top_k": 0, "max_tokens": 6,
                    "generation_kwargs": {}, "num_generations": 1}
    assert (fake.temperature, fake.top_k, fake.max_completion_length, fake.generation_kwargs) == (1.0, 50, 256, {"min_tokens": 3})
    assert [r["response"] for r in result.records] == [r["response"] for r in reference.records]
    for a, b in zip(result.trace, reference.trace):
        assert close_rows(a, b, 1e-5)


def test_local_engine_calls_vllm_llm_as_documented(tiny, tmp_path, monkeypatch, tiny_model_path):
    model, processor = tiny
    made = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, model, **kwargs):
            made.update(model=model, **kwargs)

        def generate(self, prompts, sampling_params=None, use_tqdm=True):
            made["sampling"] = sampling_params.kwargs
            ids = [p["prompt_token_ids"] for p in prompts]
            images = [[p["multi_modal_data"]["image"]] for p in prompts]
            completions = greedy_on_ids(tiny[0], processor, ids, images, sampling_params.kwargs["max_tokens"])
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=c)]) for c in completions]

    import trl  # noqa: F401 - TRL reads vllm's module spec when first imported; the stand-in has none
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    evaluator = Evaluator.from_recipe(one_batch_recipe(), processor)
    reference = evaluator.run(model, step=0)
    engine = LocalEngine(str(tiny_model_path), tensor_parallel_size=2, gpu_memory_utilization=0.4, max_model_len=4096)
    result = evaluator.run(model, step=0, engine=engine)
    engine.close()
    assert made["model"] == str(tiny_model_path) and made["tensor_parallel_size"] == 2
    assert made["gpu_memory_utilization"] == 0.4 and made["max_model_len"] == 4096
    assert made["sampling"] == {"temperature": 0.0, "max_tokens": 6}
    assert [r["response"] for r in result.records] == [r["response"] for r in reference.records]


# ------------------------------------------------------------------ the follower, end to end


def train_run(raw: dict):
    from rlvlm.train import train

    return train(build_recipe(raw), progress=False)


@pytest.fixture(scope="module")
def inline_and_follow(tiny_model_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("follow")
    train_run(raw_recipe(tmp / "inline"))
    train_run(raw_recipe(tmp / "follow", evaluation={"mode": "follow"}))
    return tmp


def follower(run_dir, *extra) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "rlvlm", "eval", "--follow", str(run_dir), "--quiet", "--poll", "1", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_follow_mode_trains_without_evaluating_and_saves_its_recipe(inline_and_follow):
    run = inline_and_follow / "follow"
    assert not (run / "eval").exists()
    assert [c[0] for c in complete_checkpoints(run)] == [2, 4]
    assert load_recipe(run / RESOLVED_RECIPE).resolved() == build_recipe(raw_recipe(run, evaluation={"mode": "follow"})).resolved()
    assert sorted({k[0] for k in rows_by_key(inline_and_follow / "inline" / "eval")}) == [0, 2, 4]


@pytest.mark.slow
def test_follower_killed_and_restarted_writes_the_inline_rows_once(inline_and_follow):
    run = inline_and_follow / "follow"
    proc = follower(run)
    deadline = time.time() + 300
    while not trace.trace_rows(run / "eval") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert trace.trace_rows(run / "eval"), proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGKILL)  # after its first rows, wherever it is
    proc.wait()
    done = follower(run, "--max_wait", "60")
    out, _ = done.communicate(timeout=600)
    assert done.returncode == 0, out[-3000:]
    followed, inline = rows_by_key(run / "eval"), rows_by_key(inline_and_follow / "inline" / "eval")
    assert set(followed) == set(inline)  # nothing missing, nothing extra, nothing twice (rows_by_key)
    for key, row in inline.items():
        assert close_rows(followed[key], row, 0.02), key
    for step in (0, 2, 4):
        assert len(trace.read_jsonl(trace.records_path(run / "eval", step))) == 6 * len(CONDS)
    # started again on a finished run: nothing to do, exit 0, no row added
    again = follower(run)
    assert again.wait(timeout=300) == 0
    assert rows_by_key(run / "eval") == followed


@pytest.mark.slow
def test_follower_evaluates_checkpoints_as_they_appear_and_logs_to_the_run(tmp_path, tiny_model_path, monkeypatch):
    """The follower waits for checkpoints written while it runs (one thread trains, the follower polls)
    and logs each step to the training run's wandb run (a stand-in module records the calls)."""
    import importlib.machinery
    import threading

    from rlvlm.evaluation import follow as follow_module

    run = tmp_path / "live"
    raw = raw_recipe(run, evaluation={"mode": "follow", "every": 2}, max_steps=6)
    logged, inits = [], []

    class Settings:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    def init(**kwargs):
        inits.append(kwargs)
        return types.SimpleNamespace(log=logged.append, finish=lambda: None)

    fake_wandb = types.ModuleType("wandb")
    fake_wandb.__spec__ = importlib.machinery.ModuleSpec("wandb", None)  # transformers checks it is importable
    fake_wandb.init, fake_wandb.Settings, fake_wandb.Table = init, Settings, lambda columns, data: data
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    trainer = threading.Thread(target=train_run, args=(raw,))
    trainer.start()
    while not (run / RESOLVED_RECIPE).is_file():  # rlvlm train writes it before building the trainer
        assert trainer.is_alive()
        time.sleep(0.1)
    # what WandbRunRecorder writes for an online run (report_to: none here: no real wandb run)
    (run / "wandb_run.json").write_text(json.dumps({"id": "abc123", "project": "p", "entity": "e", "mode": "online"}))
    code = follow_module.Follower(run, progress=False).run(poll_seconds=0.5, max_wait_seconds=120)
    trainer.join()
    assert code == 0
    assert sorted({k[0] for k in rows_by_key(run / "eval")}) == [0, 4, 6]  # every 2nd save (4), the last (6)
    (init_kwargs,) = inits
    assert init_kwargs["id"] == "abc123" and init_kwargs["resume"] == "allow"
    assert init_kwargs["settings"].kwargs["mode"] == "shared" and init_kwargs["settings"].kwargs["x_primary"] is False
    assert [p["train/global_step"] for p in logged] == [0, 4, 6]
    assert all("eval/shapes/base/accuracy" in p for p in logged)


def test_engine_shares_have_equal_length_on_every_process(tiny, monkeypatch):
    """TRL's server mode and colocated tensor parallelism slice the gathered prompts equally, so each
    process hands the engine a share of the same length (padded with repeats, dropped afterwards)."""
    from rlvlm.evaluation import evaluator as evaluator_module
    from rlvlm.evaluation.generation import generate_transformers

    model, processor = tiny
    recipe = build_recipe({"data": {"eval": [{"name": "shapes", "split": "eval", "n": 5}]},
                           "evaluation": {"conditions": CONDS, "max_new_tokens": 3, "batch_size": 4}})
    evaluator = Evaluator.from_recipe(recipe, processor)  # 10 items -> batches of 4, 4, 2: shares 6 and 4
    calls, shards = {}, {}

    class RecordingEngine:
        def __init__(self, rank):
            self.rank = rank

        def generate(self, processor_, items, max_new_tokens):
            calls[self.rank] = [it["id"] + it["condition"] for it in items]
            return generate_transformers(model, processor_, items, max_new_tokens)[0]

    class Gathered(Exception):
        pass

    def gather(rank, obj):
        shards[rank] = obj
        if rank == 1:
            raise Gathered
        return shards[0] + shards[1]

    def run(rank):
        monkeypatch.setattr(evaluator_module, "process_state",
                            lambda: types.SimpleNamespace(num_processes=2, process_index=rank, is_main_process=rank == 0))
        monkeypatch.setattr(evaluator_module, "all_gather", lambda obj: gather(rank, obj))
        return evaluator._forward(model, list(range(len(evaluator.items))), RecordingEngine(rank))

    with pytest.raises(Gathered):
        run(1)
    outputs = run(0)
    assert len(calls[0]) == len(calls[1]) == 6
    assert len(set(calls[1])) == 4  # its 4 items, then 2 repeats
    assert len(outputs) == len(evaluator.items) and all(isinstance(o[0], str) and len(o[1]) == 4 for o in outputs)


def test_a_checkpoint_deleted_before_it_is_read_is_recorded_and_skipped(tmp_path, tiny_model_path, monkeypatch):
    """save_total_limit can delete the oldest checkpoint while the follower is behind: the follower says
    so in eval/errors.jsonl, goes on with the next one, and does not wait for it again."""
    import shutil

    from rlvlm.evaluation import follow as follow_module

    run = tmp_path / "run"
    run.mkdir()
    raw = raw_recipe(run, evaluation={"at_start": False})
    (run / RESOLVED_RECIPE).write_text(yaml.safe_dump(build_recipe(raw).resolved()))
    for step in (2, 4):
        ckpt = run / f"checkpoint-{step}"
        shutil.copytree(tiny_model_path, ckpt)
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 4, "save_steps": 2}))
    real_evaluate = follow_module.Follower.evaluate

    def rotated(self, step, path):
        if step == 2:  # transformers' rotation removes it between the look and the load
            shutil.rmtree(path)
        return real_evaluate(self, step, path)

    monkeypatch.setattr(follow_module.Follower, "evaluate", rotated)
    assert follow_module.Follower(run, progress=False).run(poll_seconds=0.1, max_wait_seconds=5) == 0
    assert sorted({k[0] for k in rows_by_key(run / "eval")}) == [4]
    (error,) = trace.read_jsonl(run / "eval" / "errors.jsonl")
    assert error["step"] == 2 and "deleted" in error["error"]


def test_wandb_link_logs_results_evaluated_before_the_run_existed(tmp_path, monkeypatch):
    from rlvlm.evaluation.follow import WandbLink
    from rlvlm.evaluation.results import aggregate

    logged, inits = [], []
    fake = types.SimpleNamespace(init=lambda **k: inits.append(k) or types.SimpleNamespace(log=logged.append, finish=lambda: None),
                                 Settings=lambda **k: k, Table=lambda columns, data: data)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    record = {"dataset": "shapes", "condition": "base", "id": "x", "target": None, "gold": "A", "response": "r",
              "think": "t", "answer": "A", "pred": "A", "correct": True, "consistent": True, "judged": True,
              "format": True, "option_probs": [1.0, 0.0], "p_correct": 1.0, "option_entropy": 0.0, "own_think": "t"}
    link = WandbLink(tmp_path, n_samples=1)
    link.log(aggregate(0, [record]))  # the trainer has not reached wandb yet: kept
    assert not inits and not logged
    (tmp_path / "wandb_run.json").write_text(json.dumps({"id": "r1", "project": "p", "entity": None, "mode": "offline"}))
    link.log(aggregate(2, [record]))
    assert len(inits) == 1 and inits[0]["id"] == "r1" and inits[0]["settings"] == {"mode": "offline"}
    assert [p["train/global_step"] for p in logged] == [0, 2]
    assert logged[0]["eval/shapes/base/accuracy"] == 1.0 and logged[0]["eval/shapes/base/samples"][0][1] == "x"
