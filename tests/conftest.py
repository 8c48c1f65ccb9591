"""Shared fixtures. Every test runs offline on a CPU; the tiny model is built once per session."""

import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def rlvlm_cache(tmp_path_factory):
    """A private RLVLM_CACHE so tests never touch (or depend on) the user's cache."""
    path = tmp_path_factory.mktemp("rlvlm-cache")
    old = os.environ.get("RLVLM_CACHE")
    os.environ["RLVLM_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("RLVLM_CACHE", None)
    else:
        os.environ["RLVLM_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_model_path(rlvlm_cache):
    """The untrained tiny Qwen2.5-VL (model + processor), built from seed 0."""
    from rlvlm.tiny import build_tiny

    return build_tiny(seed=0, progress=False)
