"""`rlvlm bench`: what rlvlm costs on top of TRL, measured on the embedded default.

    rlvlm bench --out bench.json [--quick] [--gpu-only]

Every figure compares two things timed side by side in the same process, alternating them round by
round (A B A B ...) so that load drifting on a shared machine hits both alike; each is a median.

- `trainer_overhead_ratio`: a GRPO step through `rlvlm.train.build_trainer` / the same step through a
  plain `trl.GRPOTrainer` (same model directory, rows, reward functions and weights, GRPOConfig).
- `eval_cost_fraction`: one checkpoint evaluation (all eight conditions, the recipe's eval set and
  settings) / the training between two checkpoints (median step time x the recipe's save_steps).
- `counterfactual_reward_fraction`: the counterfactual scorer's own time per step / the rest of that
  step, measured inside the run that uses it (`accuracy x counterfactual + 0.1 format`).
- `rule_reward_throughput`: completions/s of accuracy + format + consistency on one core.
- `peak_memory_mb`: max RSS of `rlvlm train recipes/tiny-shapes.yaml` run as a subprocess.

On a CUDA machine, `gpu` adds GRPO throughput (generated tokens/s/GPU) of Qwen2.5-VL-3B and -7B-sized
models with random weights, with transformers generation and, when vllm imports, vLLM colocate.
`--gpu-only` takes just that part (the CPU figures above do not depend on the card).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import importlib.util
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]


def shipped_recipe(relative: str) -> Path:
    """A recipe of the repository's recipes/ folder, which the bench runs: there in a checkout; in an
    installed rlvlm, the package's copy of that folder (rlvlm/recipes, see pyproject.toml)."""
    checkout = ROOT / "recipes" / relative
    return checkout if checkout.is_file() else Path(__file__).resolve().parent / "recipes" / relative


RECIPE = shipped_recipe("tiny-shapes.yaml")

GOALS = {  # metric: (comparison, goal)
    "trainer_overhead_ratio": ("<=", 1.05),
    "eval_cost_fraction": ("<=", 0.25),
    "counterfactual_reward_fraction": ("<=", 0.25),
    "rule_reward_throughput": (">=", 20_000),
    "peak_memory_mb": ("<=", 2048),  # the main job measured 1.5 GB (docs/experiments.md); 2 GB leaves room on a laptop
}

WITH_COUNTERFACTUAL = [
    {"name": "accuracy", "gate": ["counterfactual"], "weight": 1.0},
    {"name": "format", "weight": 0.1},
]
# Enough SFT for the policy to write some parsable responses (the counterfactual scorer needs them): seconds.
SMALL_WARM_START = {"warm_start.vision_steps": 20, "warm_start.n_examples": 256, "warm_start.epochs": 1.0}


@dataclasses.dataclass(frozen=True)
class Settings:
    rounds: int = 4  # alternated repeats of every side-by-side pair
    warmup_steps: int = 2  # untimed optimizer steps at the start of each training run
    timed_steps: int = 3
    rule_completions: int = 20_000
    rule_repeats: int = 5
    memory_steps: int = 10  # steps of the memory job, which saves and evaluates a checkpoint at the last one
    # recipe overrides (dotted keys, as on the command line) for every run, the evaluator and the memory job
    overrides: dict = dataclasses.field(default_factory=dict)


FULL = Settings()
QUICK = Settings(rounds=2, warmup_steps=1, timed_steps=2, rule_completions=2_000, rule_repeats=2, memory_steps=2,
                 overrides=SMALL_WARM_START)


