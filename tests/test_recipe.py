"""Recipe layering (`merge`, `base:`), the 7B recipes as a base plus what differs, the one checkpoint
completeness rule, and no private name used across modules."""

import ast
import json
from pathlib import Path

import pytest
import yaml

from rlvlm.recipe import RecipeError, build_recipe, load_recipe, merge, read_recipe
from rlvlm.train import check_run_dir, complete_checkpoints, last_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RECIPES_7B = ROOT / "recipes" / "qwen2.5-vl-7b"
# The four 7B recipes as whole files, before they were split into _base.yaml and what each changes.
FLAT_7B = Path(__file__).parent / "data" / "qwen2.5-vl-7b_flat_recipes.json"


def write(path: Path, mapping: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(mapping, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------ merge


def test_merge_sections_key_by_key_and_replaces_everything_else():
    raw = {"evaluation": {"max_new_tokens": 8, "faithfulness_kwargs": {"base_url": "u", "timeout": 5}},
           "augmentation": {"probs": {"wrong_caption": 0.1}},
           "rewards": [{"name": "accuracy"}, {"name": "format"}],
           "gradient_checkpointing_kwargs": {"use_reentrant": False, "x": 1}}
    layer = {"evaluation": {"faithfulness_kwargs": {"timeout": 60}, "batch_size": 4},
             "augmentation": {"probs": {}},  # an empty mapping clears
             "rewards": [{"name": "accuracy"}],  # a list replaces
             "gradient_checkpointing_kwargs": {"use_reentrant": True},  # not a section: replaces
             "data.train.n": 16}  # a dotted key sets that path
    assert merge(raw, layer) == {
        "evaluation": {"max_new_tokens": 8, "faithfulness_kwargs": {"base_url": "u", "timeout": 60}, "batch_size": 4},
        "augmentation": {"probs": {}},
        "rewards": [{"name": "accuracy"}],
        "gradient_checkpointing_kwargs": {"use_reentrant": True},
        "data": {"train": {"n": 16}},
    }
    assert merge({"evaluation": {"max_new_tokens": 8}}, {"evaluation": {}}) == {"evaluation": {}}


def test_merge_shares_no_object_with_its_layer():
    layer = {"evaluation": {"faithfulness_kwargs": {"timeout": 60}}, "rewards": [{"name": "accuracy"}]}
    merged = merge({}, layer)
    merge(merged, {"evaluation": {"faithfulness_kwargs": {"base_url": "u"}}})
    merged["rewards"].append({"name": "format"})
    assert layer == {"evaluation": {"faithfulness_kwargs": {"timeout": 60}}, "rewards": [{"name": "accuracy"}]}


def test_merge_errors_are_the_command_lines():
    with pytest.raises(RecipeError, match="Did you mean 'evaluation'"):
        merge({}, {"evaluaton.max_new_tokens": 8})
    with pytest.raises(RecipeError, match="'rewards' is a list"):
        merge({}, {"rewards.0.weight": 2})
    with pytest.raises(RecipeError, match="'train' must be a mapping"):
        merge({"data": {"train": [{"name": "shapes"}]}}, {"data": {"train": {"n": 4}}})


# ------------------------------------------------------------------------------------ base:


def test_base_is_relative_to_the_including_file_and_chains(tmp_path):
    write(tmp_path / "common" / "root.yaml", {"name": "root", "max_steps": 7, "evaluation": {"max_new_tokens": 16},
                                              "rewards": [{"name": "accuracy"}, {"name": "format", "weight": 0.1}]})
    write(tmp_path / "common" / "mid.yaml", {"base": "root.yaml", "evaluation": {"batch_size": 4}})
    child = write(tmp_path / "runs" / "child.yaml", {"base": "../common/mid.yaml", "rewards": [{"name": "accuracy"}]})
    recipe = load_recipe(child, {"evaluation.max_new_tokens": 32})
    assert recipe.name == "root"  # inherited like any other key
    assert (recipe.evaluation.max_new_tokens, recipe.evaluation.batch_size, recipe.grpo["max_steps"]) == (32, 4, 7)
    assert [r.name for r in recipe.rewards] == ["accuracy"]
    assert "base" not in read_recipe(child) and "base" not in recipe.resolved()
    # without a name anywhere in the chain, each file is named after itself
    write(tmp_path / "common" / "root.yaml", {"max_steps": 7})
    assert load_recipe(child).name == "child" and load_recipe(child).grpo["output_dir"] == str(Path("runs") / "child")


def test_base_cycles_and_missing_bases_are_errors_naming_the_files(tmp_path):
    (tmp_path / "sub").mkdir()
    a = write(tmp_path / "a.yaml", {"base": "b.yaml"})
    write(tmp_path / "b.yaml", {"base": "sub/../a.yaml"})  # the same file by another path
    with pytest.raises(RecipeError, match=r"inherits from itself.*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_recipe(a)
    me = write(tmp_path / "me.yaml", {"base": "me.yaml"})
    with pytest.raises(RecipeError, match="inherits from itself"):
        load_recipe(me)
    lost = write(tmp_path / "lost.yaml", {"base": "nowhere.yaml"})
    with pytest.raises(RecipeError, match=r"base recipe 'nowhere.yaml' of recipe '.*lost.yaml' does not exist"):
        load_recipe(lost)
    with pytest.raises(RecipeError, match="must be a recipe path"):
        load_recipe(write(tmp_path / "bad.yaml", {"base": ["a.yaml"]}))
    with pytest.raises(RecipeError, match="Unknown key 'base'"):
        build_recipe({"base": "a.yaml"})  # a mapping has no file to be relative to


def test_rlvlm_train_reports_a_cycle_with_exit_2(tmp_path, capsys):
    from rlvlm.cli import main

    a = write(tmp_path / "a.yaml", {"base": "a.yaml"})
    assert main(["train", str(a)]) == 2
    assert "inherits from itself" in capsys.readouterr().err


def test_a_sweep_over_a_recipe_with_a_base(tmp_path):
    from rlvlm.sweep import expand, load_sweep

    write(tmp_path / "base.yaml", {"warm_start": {"enabled": False}, "evaluation": {"max_new_tokens": 8, "batch_size": 2}})
    write(tmp_path / "recipe.yaml", {"base": "base.yaml", "evaluation": {"batch_size": 4}})
    sweep = write(tmp_path / "sweep.yaml", {"base": "recipe.yaml", "seeds": [0], "overrides": {"evaluation": {"max_new_tokens": 16}},
                                            "configs": {"a": {}, "b": {"evaluation": {}}}})
    a, b = expand(load_sweep(sweep), sweep, tmp_path / "out", {})
    assert (a.recipe.evaluation.max_new_tokens, a.recipe.evaluation.batch_size, a.recipe.warm_start.enabled) == (16, 4, False)
    assert (b.recipe.evaluation.max_new_tokens, b.recipe.evaluation.batch_size) == (64, 64)  # {} cleared the section


# ------------------------------------------------------------------------------------ the 7B recipes


@pytest.mark.parametrize("name", ["baseline", "faithful", "augment", "augment_faithful"])
def test_7b_recipe_is_what_it_was_as_a_whole_file(name):
    """Each 7B recipe, _base.yaml plus its own keys, is exactly the whole file it replaced (as resolved by
    today's code, so a new default changes both sides alike). After changing a 7B recipe on purpose,
    write the new whole files into the JSON: {stem: read_recipe(path) for each of the four}."""
    flat = json.loads(FLAT_7B.read_text())[name]
    path = RECIPES_7B / f"{name}.yaml"
    assert read_recipe(path) == flat
    assert load_recipe(path, {}).resolved() == build_recipe(flat, path).resolved()
    assert yaml.safe_load(path.read_text())["base"] == "_base.yaml"


def test_the_7b_base_is_a_recipe_of_its_own():
    """recipes/**/*.yaml is globbed (rlvlm eval --plan on every recipe): _base.yaml must load alone."""
    recipe = load_recipe(RECIPES_7B / "_base.yaml")
    assert recipe.name == "_base" and recipe.model.name == "Qwen/Qwen2.5-VL-7B-Instruct"


# ------------------------------------------------------------------------------------ checkpoints


def checkpoint(run: Path, step: int, state: str | None = '{"global_step": 0}') -> Path:
    path = run / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_text("")
    if state is not None:
        (path / "trainer_state.json").write_text(state)
    return path


def test_one_completeness_rule_for_resuming_and_following(tmp_path):
    run = tmp_path / "run"
    assert last_checkpoint(run) is None and complete_checkpoints(run) == []
    checkpoint(run, 2)
    ten = checkpoint(run, 10)
    checkpoint(run, 12, state='{"global_st')  # being written
    checkpoint(run, 14, state=None)  # cut off before its trainer_state.json
    (run / "checkpoint-last").mkdir()
    assert [step for step, _, _ in complete_checkpoints(run)] == [2, 10]
    assert last_checkpoint(run) == ten
    recipe = build_recipe({"output_dir": str(run), "resume_from_checkpoint": True})
    assert check_run_dir(recipe) == str(ten)
    with pytest.raises(RecipeError, match="no complete checkpoint"):
        check_run_dir(build_recipe({"output_dir": str(tmp_path / "empty"), "resume_from_checkpoint": True}))


def test_the_follower_and_the_sweep_use_the_same_rule():
    import rlvlm.evaluation.follow as follow
    import rlvlm.sweep as sweep

    assert follow.complete_checkpoints is complete_checkpoints and sweep.last_checkpoint is last_checkpoint


# ------------------------------------------------------------------------------------ private names


def test_no_private_name_is_used_across_modules():
    """A helper one module takes from another is public (with a docstring), not `_name`."""
    ours = ("rlvlm", "rewards")
    found = []
    for path in sorted(p for pkg in ours for p in (ROOT / pkg).rglob("*.py")):
        tree = ast.parse(path.read_text())
        modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(ours)):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module} import {alias.name}")
                    else:
                        modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                modules |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith(ours)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, (ast.Name, ast.Attribute))
                    and ast.unparse(node.value).split(".")[0] in modules):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert not found, found


