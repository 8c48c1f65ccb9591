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


@pytest.fixture
def rlvlm_cli(capsys):
    """`rlvlm ARGS` in this process (rlvlm.cli.main): (exit status, stdout, stderr); argparse's --help and
    usage errors exit through SystemExit."""
    from rlvlm.cli import main

    def run(*args) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    return run
