"""Layering (issue 21): the recipe imports downward only, and the warm-start is its own step."""

import subprocess
import sys
import textwrap


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
