"""Metrics with exact public contracts (DESIGN.md, "Metrics")."""

from __future__ import annotations

import math
from typing import Sequence


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
    if len(set(labels)) < 2:
        raise ValueError("auroc needs both positive and negative labels; got one class only.")
    if len(scores) != len(labels):
        raise ValueError(f"auroc: {len(scores)} scores but {len(labels)} labels.")
    return float(roc_auc_score(labels, list(scores)))
