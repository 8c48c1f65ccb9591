"""Metrics. `option_entropy` and `auroc` have exact public contracts (docs/concepts.md, "rlvlm.metrics");
the rest turn per-example evaluation records into the trace row, the AUROC rows and the
shortcut signals. All are plain functions over plain values (no torch)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Sequence

CATEGORY_KEYS = ("consistent_correct", "inconsistent_correct", "consistent_incorrect", "inconsistent_incorrect", "unscored")
TRACE_KEYS = (
    "step",
    "dataset",
    "condition",
    "n",
    "accuracy",
    "consistency",
    "consistent_accuracy",
    "option_entropy",
    "p_correct",
    "categories",
    "reasoning_validity",
)


def option_entropy(probs: Sequence[float]) -> float:
    """Entropy (natural log) of a distribution over option letters; renormalised if it does not sum to 1."""
    total = float(sum(probs))
    if total <= 0:
        raise ValueError("option_entropy needs probabilities with a positive sum.")
    return float(-sum((p / total) * math.log(p / total) for p in probs if p > 0))


def auroc(scores: Sequence[float], labels: Sequence[int | bool]) -> float:
    """Area under the ROC curve; ties count half. One class only -> ValueError."""
    from sklearn.metrics import roc_auc_score

    labels = [int(bool(y)) for y in labels]
    if len(scores) != len(labels):
        raise ValueError(f"auroc: {len(scores)} scores but {len(labels)} labels.")
    if len(set(labels)) < 2:
        raise ValueError("auroc needs both positive and negative labels; got one class only.")
    return float(roc_auc_score(labels, list(scores)))


# ----------------------------------------------------------------------------- per condition


def categories(correct: Iterable[bool], consistent: Iterable[bool | None]) -> dict[str, int]:
    """Counts of consistent/inconsistent x correct/incorrect, and `unscored` for examples whose
    faithfulness verdict could not be had (`consistent` None: the judge failed); they sum to the number
    of examples."""
    cats = dict.fromkeys(CATEGORY_KEYS, 0)
    for ok, cons in zip(correct, consistent, strict=True):
        if cons is None:
            cats["unscored"] += 1
        else:
            cats[("consistent" if cons else "inconsistent") + ("_correct" if ok else "_incorrect")] += 1
    return cats


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def summarize(records: list[dict]) -> dict:
    """The metric part of a trace row from per-example records (keys `correct`, `consistent`,
    `option_probs`, `p_correct`). `accuracy` is over every example; `consistency` and
    `consistent_accuracy` over the scored ones (`consistent` not None), None when none was scored: a
    scorer's failure is never counted as unfaithfulness. Examples without option probabilities
    (free-form) are left out of the two option means; with none at all those means are 0.0.
    `reasoning_validity`: the share of examples whose think concludes the option its own stated facts
    imply (`reasoning_valid`), over the examples of datasets that have a reader for those facts; None
    without one."""
    n = len(records)
    cats = categories([r["correct"] for r in records], [r["consistent"] for r in records])
    judged = [r for r in records if r["consistent"] is not None]
    readable = [r for r in records if r.get("reasoning_valid") is not None]
    scored = [r for r in records if r.get("option_probs")]
    return {
        "n": n,
        "accuracy": _mean([float(bool(r["correct"])) for r in records]),
        "consistency": _mean([float(bool(r["consistent"])) for r in judged]) if judged else None,
        "consistent_accuracy": cats["consistent_correct"] / len(judged) if judged else None,
        "option_entropy": _mean([option_entropy(r["option_probs"]) for r in scored]),
        "p_correct": _mean([float(r["p_correct"]) for r in scored]),
        "categories": cats,
        # whether the think's conclusion follows from the facts it states (datasets with a reader)
        "reasoning_validity": _mean([float(r["reasoning_valid"]) for r in readable]) if readable else None,
    }


def trace_row(step: int, dataset: str, condition: str, records: list[dict]) -> dict:
    """One row of RUN_DIR/eval/trace.jsonl, exactly the keys of the trace schema (docs/evaluation.md, "What it writes: the trace")."""
    row = {"step": int(step), "dataset": dataset, "condition": condition, **summarize(records)}
    return {k: row[k] for k in TRACE_KEYS}


# ----------------------------------------------------------------------------- robustness AUROC


def robustness_auroc(base: list[dict], perturbed: list[dict]) -> dict:
    """How well the base condition's P(correct) predicts that an example stays correct under a
    perturbation. Population: examples correct under base (matched by `id`); label: still correct
    under the perturbation. Also reports the same AUROC with the negative base option entropy as
    the score, for comparison. With one class only the AUROCs are None and `note` says why."""
    after = {r["id"]: bool(r["correct"]) for r in perturbed}
    pool = [r for r in base if r["correct"] and r["id"] in after and r.get("option_probs")]
    labels = [after[r["id"]] for r in pool]
    out = {"n": len(pool), "n_stay_correct": int(sum(labels)), "auroc": None, "auroc_entropy": None, "note": None}
    if len(set(labels)) < 2:
        what = "no base-correct examples" if not pool else f"all {len(pool)} base-correct examples " + (
            "stay correct" if labels[0] else "flip"
        )
        out["note"] = f"one class only ({what}); AUROC undefined"
        return out
    out["auroc"] = auroc([float(r["p_correct"]) for r in pool], labels)
    out["auroc_entropy"] = auroc([-option_entropy(r["option_probs"]) for r in pool], labels)
    return out


# ----------------------------------------------------------------------------- shortcut signals


def _words(text: str) -> list[str]:
    return text.lower().split()


def mean_words(texts: Sequence[str]) -> float:
    """Mean length in whitespace-separated words."""
    return _mean([float(len(_words(t))) for t in texts])


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n: unique word n-grams / all word n-grams, pooled over the texts (0.0 with none)."""
    grams = [tuple(w[i : i + n]) for w in map(_words, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def identical_share(texts: Sequence[str]) -> float:
    """Share of texts that are non-empty and identical (whitespace- and case-normalised) to at
    least one other text of the list."""
    norm = [" ".join(_words(t)) for t in texts]
    counts = Counter(t for t in norm if t)
    return sum(1 for t in norm if t and counts[t] > 1) / len(texts) if texts else 0.0


def shortcut_signals(thinks: Sequence[str | None]) -> dict:
    """Collapse onto templated CoTs: mean think length (words), distinct-2 ratio, share of thinks
    identical to another, share of empty or missing thinks."""
    texts = [t or "" for t in thinks]
    return {
        "think_words": mean_words(texts),
        "distinct_2": distinct_n(texts, 2),
        "identical_share": identical_share(texts),
        "empty_think_share": _mean([float(not t.strip()) for t in texts]),
    }
