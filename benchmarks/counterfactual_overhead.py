"""What the counterfactual faithfulness scorer adds to a GRPO step of the embedded default.

    RLVLM_CACHE=/tmp/cache python benchmarks/counterfactual_overhead.py [--rounds 3] [--steps 3] [--warmup 1]
        [--out benchmarks/results/counterfactual_overhead.json]

A thin wrapper around `rlvlm.bench`: runs `accuracy x counterfactual + 0.1 format` on the embedded
default (with the bench's small warm start, so the policy writes some parsable responses) and reports
the scorer's own time per step / the rest of the step, measured inside the run (robust to load), and
the worst case where all 32 completions of a batch are scorable. `rlvlm bench` measures the same
alternated with the step without the scorer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlvlm import bench  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--out", default="benchmarks/results/counterfactual_overhead.json")
    args = parser.parse_args(argv)
    settings = bench.Settings(rounds=args.rounds, warmup_steps=args.warmup, timed_steps=args.steps,
                              overrides=bench.SMALL_WARM_START)
    bench.model_path(settings)  # build (or reuse) the warm start before anything is timed
    with tempfile.TemporaryDirectory() as tmp:
        runs = [bench.counterfactual_run(bench.bench_recipe(settings, Path(tmp) / str(r), bench.WITH_COUNTERFACTUAL), args.warmup)
                for r in range(args.rounds)]
    steps = [t for run in runs for t in run["step_seconds"]]
    scorer = [s for run in runs for s in run["scorer_seconds"]]
    result = {
        "overhead_in_run": statistics.median(s / (t - s) for t, s in zip(steps, scorer)),
        "overhead_full_batch_bound": statistics.median(run["full_batch_seconds"] for run in runs) / statistics.median(steps),
        "goal": 0.25,
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