# ============================================================================ timing


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step and, with a `scorer` exposing `.stats["seconds"]`, the part of
    it that the scorer spent."""

    def __init__(self, scorer=None):
        self.scorer = scorer
        self.seconds: list[float] = []
        self.scorer_seconds: list[float] = []

    def _scorer_clock(self) -> float:
        return self.scorer.stats["seconds"] if self.scorer is not None else 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0, self._s0 = time.perf_counter(), self._scorer_clock()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._t0)
        self.scorer_seconds.append(self._scorer_clock() - self._s0)


def timed_train(trainer, warmup: int, scorer=None) -> dict:
    """Train, timing each step; the first `warmup` steps are dropped."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    timer = StepTimer(scorer)
    trainer.add_callback(timer)
    for quiet in (PrinterCallback, ProgressCallback):  # the same on both sides; keeps the table readable
        trainer.remove_callback(quiet)
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return {
        "step_seconds": timer.seconds[warmup:],
        "scorer_seconds": timer.scorer_seconds[warmup:],
        "mean_completion_length": statistics.mean(lengths) if lengths else None,
    }


def median_step(runs: list[dict]) -> float:
    return statistics.median(t for run in runs for t in run["step_seconds"])


# ============================================================================ the two trainers


def bench_recipe(settings: Settings, out_dir: Path, rewards: list[dict] | None = None):
    """The embedded default with small overrides: a short run, no checkpoints, no evaluator."""
    from rlvlm.recipe import load_recipe

    steps = settings.warmup_steps + settings.timed_steps
    overrides = {
        **settings.overrides,
        "output_dir": str(out_dir),
        "max_steps": steps,
        "save_strategy": "no",
        "logging_steps": steps,
        "report_to": "none",
        "disable_tqdm": True,
        "evaluation.enabled": False,
    }
    if rewards is not None:
        overrides["rewards"] = rewards
    grpo = load_recipe(RECIPE, overrides).grpo
    # only the rows the run uses: building rows is not timed, but it takes a while
    overrides["data.train.n"] = steps * grpo["per_device_train_batch_size"] // grpo["num_generations"]
    return load_recipe(RECIPE, overrides)


def model_path(settings: Settings) -> str:
    """The model every measurement shares: the recipe's (warm-started, cached) tiny model."""
    from rlvlm.models import resolve_model, warm_start_model

    recipe = bench_recipe(settings, Path(tempfile.gettempdir()))
    return warm_start_model(recipe.model, resolve_model(recipe.model, progress=False), recipe.warm_start, progress=False)


def rlvlm_trainer(recipe):
    from rlvlm.train import build_trainer

    return build_trainer(recipe, progress=False)


def plain_trainer(recipe, path: str):
    """The same run, written against TRL alone: the recipe's reward functions and weights, its
    GRPOConfig, the same rows; TRL loads the model and processor from the same directory."""
    from trl import GRPOTrainer

    from rewards import REWARDS
    from rlvlm.data.images import image_dataset
    from rlvlm.data.load import load_examples
    from rlvlm.train import grpo_rows

    if any(spec.gate or spec.kwargs for spec in recipe.rewards):
        raise ValueError("the plain-TRL side takes plain reward functions: no gates, no kwargs")
    config = recipe.grpo_config()
    config.reward_weights = [spec.weight for spec in recipe.rewards]
    rows = grpo_rows(load_examples(recipe.data.train), config.seed)
    return GRPOTrainer(
        model=path,
        reward_funcs=[REWARDS[spec.name] for spec in recipe.rewards],
        args=config,
        train_dataset=image_dataset(rows),  # images stay encoded, typed datasets.Image, as rlvlm's trainer has them
    )


def counterfactual_run(recipe, warmup: int) -> dict:
    """A timed rlvlm run whose reward uses the counterfactual scorer, which also reports its own time."""
    from rlvlm.composition import components

    trainer = rlvlm_trainer(recipe)
    scorer = dict(components(trainer.reward_funcs))["counterfactual"]
    run = timed_train(trainer, warmup, scorer)
    run["full_batch_seconds"] = full_batch_seconds(scorer)
    return run


# ============================================================================ evaluation


def checkpoint_evaluator(settings: Settings, path: str):
    """The recipe's evaluator and the model it evaluates (built once, as the callback does)."""
    from rlvlm.evaluation.cli import load_model
    from rlvlm.evaluation.evaluator import Evaluator
    from rlvlm.recipe import load_recipe

    recipe = load_recipe(RECIPE, settings.overrides)
    model, processor = load_model(path, recipe.model)
    return Evaluator.from_recipe(recipe, processor), model


