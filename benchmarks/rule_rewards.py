"""Throughput of the rule-based rewards (accuracy + format + consistency) on one CPU core.

    python benchmarks/rule_rewards.py [--n 20000] [--repeats 5] [--out benchmarks/results/rule_rewards.json]

A thin wrapper: the measurement is `rlvlm.bench.rule_reward_throughput`, part of `rlvlm bench`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlvlm.bench import GOALS, rule_reward_throughput  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/rule_rewards.json")
    args = parser.parse_args(argv)
    result = {**rule_reward_throughput(args.n, args.repeats), "goal": " ".join(map(str, GOALS["rule_reward_throughput"]))}
    print(f"{result['value']:,.0f} completions/s (accuracy+format+consistency, n={args.n}, "
          f"median of {args.repeats}, pinned={result['pinned_one_core']})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
