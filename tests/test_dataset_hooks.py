"""Datasets' own reasoning and caption generators (rlvlm.data.REASONING_GENERATORS / CAPTION_GENERATORS),
called by rlvlm.perturb through the example's source, with the generic templates for a dataset without.

tests/data/perturb_prompts.json holds the eight conditions' outputs written by rlvlm.perturb before the
generators moved behind the registry (commit 86858be): the prompts must stay byte-identical.
Regenerate it (only for a deliberate change) with `python tests/test_dataset_hooks.py`.
"""

import json
from pathlib import Path

from PIL import Image

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


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(outputs(), indent=1, sort_keys=True) + "\n")
