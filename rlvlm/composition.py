"""Rewards named in a recipe -> TRL reward functions and weights.

A reward is a registered name (`accuracy`, `format`, `consistency`, ...), `package.module:function`,
or `path/to/file.py:function`; `kwargs` are bound to it. TRL then weights and sums them itself.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
from pathlib import Path
from typing import Callable

from rlvlm.recipe import RecipeError, RewardSpec


def _import_function(target: str) -> Callable:
    where, _, attr = target.rpartition(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise RecipeError(f"Reward file '{path}' does not exist.")
        spec = importlib.util.spec_from_file_location(f"rlvlm_user_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise RecipeError(f"Cannot import reward module '{where}': {e}.") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RecipeError(f"Reward '{target}': '{attr}' is not a function in '{where}'.")
    return fn


def checked(fn: Callable, name: str) -> Callable:
    """Wrap a reward so that NaN or a wrong-length list fails loudly, naming the reward."""

    @functools.wraps(fn)
    def reward(completions, **kwargs):
        values = fn(completions, **kwargs)
        if not isinstance(values, (list, tuple)) or len(values) != len(completions):
            got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
            raise ValueError(f"Reward '{name}' returned {got} values for {len(completions)} completions.")
        if any(v is not None and isinstance(v, float) and math.isnan(v) for v in values):
            raise ValueError(f"Reward '{name}' returned NaN.")
        return list(values)

    reward.__name__ = name
    return reward


def load_reward(spec: RewardSpec) -> Callable:
    from rewards import REWARDS

    if spec.name in REWARDS:
        fn = REWARDS[spec.name]
    elif ":" in spec.name:
        fn = _import_function(spec.name)
    else:
        raise RecipeError(
            f"Unknown reward '{spec.name}'. Registered: {sorted(REWARDS)}; "
            "or give 'module:function' or 'path/to/file.py:function'."
        )
    if spec.kwargs:
        fn = functools.partial(fn, **spec.kwargs)
    name = spec.name.rpartition(":")[2] if ":" in spec.name else spec.name
    return checked(fn, name)


def load_rewards(specs: list[RewardSpec]) -> tuple[list[Callable], list[float]]:
    return [load_reward(s) for s in specs], [s.weight for s in specs]
