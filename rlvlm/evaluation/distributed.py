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
    """Every process's error message (or None) -> the first one (in process order), on every process: the
    round boundary after which all processes stop together."""
    errors = [m for m in all_gather([message]) if m]
    return errors[0] if errors else None


def passes_are_collective(state, model=None) -> bool:
    """Whether the model's passes (`generate`, a forward) are collectives themselves: several processes
    under DeepSpeed ZeRO-3 (transformers generates with `synced_gpus`, and a forward without gathered
    parameters all-gathers them) or FSDP. Then an exception inside a pass leaves the other processes in
    its collective, beyond the reach of `sync_error` (see rlvlm.evaluation.evaluator)."""
    if state.num_processes == 1:
        return False
    try:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():
            return True
    except ImportError:
        pass
    from accelerate.utils import DistributedType

    if getattr(state, "distributed_type", None) == DistributedType.FSDP:
        return True
    try:
        from transformers.distributed.fsdp import is_fsdp_managed_module
    except ImportError:
        return False
    return model is not None and is_fsdp_managed_module(model)
