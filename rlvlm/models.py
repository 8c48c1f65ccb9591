"""Resolve a recipe's model section to a directory or hub id that `from_pretrained` can load."""

from __future__ import annotations

import logging
from pathlib import Path

from rlvlm.recipe import ModelSection, RecipeError, WarmStartSection
from rlvlm.tiny import TINY_ALIAS

log = logging.getLogger("rlvlm")

TINY_NAMES = {"tiny", TINY_ALIAS}  # what model.name may say for the embedded tiny model


def is_tiny(section: ModelSection) -> bool:
    return section.name in TINY_NAMES


def check_model_name(section: ModelSection) -> None:
    """Fail fast (before anything is built) on a model path that cannot exist."""
    name = section.name
    if is_tiny(section):
        return
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).suffix
    if looks_local and not Path(name).expanduser().exists():
        raise RecipeError(f"Model path '{name}' does not exist.")


def resolve_model(section: ModelSection, progress: bool = True) -> str:
    """The base model: the tiny alias builds the embedded model, cached; anything else passes through.
    The warm-start is a step of its own (`warm_start_model`), which every caller runs after this one."""
    if not is_tiny(section):
        path = str(Path(section.name).expanduser()) if Path(section.name).expanduser().exists() else section.name
    else:
        from accelerate import PartialState

        from rlvlm.tiny import build_tiny

        # transformers writes model files from rank 0 only once torch.distributed is up, so rank 0 builds.
        with PartialState().main_process_first():
            path = str(build_tiny(seed=section.seed, progress=progress))
    return path


def warm_start_model(section: ModelSection, path: str, warm_start: WarmStartSection, progress: bool = True) -> str:
    """The supervised warm-start of the tiny model at `path` (rlvlm.warmstart, cached in
    `warm_start_dir`): the warm-started model's directory; `path` itself for any other model or with
    `warm_start.enabled: false`."""
    if not (warm_start.enabled and is_tiny(section)):
        return path
    from rlvlm.warmstart import warm_start as run_warm_start, warm_start_dir

    out = warm_start_dir(Path(path), warm_start)
    log.info("warm-start of %s: %s %s", path, "reusing" if (out / "rlvlm_warm_start.json").exists() else "building", out)
    return str(run_warm_start(path, warm_start, progress=progress))


def attn_implementation(section: ModelSection) -> str:
    """The attention kernel for `model.attn_implementation`; `auto`: flash_attention_2 where flash-attn is
    importable, a CUDA GPU is visible and the weights are 16-bit (flash-attn runs nothing else), sdpa otherwise."""
    if section.attn_implementation != "auto":
        return section.attn_implementation
    import importlib.util

    import torch

    if (section.dtype in ("bfloat16", "float16") and torch.cuda.is_available()
            and importlib.util.find_spec("flash_attn") is not None):
        return "flash_attention_2"
    return "sdpa"


def model_init_kwargs(section: ModelSection) -> dict:
    """from_pretrained keyword arguments of the model section: the one place its dtype and attention are
    turned into loading arguments (GRPOConfig.model_init_kwargs for training)."""
    return {"dtype": section.dtype, "attn_implementation": attn_implementation(section)}
