"""Dataset adapters and the embedded "shapes" benchmark.

A dataset can lend the layers above it its own readers and generators, registered here per dataset
source as "module:function" (imported when first asked for) or as the function itself; a source with
none gets the generic behaviour of the layer that asks.
"""

import importlib
from typing import Callable

# What a reasoning's stated facts imply: (question, options, think) -> option index or None. A dataset
# with such a reader gets a reasoning-validity measure in the evaluation trace.
REASONING_READERS: dict[str, str | Callable] = {"shapes": "rlvlm.data.shapes:implied_option"}
# Reasoning (no tags) and a one-sentence caption toward an option letter or free-form target, for
# rlvlm.perturb's *_think and *_caption conditions: (example, target, seed) -> text, or None for an
# example the dataset cannot write one for (rlvlm.perturb then uses its generic templates).
REASONING_GENERATORS: dict[str, str | Callable] = {"shapes": "rlvlm.data.shapes:reasoning_toward"}
CAPTION_GENERATORS: dict[str, str | Callable] = {"shapes": "rlvlm.data.shapes:caption_toward"}


def _registered(registry: dict, source: str | None) -> Callable | None:
    target = registry.get(source or "")
    if target is None or callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def reasoning_reader(source: str | None) -> Callable | None:
    """The implied-option reader of a dataset source (see REASONING_READERS), or None when it has none."""
    return _registered(REASONING_READERS, source)


def reasoning_generator(source: str | None) -> Callable | None:
    """The reasoning generator of a dataset source (see REASONING_GENERATORS), or None when it has none."""
    return _registered(REASONING_GENERATORS, source)


def caption_generator(source: str | None) -> Callable | None:
    """The caption generator of a dataset source (see CAPTION_GENERATORS), or None when it has none."""
    return _registered(CAPTION_GENERATORS, source)
