"""Datasets' own reasoning and caption generators (rlvlm.data.REASONING_GENERATORS / CAPTION_GENERATORS),
called by rlvlm.perturb through the example's source, with the generic templates for a dataset without.

tests/data/perturb_prompts.json holds the eight conditions' outputs written by rlvlm.perturb before the
generators moved behind the registry (commit 86858be): the prompts must stay byte-identical.
Regenerate it (only for a deliberate change) with `python tests/test_dataset_hooks.py`.
"""

import json
from pathlib import Path

import pytest
from PIL import Image

import rlvlm.data
from rlvlm.data import shapes
from rlvlm.perturb import CONDITIONS, perturb

GOLDEN = Path(__file__).parent / "data" / "perturb_prompts.json"
SEEDS = (0, 1, 7)


def golden_examples() -> list[dict]:
    """Fixed inputs: shapes examples of every family, and examples of datasets without generators
    (multiple choice, numeric and yes/no free form, a shapes-sourced row without a scene graph)."""
    image = Image.new("RGB", (8, 8))
    exs = shapes.generate_examples("eval", 8, seed=0) + shapes.generate_examples("test", 4, seed=3)
    exs += [
        {"id": "toy-mc", "image": image, "question": "Which animal is shown?",
         "options": ["cat", "dog", "bird", "fish"], "answer": "B", "source": "toy"},
        {"id": "toy-num", "image": image, "question": "How many apples?", "options": None,
         "answer": "12.5", "source": "toy"},
        {"id": "toy-yes", "images": [image, image], "question": "Are they the same?", "options": [],
         "answer": "Yes", "source": "other"},
        {"id": "shapes-no-scene", "image": image, "question": "What colour is the circle?",
         "options": ["red", "green", "blue", "yellow"], "answer": "C", "source": "shapes"},
        {"id": "no-source", "question": "Pick one.", "options": ["x", "y"], "answer": "A"},
    ]
    return exs


def outputs() -> dict[str, dict]:
    out = {}
    for ex in golden_examples():
        for condition in CONDITIONS:
            for seed in SEEDS:
                got = perturb(ex, condition, seed)
                out[f"{ex['id']}|{condition}|{seed}"] = {
                    k: got[k] for k in ("condition", "target", "caption", "think_prefix", "prompt")}
    return out


def test_eight_conditions_give_the_same_prompts_as_before():
    expected = json.loads(GOLDEN.read_text())
    got = json.loads(json.dumps(outputs()))
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == expected[key], key


CALLS = []


def _reasoning(example, target, seed):
    CALLS.append(("reasoning", example["id"], target, seed))
    return f"My own reasoning toward {target}."


def _caption(example, target, seed):
    CALLS.append(("caption", example["id"], target, seed))
    return None if example["id"] == "mine-2" else f"My own caption toward {target}."


def test_a_registered_dataset_gets_its_own_generators(monkeypatch):
    monkeypatch.setitem(rlvlm.data.REASONING_GENERATORS, "mine", _reasoning)  # the function itself
    monkeypatch.setitem(rlvlm.data.CAPTION_GENERATORS, "mine", f"{__name__}:_caption")  # or module:function
    CALLS.clear()
    ex = {"id": "mine-1", "question": "Which?", "options": ["a", "b", "c"], "answer": "A", "source": "mine"}
    assert perturb(ex, "correct_think", 5)["think_prefix"] == "<think>My own reasoning toward A."
    wrong = perturb(ex, "wrong_think_hedge", 5)
    assert wrong["target"] != "A"
    assert wrong["think_prefix"] == f"<think>My own reasoning toward {wrong['target']}. But I think"
    assert perturb(ex, "correct_caption", 5)["caption"] == "My own caption toward A."
    assert perturb(ex, "wrong_caption", 5)["caption"] == f"My own caption toward {wrong['target']}."
    assert CALLS == [("reasoning", "mine-1", "A", 5), ("reasoning", "mine-1", wrong["target"], 5),
                     ("caption", "mine-1", "A", 5), ("caption", "mine-1", wrong["target"], 5)]
    # None: no caption of the dataset's own for this example, so the generic template's
    other = dict(ex, id="mine-2")
    assert perturb(other, "correct_caption", 5)["caption"] == perturb(dict(other, source="toy"), "correct_caption", 5)["caption"]
    CALLS.clear()
    perturb(ex, "base", 5), perturb(ex, "stop_think", 5)
    assert CALLS == []  # the conditions without a target call no generator


@pytest.mark.parametrize("source", [None, "", "toy"])
def test_no_generators_for_an_unregistered_source(source):
    assert rlvlm.data.reasoning_generator(source) is None and rlvlm.data.caption_generator(source) is None
    assert rlvlm.data.reasoning_generator("shapes") is shapes.reasoning_toward


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(outputs(), indent=1, sort_keys=True) + "\n")
