"""Dataset adapters and the embedded "shapes" benchmark."""

from typing import Callable

# Per dataset source, what a reasoning's stated facts imply: (question, options, think) -> option index
# or None. A dataset with such a reader gets a reasoning-validity measure in the evaluation trace.
REASONING_READERS = {"shapes": "rlvlm.data.shapes:implied_option"}


def reasoning_reader(source: str | None) -> Callable | None:
    """The implied-option reader of a dataset source (see REASONING_READERS), or None when it has none."""
    import importlib

    target = REASONING_READERS.get(source or "")
    if target is None:
        return None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