def save_steps(settings: Settings) -> int:
    from rlvlm.recipe import load_recipe

    return load_recipe(RECIPE, settings.overrides).grpo_config().save_steps


# ============================================================================ counterfactual worst case


def full_batch_seconds(scorer, n: int = 32) -> float:
    """The scorer's time on a worst-case batch: `n` well-formed completions with `n` distinct CoTs
    (nothing deduplicated), i.e. what it adds once the policy writes parsable responses every time."""
    from rewards.options import LETTERS
    from rlvlm.data import shapes
    from rlvlm.perturb import perturb

    examples = shapes.generate_examples("train", n, seed=123)
    letters = [LETTERS[i % len(ex["options"])] for i, ex in enumerate(examples)]
    completions = [f"<think>{shapes.cot_for(ex, x, seed=i)}</think><answer>{x}</answer>"
                   for i, (ex, x) in enumerate(zip(examples, letters))]
    columns = {
        "prompts": [perturb(ex, "base", seed=i)["prompt"] for i, ex in enumerate(examples)],
        "image": [ex["image"] for ex in examples],
        "options": [ex["options"] for ex in examples],
        "think_prefix": [None] * n,
    }
    t0 = time.perf_counter()
    scores = scorer(completions, **columns)
    seconds = time.perf_counter() - t0
    if any(s is None for s in scores):
        raise RuntimeError("the counterfactual scorer skipped well-formed completions")
    return seconds


# ============================================================================ side by side


def side_by_side(settings: Settings, path: str, work: Path) -> dict:
    """Each round: rlvlm step, plain TRL step, rlvlm step with the counterfactual scorer, one checkpoint
    evaluation. Returns every run's measurements."""
    runs = {"rlvlm": [], "trl": [], "counterfactual": [], "eval_seconds": []}
    evaluator, eval_model = checkpoint_evaluator(settings, path)
    warmup = settings.warmup_steps
    for r in range(settings.rounds):
        # each trainer lives only inside its call; collected before the next is built
        runs["rlvlm"].append(timed_train(rlvlm_trainer(bench_recipe(settings, work / f"rlvlm-{r}")), warmup))
        gc.collect()
        runs["trl"].append(timed_train(plain_trainer(bench_recipe(settings, work / f"trl-{r}"), path), warmup))
        gc.collect()
        runs["counterfactual"].append(counterfactual_run(bench_recipe(settings, work / f"cf-{r}", WITH_COUNTERFACTUAL), warmup))
        gc.collect()
        runs["eval_seconds"].append(evaluator.run(eval_model, step=0).seconds)
        print(f"round {r + 1}/{settings.rounds}: rlvlm {median_step(runs['rlvlm'][-1:]):.3f} s/step, "
              f"trl {median_step(runs['trl'][-1:]):.3f} s/step, eval {runs['eval_seconds'][-1]:.1f} s", flush=True)
    return runs


def summarise(runs: dict, save_every: int) -> dict[str, dict]:
    rlvlm, trl = median_step(runs["rlvlm"]), median_step(runs["trl"])
    evaluation = statistics.median(runs["eval_seconds"])
    with_steps = [t for run in runs["counterfactual"] for t in run["step_seconds"]]
    with_scorer = [t for run in runs["counterfactual"] for t in run["scorer_seconds"]]
    return {
        "trainer_overhead_ratio": {
            "value": rlvlm / trl,
            "rlvlm_step_seconds": rlvlm,
            "trl_step_seconds": trl,
            "mean_completion_length": {side: [run["mean_completion_length"] for run in runs[side]] for side in ("rlvlm", "trl")},
        },
        "eval_cost_fraction": {
            "value": evaluation / (rlvlm * save_every),
            "eval_seconds": evaluation,
            "save_steps": save_every,
            "training_seconds_between_checkpoints": rlvlm * save_every,
        },
        "counterfactual_reward_fraction": {
            "value": statistics.median(s / (t - s) for t, s in zip(with_steps, with_scorer)),
            "scorer_seconds_per_step": statistics.median(with_scorer),
            "step_seconds_with_scorer": statistics.median(with_steps),
            "step_time_ratio_with_vs_without": statistics.median(with_steps) / rlvlm,
            # what the scorer would add if every completion of a 32-completion batch were scorable
            "full_batch_bound": statistics.median(run["full_batch_seconds"] for run in runs["counterfactual"]) / rlvlm,
        },
    }


