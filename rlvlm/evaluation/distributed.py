"""The evaluator's collectives (accelerate). Every function is called on every process alike."""

from __future__ import annotations

import os


def process_state():
    """accelerate's process state. Several processes without a GPU (launch/accelerate/multi_cpu.yaml)
    join one gloo group as CPU processes, as `Recipe.grpo_kwargs` arranges for training."""
    from accelerate import PartialState

    from rlvlm.recipe import gpu_available

    return PartialState(cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not gpu_available())


def all_gather(obj: list) -> list:
    """Every process's list, concatenated in process order, on every process."""
    if process_state().num_processes == 1:
        return obj
    from accelerate.utils import gather_object

    return gather_object(obj)


def broadcast(obj):
    """The main process's `obj` on every process."""
    if process_state().num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj])[0]


def sync_error(message: str | None) -> str | None:
    """Every process's error message (or None) -> the first one, on every process."""
    errors = [m for m in all_gather([message]) if m]
    return errors[0] if errors else None
