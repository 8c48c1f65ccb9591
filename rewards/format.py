"""Format reward: ``<think>…</think><answer>…</answer>`` and nothing else."""

from __future__ import annotations

from rewards.parsing import column, is_well_formatted, response_text

__all__ = ["format_reward"]


def format_reward(completions, think_prefix=None, **kwargs) -> list[float]:
    """1.0 when the whole trimmed response (``think_prefix + completion``) is one
    non-empty ``<think>`` block followed by one non-empty ``<answer>`` block and
    nothing else (no nested or repeated tags), else 0.0."""
    return [
        1.0 if is_well_formatted(response_text(c, column(think_prefix, i))) else 0.0
        for i, c in enumerate(completions)
    ]