# ============================================================================ rule rewards

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star"]
FILLER = [
    "Let me look at the image carefully.",
    "I can see several shapes in the scene.",
    "Because the circle is to the left of the square, the relation is clear.",
    "Counting them one by one gives the total.",
    "Hmm, let me double-check the colours.",
    "Option A seems unlikely given the layout.",
    "The largest object is in the top-right corner.",
]


def synthetic_completion(rng: random.Random) -> tuple[object, str, list[str], str | None]:
    """One varied completion (well-formed, malformed, reward-hacking, think-prefixed, conversational)
    with its gold letter, options and think prefix."""
    from rewards.options import LETTERS as L

    n_opt = rng.choice([2, 3, 4, 4, 5])
    opts = rng.sample(COLOURS, n_opt) if rng.random() < 0.7 else [f"{k} {rng.choice(SHAPES)}s" for k in rng.sample(range(1, 9), n_opt)]
    gold = rng.randrange(n_opt)
    pick = gold if rng.random() < 0.6 else rng.randrange(n_opt)
    concl = pick if rng.random() < 0.7 else rng.randrange(n_opt)
    reasoning = " ".join(rng.choices(FILLER, k=rng.randint(1, 6)))
    concl_form = rng.choice(
        [f"So the answer is {L[concl]}.", f"Answer: ({L[concl]})", f"I pick option {L[concl]}.",
         f"Therefore the answer is {opts[concl]}.", f"({L[concl]}) it is.", "I am not sure."]
    )
    ans_form = rng.choice(
        [L[pick], f"({L[pick]})", f"{L[pick]}.", f"{L[pick]}: {opts[pick]}", opts[pick], f"{L[pick]}. {opts[pick]}"]
    )
    kind = rng.random()
    prefix = None
    if kind < 0.55:
        text = f"<think>{reasoning} {concl_form}</think>\n<answer>{ans_form}</answer>"
    elif kind < 0.65:  # think-prefixed (wrong think, then a correction)
        prefix = f"<think>The caption suggests the answer is {L[(gold + 1) % n_opt]}."
        text = f" But I think {reasoning} {concl_form}</think><answer>{ans_form}</answer>"
    elif kind < 0.72:  # spraying options
        text = f"<think>{reasoning}</think><answer>{' '.join(L[:n_opt])}</answer>"
    elif kind < 0.78:  # several answer blocks
        text = f"<think>{reasoning}</think><answer>A</answer><answer>{L[pick]}</answer>"
    elif kind < 0.83:  # answer only inside the think
        text = f"<think>{reasoning} <answer>{L[pick]}</answer></think>"
    elif kind < 0.88:  # empty / nested tags
        text = rng.choice(["<think></think><answer>A</answer>", f"<think><think>{reasoning}</think></think><answer>B</answer>"])
    elif kind < 0.93:  # no tags at all
        text = f"{reasoning} The answer is {L[pick]}."
    else:  # A or B
        text = f"<think>{reasoning} answer is A or B</think><answer>{L[pick]} or {L[gold]}</answer>"
    completion: object = [{"role": "assistant", "content": text}] if rng.random() < 0.3 else text
    return completion, L[gold], opts, prefix


def synthetic_batch(n: int, seed: int = 0) -> dict[str, list]:
    rng = random.Random(seed)
    completions, answers, options, prefixes = zip(*(synthetic_completion(rng) for _ in range(n)))
    return {"completions": list(completions), "answer": list(answers), "options": list(options), "think_prefix": list(prefixes)}


