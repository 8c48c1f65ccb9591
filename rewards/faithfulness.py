"""Rule-based faithfulness: the think's last explicit conclusion equals the answer."""

from __future__ import annotations

from rewards.parsing import (
    column,
    free_form_match,
    resolve_option,
    response_text,
    split_response,
    think_conclusion,
    think_conclusion_text,
)

__all__ = ["consistency_reward", "is_consistent"]


def is_consistent(text: str, options=None) -> bool:
    """Whether the think block of ``text`` concludes the option (or, without
    options, the free-form answer) given in its answer block."""
    think, answer = split_response(text)
    if not think or not answer:
        return False
    if options:
        chosen = resolve_option(answer, options)
        return chosen is not None and think_conclusion(think, options) == chosen
    concluded = think_conclusion_text(think)
    return concluded is not None and free_form_match(answer, concluded)


def consistency_reward(completions, options=None, think_prefix=None, **kwargs) -> list[float]:
    """1.0 when the option the think block concludes (its last explicit
    conclusion: "answer is B", "answer: B", "(B)", "option B", "answer is
    <option text>") equals the option in the answer block; 0.0 when they differ
    or either is missing."""
    return [
        1.0 if is_consistent(response_text(c, column(think_prefix, i)), column(options, i)) else 0.0
        for i, c in enumerate(completions)
    ]
