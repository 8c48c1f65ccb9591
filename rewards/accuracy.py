"""Accuracy reward: the one answer block names the gold option (or equals the
free-form gold answer)."""

from __future__ import annotations

from rewards.options import resolve_gold
from rewards.parsing import column, free_form_match, resolve_option, response_text, split_response

__all__ = ["accuracy_reward"]


def accuracy_reward(completions, answer, options=None, think_prefix=None, **kwargs) -> list[float | None]:
    """1.0 when the response's single ``<answer>`` block resolves to exactly one
    option and that option is the gold one, else 0.0; ``None`` when the gold
    answer cannot be read (the gold rule of :mod:`rewards.options`). Without options (free-form), the answer block is
    compared to the gold text after normalisation, and numbers/LaTeX through
    math-verify.
    """
    rewards: list[float | None] = []
    for i, completion in enumerate(completions):
        gold = column(answer, i)
        opts = column(options, i)
        text = response_text(completion, column(think_prefix, i))
        if opts:
            gold_idx = resolve_gold(gold, opts)
            if gold_idx is None:
                rewards.append(None)
                continue
            _, pred = split_response(text)
            rewards.append(1.0 if pred is not None and resolve_option(pred, opts) == gold_idx else 0.0)
        else:
            if isinstance(gold, (int, float)) and not isinstance(gold, bool):
                gold = str(gold)
            if not isinstance(gold, str) or not gold.strip():
                rewards.append(None)
                continue
            _, pred = split_response(text)
            rewards.append(1.0 if free_form_match(gold, pred) else 0.0)
    return rewards
