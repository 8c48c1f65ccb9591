"""What the counterfactual faithfulness scorer adds to a GRPO step of the embedded default.

    RLVLM_CACHE=/tmp/cache python benchmarks/counterfactual_overhead.py [--steps 3] [--warmup 1] [--rounds 1]
        [--model PATH] [--out benchmarks/results/counterfactual_overhead.json]

Runs the embedded default recipe (recipes/tiny-shapes.yaml: tiny Qwen2.5-VL, 8 rollouts per prompt,
32 completions per step, 64 completion tokens) twice per round with the same settings and seed:
rewards `accuracy + 0.1 format` ("without") and `accuracy×counterfactual + 0.1 format` ("with"),
and times each optimizer step (after `warmup` steps). Two overhead figures:

- `overhead_step_time`: median step time with / without − 1 (separate runs: sensitive to load);
- `overhead_in_run`: the scorer's own time / the rest of the step, in the "with" run (robust to
  load drifting between runs);
- `overhead_full_batch_bound`: the scorer's time on a worst-case batch (32 well-formed completions,
  32 distinct CoTs, nothing deduplicated) / the median step time without it: what the scorer adds
  once the policy writes parsable responses every time.

The policy must write parsable responses for the scorer to run forward passes at all, so the model
is the tiny one after a (small, cached) supervised warm start, or `--model PATH`; the JSON reports
the fraction of completions the scorer actually scored.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WITHOUT = [{"name": "accuracy", "weight": 1.0}, {"name": "format", "weight": 0.1}]
WITH = [{"name": "accuracy", "gate": ["counterfactual"], "weight": 1.0}, {"name": "format", "weight": 0.1}]


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.scorer_seconds, self.scored, self.forwards = [], [], [], []
            self.scorer = None

        def _stats(self):
            return dict(self.scorer.stats) if self.scorer is not None else {"seconds": 0.0, "scored": 0, "forwards": 0}

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0, self.s0 = time.perf_counter(), self._stats()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.t0)
            s = self._stats()
            self.scorer_seconds.append(s["seconds"] - self.s0["seconds"])
            self.scored.append(s["scored"] - self.s0["scored"])
            self.forwards.append(s["forwards"] - self.s0["forwards"])

    return StepTimer()


def full_batch_seconds(scorer, n: int = 32, repeats: int = 3) -> float:
    """The scorer's time on a worst-case batch: `n` well-formed completions with `n` distinct CoTs
    (nothing deduplicated), with the trained policy; median of `repeats`."""
    from rlvlm.data import shapes
    from rlvlm.perturb import perturb

    examples = shapes.generate_examples("train", n, seed=123)
    completions, prompts, images, options = [], [], [], []
    for i, ex in enumerate(examples):
        letter = "ABCD"[i % len(ex["options"])]
        completions.append(f"<think>{shapes.cot_for(ex, letter, seed=i)}</think><answer>{letter}</answer>")
        prompts.append(perturb(ex, "base", seed=i)["prompt"])
        images.append(ex["image"])
        options.append(ex["options"])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        scores = scorer(completions, prompts=prompts, image=images, options=options, think_prefix=[None] * n)
        times.append(time.perf_counter() - t0)
        assert all(s is not None for s in scores)
    return statistics.median(times)


def run(rewards: list[dict], args, out_dir: Path) -> dict:
    from rlvlm.recipe import load_recipe
    from rlvlm.train import build_trainer

    overrides = {
        "output_dir": str(out_dir),
        "max_steps": args.warmup + args.steps,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "data": {"train": {"name": "shapes", "n": 32 * (args.warmup + args.steps)}, "eval": []},
        "warm_start.n_examples": args.warm_start_examples,
        "warm_start.epochs": args.warm_start_epochs,
        "rewards": rewards,
        "evaluation": {"enabled": False},
    }
    if args.model:
        overrides["model.name"] = args.model
        overrides["warm_start.enabled"] = False
    recipe = load_recipe(ROOT / "recipes" / "tiny-shapes.yaml", overrides)
    trainer = build_trainer(recipe, progress=False)
    timer = step_timer()
    components = dict(c for f in trainer.reward_funcs for c in getattr(f, "components", []))
    timer.scorer = components.get("counterfactual")
    trainer.add_callback(timer)
    trainer.train()
    bound = full_batch_seconds(timer.scorer) if timer.scorer is not None else None
    w = args.warmup
    n_completions = recipe.grpo["per_device_train_batch_size"]
    return {
        "step_seconds": timer.times[w:],
        "scorer_seconds": timer.scorer_seconds[w:],
        "scored_fraction": sum(timer.scored[w:]) / (n_completions * len(timer.times[w:])),
        "forwards_per_step": statistics.mean(timer.forwards[w:]),
        "scorer_seconds_full_batch": bound,
        "format_reward": statistics.mean(
            h["rewards/format/mean"] for h in trainer.state.log_history if "rewards/format/mean" in h),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=1, help="without/with pairs, alternated")
    parser.add_argument("--model", default=None, help="a warm-started model directory (skips the warm start)")
    parser.add_argument("--warm-start-examples", type=int, default=1024)
    parser.add_argument("--warm-start-epochs", type=float, default=2.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "counterfactual_overhead.json"))
    args = parser.parse_args()

    import torch

    results = {"without": [], "with": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, rewards in (("without", WITHOUT), ("with", WITH)):
                t0 = time.perf_counter()
                results[name].append(run(rewards, args, Path(tmp) / f"{name}-{r}"))
                print(f"round {r} {name}: {json.dumps(results[name][-1])} ({time.perf_counter() - t0:.0f} s)",
                      flush=True)

    step_without = [t for res in results["without"] for t in res["step_seconds"]]
    step_with = [t for res in results["with"] for t in res["step_seconds"]]
    scorer = [t for res in results["with"] for t in res["scorer_seconds"]]
    med_without, med_with = statistics.median(step_without), statistics.median(step_with)
    in_run = [s / (t - s) for t, s in zip(step_with, scorer)]
    full = statistics.median(res["scorer_seconds_full_batch"] for res in results["with"])
    report = {
        "benchmark": "counterfactual_overhead",
        "recipe": "recipes/tiny-shapes.yaml (8 rollouts x 4 prompts = 32 completions/step, 64 new tokens)",
        "scorer": "accuracy x counterfactual (default checks: shuffle), + 0.1 format",
        "model": args.model or f"tiny + warm start ({args.warm_start_examples} examples x {args.warm_start_epochs} epochs)",
        "steps_timed_per_run": args.steps,
        "rounds": args.rounds,
        "step_seconds_without_median": med_without,
        "step_seconds_with_median": med_with,
        "scorer_seconds_per_step_median": statistics.median(scorer),
        "overhead_step_time": med_with / med_without - 1.0,
        "overhead_in_run": statistics.median(in_run),
        "scorer_seconds_full_batch": full,
        "overhead_full_batch_bound": full / med_without,
        "goal": 0.25,
        "scored_fraction": statistics.mean(res["scored_fraction"] for res in results["with"]),
        "forwards_per_step": statistics.mean(res["forwards_per_step"] for res in results["with"]),
        "runs": results,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