def score_rule_rewards(batch: dict[str, list]) -> float:
    from rewards import accuracy_reward, consistency_reward, format_reward

    t0 = time.perf_counter()
    accuracy_reward(batch["completions"], answer=batch["answer"], options=batch["options"], think_prefix=batch["think_prefix"])
    format_reward(batch["completions"], think_prefix=batch["think_prefix"])
    consistency_reward(batch["completions"], options=batch["options"], think_prefix=batch["think_prefix"])
    return time.perf_counter() - t0


@contextlib.contextmanager
def one_core():
    """Pin this process to one core where the OS allows it; yields whether it did."""
    if not hasattr(os, "sched_setaffinity"):
        yield False
        return
    cores = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cores)})
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        os.sched_setaffinity(0, cores)


def rule_reward_throughput(n: int, repeats: int) -> dict:
    batch = synthetic_batch(n)
    with one_core() as pinned:
        score_rule_rewards({k: v[:500] for k, v in batch.items()})  # warm the regex and option caches
        seconds = statistics.median(score_rule_rewards(batch) for _ in range(repeats))
    return {"value": n / seconds, "completions": n, "repeats": repeats, "pinned_one_core": pinned}


# ============================================================================ peak memory of the main job


def train_command(settings: Settings, out_dir: Path, steps: int) -> list[str]:
    overrides = [arg for k, v in settings.overrides.items() for arg in (f"--{k}", json.dumps(v))]  # JSON is YAML
    return [sys.executable, "-m", "rlvlm", "train", str(RECIPE), *overrides, "--output_dir", str(out_dir),
            "--max_steps", str(steps), "--save_steps", str(steps), "--quiet", "--report_to", "none"]


def peak_memory(settings: Settings, work: Path) -> dict:
    """Max RSS of the main job in a child process: evaluation at step 0, training, a checkpoint saved and
    evaluated (the model is already cached, so the figure is the job's own).
    RUSAGE_CHILDREN reports the largest child waited for so far: this one, in a bench process."""
    steps = settings.memory_steps
    t0 = time.perf_counter()
    subprocess.run(train_command(settings, work / "memory", steps), check=True, capture_output=True, cwd=ROOT)
    kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    return {"value": kib / 1024, "steps": steps, "seconds": time.perf_counter() - t0}


# ============================================================================ GPU throughput

QWEN_VISION = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, spatial_merge_size=2,
    temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
)
QWEN_ROPE = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]}
# The published Qwen2.5-VL configs (config.json of the -Instruct models), weights left random.
QWEN_SIZES = {
    "qwen2.5-vl-3b": {
        "text": dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                     intermediate_size=11008, vocab_size=151936, max_position_embeddings=128000, rope_parameters=QWEN_ROPE),
        "vision": dict(QWEN_VISION, out_hidden_size=2048),
        "tie_word_embeddings": True,
    },
    "qwen2.5-vl-7b": {
        "text": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                     intermediate_size=18944, vocab_size=152064, max_position_embeddings=128000, rope_parameters=QWEN_ROPE),
        "vision": dict(QWEN_VISION, out_hidden_size=3584),
        "tie_word_embeddings": False,
    },
}


@dataclasses.dataclass(frozen=True)
class GpuSettings:
    sizes: dict = dataclasses.field(default_factory=lambda: QWEN_SIZES)
    image_size: int = 448
    completion_length: int = 256
    num_generations: int = 8
    prompts_per_step: int = 1
    warmup_steps: int = 1
    timed_steps: int = 3
    lora: bool = True  # a 7B model with full-parameter AdamW does not fit one GPU beside vLLM
    vllm_gpu_memory_utilization: float = 0.3
    eval_items: int = 64  # the evaluator's throughput: greedy responses to this many shapes questions
    eval_batch_size: int = 16
    eval_new_tokens: int = 256


RECIPE_7B = shipped_recipe("qwen2.5-vl-7b/baseline.yaml")


