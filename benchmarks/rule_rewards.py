"""Throughput of the rule-based rewards (accuracy + format + consistency together)
on one CPU core.

    python benchmarks/rule_rewards.py [--n 20000] [--repeats 5] [--out benchmarks/results/rule_rewards.json]

Builds ``n`` varied synthetic completions (well-formed, malformed, reward-hacking,
think-prefixed, conversational), pins the process to one core where the OS allows
it, and reports the median over ``repeats`` timed passes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards import accuracy_reward, consistency_reward, format_reward  # noqa: E402

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


def make_example(rng: random.Random) -> tuple[object, str, list[str], str | None]:
    n_opt = rng.choice([2, 3, 4, 4, 5])
    opts = rng.sample(COLOURS, n_opt) if rng.random() < 0.7 else [f"{k} {rng.choice(SHAPES)}s" for k in rng.sample(range(1, 9), n_opt)]
    gold = rng.randrange(n_opt)
    pick = gold if rng.random() < 0.6 else rng.randrange(n_opt)
    concl = pick if rng.random() < 0.7 else rng.randrange(n_opt)
    L = "ABCDE"
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
    completion: object = text
    if rng.random() < 0.3:
        completion = [{"role": "assistant", "content": text}]
    return completion, L[gold], opts, prefix


def build(n: int, seed: int = 0):
    rng = random.Random(seed)
    rows = [make_example(rng) for _ in range(n)]
    completions, answers, options, prefixes = (list(col) for col in zip(*rows))
    return completions, answers, options, prefixes


def run_once(completions, answers, options, prefixes) -> float:
    t0 = time.perf_counter()
    accuracy_reward(completions, answer=answers, options=options, think_prefix=prefixes)
    format_reward(completions, think_prefix=prefixes)
    consistency_reward(completions, options=options, think_prefix=prefixes)
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/rule_rewards.json")
    args = parser.parse_args(argv)

    pinned = False
    if hasattr(os, "sched_setaffinity"):
        try:
            cpu = min(os.sched_getaffinity(0))
            os.sched_setaffinity(0, {cpu})
            pinned = True
        except OSError:
            pass

    data = build(args.n, args.seed)
    run_once(*(col[:500] for col in data))  # warm regex/option caches
    times = [run_once(*data) for _ in range(args.repeats)]
    median = statistics.median(times)
    result = {
        "benchmark": "rule_rewards",
        "rewards": ["accuracy", "format", "consistency"],
        "n_completions": args.n,
        "repeats": args.repeats,
        "seconds_median": median,
        "seconds_all": times,
        "completions_per_s": args.n / median,
        "pinned_one_core": pinned,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "target_completions_per_s": 20_000,
    }
    print(f"{result['completions_per_s']:,.0f} completions/s "
          f"(accuracy+format+consistency, n={args.n}, median of {args.repeats}, pinned={pinned})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
