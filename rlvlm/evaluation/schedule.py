"""Which checkpoints an evaluation covers: one rule, used by the training callback and the follower."""

from __future__ import annotations


def is_evaluated(step: int, save_steps: int, every: int, last_step: int) -> bool:
    """Whether the checkpoint saved at `step` is evaluated under `evaluation.every: K`: the K-th, 2K-th,
    ... save (saves every `save_steps` steps), and the last checkpoint (`last_step`) always."""
    if every <= 1 or step >= last_step or save_steps <= 0:
        return True
    return (step // save_steps) % every == 0