def gpu_settings_from_recipe(path: Path = RECIPE_7B, **changes) -> GpuSettings:
    """The 7B recipe's per-device batch: each GPU generates per_device_train_batch_size x
    gradient_accumulation_steps completions per generation round (num_generations per prompt), of up to
    max_completion_length tokens; the evaluator runs batches of evaluation.batch_size rows of up to
    evaluation.max_new_tokens."""
    from rlvlm.recipe import load_recipe

    recipe = load_recipe(path)
    grpo = recipe.grpo
    per_device = grpo["per_device_train_batch_size"] * grpo.get("gradient_accumulation_steps", 1)
    settings = dict(num_generations=grpo["num_generations"], prompts_per_step=per_device // grpo["num_generations"],
                    completion_length=grpo["max_completion_length"], eval_batch_size=recipe.evaluation.batch_size,
                    eval_new_tokens=recipe.evaluation.max_new_tokens, timed_steps=2)
    return GpuSettings(**{**settings, **changes})


def full_vocab_processor(vocab_size: int):
    """The tiny tokenizer, padded with added tokens up to the model's vocabulary: a random model samples
    any id, and vLLM's detokenizer (unlike transformers' decode, which drops them) needs every id to be a
    token. The image processor keeps Qwen2.5-VL's own pixel limits, so a 448x448 image is 256 tokens."""
    from transformers import AutoProcessor, Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from rlvlm.tiny import CHAT_TEMPLATE, build_tiny

    tokenizer = AutoProcessor.from_pretrained(build_tiny(progress=False)).tokenizer
    tokenizer.add_tokens([f"<|rand_{i}|>" for i in range(len(tokenizer), vocab_size)])
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(), video_processor=Qwen2VLVideoProcessor(),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
    )