# ------------------------------------------------------------------------------------ packaging


def test_every_package_and_the_recipes_ship():
    """pyproject.toml lists the packages (so that recipes/ can ship as rlvlm/recipes): none is left out."""
    tomllib = pytest.importorskip("tomllib")
    from setuptools import find_packages

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = find_packages(str(ROOT), include=["rlvlm", "rlvlm.*", "rewards", "rewards.*"])
    assert sorted(setup["packages"]) == sorted([*found, "rlvlm.recipes"])
    assert setup["package-dir"] == {"rlvlm.recipes": "recipes"}
    patterns = setup["package-data"]["rlvlm.recipes"]
    shipped = {p.relative_to(ROOT / "recipes") for pattern in patterns for p in (ROOT / "recipes").glob(pattern)}
    assert shipped == {p.relative_to(ROOT / "recipes") for p in (ROOT / "recipes").rglob("*.yaml")}


def test_the_bench_reads_the_recipes_folder():
    import rlvlm.bench as bench

    assert bench.RECIPE == ROOT / "recipes" / "tiny-shapes.yaml"
    assert bench.RECIPE_7B == ROOT / "recipes" / "qwen2.5-vl-7b" / "baseline.yaml"
    assert bench.shipped_recipe("nowhere.yaml") == ROOT / "rlvlm" / "recipes" / "nowhere.yaml"  # an installed rlvlm's copy
