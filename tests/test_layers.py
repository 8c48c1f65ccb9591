"""Layering (issue 21): the recipe imports downward only, and the warm-start is its own step."""

import subprocess
import sys
import textwrap
from pathlib import Path


def test_the_recipe_imports_no_data_or_perturbation_module():
    # A fresh interpreter: whatever the other tests imported does not hide an import made by the recipe.
    code = textwrap.dedent("""
        import sys
        from rlvlm.recipe import load_recipe, WarmStartSection, AugmentationSection, EvaluationSection
        recipe = load_recipe("recipes/tiny-shapes.yaml")
        WarmStartSection(teacher_confusions={"compare": {"yellow": "green"}}, captions={"wrong_caption": 0.1})
        AugmentationSection(probs={"wrong_think": 0.2})
        EvaluationSection(conditions=["base", "wrong_caption"])
        for bad in ({"teacher_confusions": {"yellow": {}}}, {"teacher_confusions": {"compare": {"yelow": "green"}}}):
            try:
                WarmStartSection(**bad)
            except ValueError as e:
                print(" ".join(str(e).split()))
        print(sorted(m for m in sys.modules if m == "rlvlm.perturb" or m.startswith("rlvlm.data")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert "keyed by shapes family" in lines[0] and "yelow is not an option of compare questions" in lines[1]
    assert lines[-1] == "[]"


def test_the_warm_start_is_its_own_step(monkeypatch, tmp_path, caplog):
    import logging

    import rlvlm.tiny
    import rlvlm.warmstart
    from rlvlm.models import resolve_model, warm_start_model
    from rlvlm.recipe import ModelSection, WarmStartSection

    base = tmp_path / "tiny-base"
    runs = []
    monkeypatch.setattr(rlvlm.tiny, "build_tiny", lambda seed, progress: base)

    def fake_warm_start(path, section, progress=True):
        runs.append(str(path))
        return rlvlm.warmstart.warm_start_dir(Path(path), section)

    monkeypatch.setattr(rlvlm.warmstart, "warm_start", fake_warm_start)
    tiny, other, on = ModelSection(name="tiny"), ModelSection(name="org/model"), WarmStartSection()
    expected = str(rlvlm.warmstart.warm_start_dir(base, on))  # the cache key is the warm-start's, unchanged

    assert resolve_model(tiny, progress=False) == str(base) and runs == []  # resolving builds no SFT
    with caplog.at_level(logging.INFO, logger="rlvlm"):
        assert warm_start_model(tiny, str(base), on, progress=False) == expected
    assert runs == [str(base)] and any("warm-start of" in r.getMessage() for r in caplog.records)
    assert warm_start_model(tiny, str(base), WarmStartSection(enabled=False)) == str(base)
    assert warm_start_model(other, "org/model", on) == "org/model"
    assert runs == [str(base)]
    assert runs == [str(base)]