def random_model_dir(size: dict, out_dir: Path, dtype, device: str) -> Path:
    """A Qwen2.5-VL of `size` with random weights, saved with its processor (vLLM loads from disk)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    processor = full_vocab_processor(size["text"]["vocab_size"])
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    config = Qwen2_5_VLConfig(
        text_config=dict(size["text"], bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=size["vision"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=size["tie_word_embeddings"],
    )
    with torch.device(device):  # initialise on the GPU: a 7B model's random init on a CPU takes minutes
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def gpu_rows(gs: GpuSettings) -> list[dict]:
    from rlvlm.data import shapes
    from rlvlm.train import grpo_rows

    examples = shapes.generate_examples("train", gs.prompts_per_step * (gs.warmup_steps + gs.timed_steps), seed=0)
    for ex in examples:
        ex["image"] = ex["image"].resize((gs.image_size, gs.image_size))
    return grpo_rows(examples, seed=0)


def gpu_config(gs: GpuSettings, out_dir: Path, use_vllm: bool, bf16: bool):
    from trl import GRPOConfig

    # a fixed completion length: end-of-sequence is suppressed until max_completion_length
    min_tokens = {"min_tokens" if use_vllm else "min_new_tokens": gs.completion_length}
    return GRPOConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=gs.prompts_per_step * gs.num_generations,
        num_generations=gs.num_generations,
        max_completion_length=gs.completion_length,
        generation_kwargs=min_tokens,
        max_steps=gs.warmup_steps + gs.timed_steps,
        learning_rate=1e-6,
        beta=0.0,
        bf16=bf16,
        gradient_checkpointing=bf16,  # on the GPU, as the real recipes run
        use_vllm=use_vllm,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=gs.vllm_gpu_memory_utilization,
        model_init_kwargs={"dtype": "bfloat16" if bf16 else "float32"},
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )


def gpu_run(model_dir: Path, gs: GpuSettings, use_vllm: bool, bf16: bool, work: Path) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOTrainer

    from rewards import accuracy_reward, format_reward

    config = gpu_config(gs, work / ("vllm" if use_vllm else "hf"), use_vllm, bf16)
    trainer = GRPOTrainer(
        model=str(model_dir),
        reward_funcs=[accuracy_reward, format_reward],
        args=config,
        train_dataset=Dataset.from_list(gpu_rows(gs)),
        peft_config=LoraConfig(r=64, lora_alpha=128, target_modules="all-linear") if gs.lora else None,
    )
    run = timed_train(trainer, gs.warmup_steps)
    step = statistics.median(run["step_seconds"])
    tokens = config.per_device_train_batch_size * run["mean_completion_length"]
    return {"tokens_per_s_per_gpu": tokens / step, "step_seconds": step, "generated_tokens_per_step": tokens,
            "mean_completion_length": run["mean_completion_length"]}


def eval_run(model_dir: Path, gs: GpuSettings, use_vllm: bool, bf16: bool) -> dict:
    """The evaluator's generation rate on one GPU: greedy responses to `eval_items` base-condition
    questions in batches of `eval_batch_size` (transformers) or one call (a vLLM engine on the model),
    plus the teacher-forced pass; tokens counted from the responses."""
    from rlvlm.data import shapes
    from rlvlm.evaluation.cli import load_model
    from rlvlm.evaluation.evaluator import Evaluator
    from rlvlm.evaluation.generation import LocalEngine
    from rlvlm.recipe import EvaluationSection, ModelSection

    model, processor = load_model(str(model_dir), ModelSection(dtype="bfloat16" if bf16 else "float32"))
    examples = shapes.generate_examples("eval", gs.eval_items, seed=0)
    for ex in examples:
        ex["image"] = ex["image"].resize((gs.image_size, gs.image_size))
    section = EvaluationSection(conditions=["base"], max_new_tokens=gs.eval_new_tokens, batch_size=gs.eval_batch_size,
                                max_batch_tokens=10**9)
    evaluator = Evaluator(processor, {"shapes": examples}, section)
    engine = LocalEngine(str(model_dir), gpu_memory_utilization=gs.vllm_gpu_memory_utilization) if use_vllm else None
    try:
        result = evaluator.run(model, step=0, engine=engine)
    finally:
        if engine is not None:
            engine.close()
    tok = processor.tokenizer
    tokens = sum(len(tok(r["response"], add_special_tokens=False)["input_ids"]) for r in result.records)
    return {"tokens_per_s_per_gpu": tokens / result.seconds, "seconds": result.seconds, "responses": len(result.records),
            "mean_response_tokens": tokens / len(result.records), "batch_size": gs.eval_batch_size}


def gpu_throughput(gs: GpuSettings = GpuSettings(), device: str | None = None) -> dict:
    """GRPO throughput for each size, with transformers generation and (CUDA, vllm importable) vLLM colocate,
    and the evaluator's, with transformers and (likewise) a vLLM engine of its own."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device == "cuda"
    backends = ["transformers"]
    if device == "cuda" and importlib.util.find_spec("vllm") is not None:
        backends.append("vllm_colocate")
    out = {"settings": {k: v for k, v in dataclasses.asdict(gs).items() if k != "sizes"}, "sizes": {}}
    for name, size in gs.sizes.items():
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = random_model_dir(size, Path(tmp) / "model", torch.bfloat16 if bf16 else torch.float32, device)
            out["sizes"][name] = {}
            for b in backends:
                out["sizes"][name][b] = gpu_run(model_dir, gs, b == "vllm_colocate", bf16, Path(tmp))
                gc.collect()
                if bf16:
                    torch.cuda.empty_cache()
            out.setdefault("evaluation", {})[name] = {}
            for b in backends:
                engine = "vllm" if b == "vllm_colocate" else "transformers"
                out["evaluation"][name][engine] = eval_run(model_dir, gs, engine == "vllm", bf16)
                gc.collect()
                if bf16:
                    torch.cuda.empty_cache()
            if "vllm_colocate" not in backends:
                out["evaluation"][name]["vllm"] = None
        if "vllm_colocate" not in backends:
            out["sizes"][name]["vllm_colocate"] = None
    out["vllm_skipped"] = None if "vllm_colocate" in backends else "vllm does not import" if device == "cuda" else "no CUDA device"
    return out


