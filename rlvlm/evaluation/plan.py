"""`rlvlm eval --plan RECIPE`: what the recipe's evaluation will cost, before any model or data is loaded."""

from __future__ import annotations

import math

from rlvlm.evaluation.items import dataset_labels, resolve_conditions
from rlvlm.evaluation.schedule import is_evaluated


def evaluated_steps(max_steps: int, save_steps: int, every: int, at_start: bool) -> list[int]:
    """The steps a run of `max_steps` evaluates: 0 (with `at_start`), then the saves `every` selects,
    the last one always (transformers saves the final step too)."""
    saves = sorted({*range(save_steps, max_steps + 1, save_steps), max_steps}) if save_steps > 0 else [max_steps]
    return ([0] if at_start else []) + [s for s in saves if is_evaluated(s, save_steps, every, max_steps)]


def grpo_setting(recipe, key: str):
    """A GRPOConfig value of the recipe, or GRPOConfig's default, without building the config (which
    checks the machine: a bf16 recipe cannot be built on a CPU, and a plan is made anywhere)."""
    import dataclasses

    from trl import GRPOConfig

    if key in recipe.grpo:
        return recipe.grpo[key]
    return next(f.default for f in dataclasses.fields(GRPOConfig) if f.name == key)


def plan(recipe, tokens_per_s: float | None = None, tokens_per_generation: float | None = None) -> dict:
    """One JSON-ready object: per dataset its items (the sample size `n`: at most that many, fewer
    when the set is smaller), conditions and generations; `generations_per_checkpoint`; the evaluated
    checkpoints; and, given a generation rate in tokens/s (all evaluating GPUs together), hours per
    checkpoint and per run. Tokens per generation default to `max_new_tokens`: an upper bound."""
    section = recipe.evaluation
    conditions = resolve_conditions(section.conditions)
    datasets = {
        label: {"items": spec.n, "conditions": len(conditions), "generations": spec.n * len(conditions)}
        for label, spec in zip(dataset_labels(recipe.data.eval), recipe.data.eval)
    }
    per_checkpoint = sum(d["generations"] for d in datasets.values())
    max_steps, save_steps, save_strategy = (grpo_setting(recipe, k) for k in ("max_steps", "save_steps", "save_strategy"))
    if save_steps < 1:  # a ratio of max_steps, as TrainingArguments reads it
        save_steps = math.ceil(max_steps * save_steps)
    out = {
        "recipe": recipe.name,
        "mode": section.mode,
        "conditions": list(conditions),
        "datasets": datasets,
        "generations_per_checkpoint": per_checkpoint,
        "max_new_tokens": section.max_new_tokens,
        "every": section.every,
    }
    if max_steps > 0 and save_strategy == "steps":
        steps = evaluated_steps(max_steps, int(save_steps), section.every, section.at_start)
        out.update(evaluated_steps=steps, checkpoints_evaluated=len(steps), generations_per_run=per_checkpoint * len(steps))
    else:
        out.update(evaluated_steps=None, checkpoints_evaluated=None, generations_per_run=None,
                   note="the checkpoints depend on the dataset's size (max_steps unset) or on the save strategy")
    if tokens_per_s:
        tokens = tokens_per_generation or section.max_new_tokens
        hours = per_checkpoint * tokens / tokens_per_s / 3600
        out.update(tokens_per_s=tokens_per_s, tokens_per_generation=tokens, hours_per_checkpoint=hours,
                   hours_per_run=hours * out["checkpoints_evaluated"] if out["checkpoints_evaluated"] else None)
    return out