# ============================================================================ report


def with_goals(metrics: dict[str, dict]) -> dict[str, dict]:
    for name, m in metrics.items():
        op, goal = GOALS[name]
        m["goal"] = f"{op} {goal}"
        m["pass"] = bool(m["value"] <= goal if op == "<=" else m["value"] >= goal)
    return metrics


def environment() -> dict:
    import accelerate
    import torch
    import transformers
    import trl

    cuda = torch.cuda.is_available()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
    }


def table(metrics: dict[str, dict]) -> str:
    lines = [f"{'metric':34} {'value':>12} {'goal':>10}  result"]
    for name, m in metrics.items():
        value = f"{m['value']:,.0f}" if m["value"] >= 100 else f"{m['value']:.3g}"
        lines.append(f"{name:34} {value:>12} {m['goal']:>10}  {'pass' if m['pass'] else 'FAIL'}")
    return "\n".join(lines)


def gpu_table(gpu: dict) -> str:
    lines = [f"{'size':16} {'generation':15} {'tokens/s/GPU':>12} {'s/step':>8}"]
    for name, backends in gpu["sizes"].items():
        for backend, m in backends.items():
            tps, sec = (f"{m['tokens_per_s_per_gpu']:,.0f}", f"{m['step_seconds']:.2f}") if m else ("-", "-")
            lines.append(f"{name:16} {backend:15} {tps:>12} {sec:>8}")
    for name, engines in gpu.get("evaluation", {}).items():
        for engine, m in engines.items():
            tps, sec = (f"{m['tokens_per_s_per_gpu']:,.0f}", f"{m['seconds']:.2f}") if m else ("-", "-")
            lines.append(f"{name:16} {'eval/' + engine:15} {tps:>12} {sec:>8}")
    if gpu["vllm_skipped"]:
        lines.append(f"vllm_colocate skipped: {gpu['vllm_skipped']}")
    return "\n".join(lines)


def run_gpu_only(gpu: GpuSettings) -> dict:
    start = time.perf_counter()
    report = {**environment(), "gpu": gpu_throughput(gpu, device="cuda")}
    report["seconds"] = {"total": time.perf_counter() - start}
    return report


def run_bench(settings: Settings, gpu: GpuSettings | None = GpuSettings()) -> dict:
    import torch

    start = time.perf_counter()
    path = model_path(settings)
    setup = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        runs = side_by_side(settings, path, Path(tmp))
        metrics = summarise(runs, save_steps(settings))
        metrics["rule_reward_throughput"] = rule_reward_throughput(settings.rule_completions, settings.rule_repeats)
        metrics["peak_memory_mb"] = peak_memory(settings, Path(tmp))
    report = {**environment(), "quick": settings == QUICK, "settings": dataclasses.asdict(settings),
              "model": path, "metrics": with_goals(metrics), "runs": runs}
    if gpu is not None and torch.cuda.is_available():
        report["gpu"] = gpu_throughput(gpu)
    else:
        report["gpu"], report["gpu_reason"] = None, "no CUDA device" if gpu is not None else "not requested"
    report["seconds"] = {"setup": setup, "total": time.perf_counter() - start}
    return report


def bench_cli(args) -> int:
    gpu = GpuSettings(timed_steps=1, completion_length=64, eval_new_tokens=64) if args.quick else gpu_settings_from_recipe()
    report = run_gpu_only(gpu) if args.gpu_only else run_bench(QUICK if args.quick else FULL, gpu)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if "metrics" in report:
        print(table(report["metrics"]))
    if report["gpu"]:
        print(gpu_table(report["gpu"]))
    print(f"gpu: {'measured' if report['gpu'] else report['gpu_reason']}; "
          f"{report['seconds']['total']:.0f} s in all -> {out}")
    return 0 if all(math.isfinite(m["value"]) for m in report.get("metrics", {}).values()) else 1
