"""The embedded "shapes" benchmark: determinism, splits, balance, answers,
and the truth of generated reasoning and captions."""

from collections import Counter

import pytest
from PIL import Image

from rlvlm.data import shapes

import shapes_oracles  # tests/shapes_oracles.py: the independent scene-graph oracles

N = 400


@pytest.fixture(scope="module")
def train():
    return shapes.generate_examples("train", N, seed=0)


def _strip(ex):
    return {k: v for k, v in ex.items() if k != "image"}


def test_canonical_fields(train):
    ex = train[0]
    assert ex["id"] == "shapes-train-0000000"
    assert isinstance(ex["image"], Image.Image) and ex["image"].mode == "RGB"
    assert ex["image"].size == (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)
    assert ex["source"] == "shapes"
    assert len(ex["options"]) == 4 and all(isinstance(o, str) for o in ex["options"])
    assert len(set(ex["options"])) == 4
    assert ex["answer"] in "ABCD"
    assert ex["scene"]["grid"] == shapes.GRID
    assert len({e["id"] for e in train}) == N
    for e in train:
        objs = e["scene"]["objects"]
        assert 3 <= len(objs) <= 6
        assert len({(o["row"], o["col"]) for o in objs}) == len(objs)
        assert all(o["color"] in shapes.COLORS and o["shape"] in shapes.SHAPES for o in objs)


def test_deterministic(train):
    again = shapes.generate_examples("train", N, seed=0)
    assert [_strip(e) for e in again] == [_strip(e) for e in train]
    assert all(a["image"].tobytes() == b["image"].tobytes() for a, b in zip(again[:50], train[:50]))
    other = shapes.generate_examples("train", 50, seed=1)
    assert [_strip(e)["scene"] for e in other] != [_strip(e)["scene"] for e in train[:50]]


def test_prefix_property(train):
    assert [_strip(e) for e in shapes.generate_examples("train", 37)] == [_strip(e) for e in train[:37]]


def test_render_is_pure(train):
    ex = train[5]
    assert shapes.render(ex["scene"]).tobytes() == ex["image"].tobytes()
    assert shapes.render(ex["scene"], image_size=224).size == (224, 224)


def test_splits_disjoint(train):
    def keys(exs):  # a pair's identity: the question and the scene's objects, in any order
        return {(e["question"], e["scene"]["grid"], frozenset(tuple(sorted(o.items())) for o in e["scene"]["objects"]))
                for e in exs}

    for split in shapes.SPLITS:  # the split that owns a pair is the split that generated it
        assert {shapes.split_of(e["scene"], e["question"]) for e in shapes.generate_examples(split, 100)} == {split}

    tr = keys(train) | keys(shapes.generate_examples("train", 300, seed=7))
    ev = keys(shapes.generate_examples("eval", 300)) | keys(shapes.generate_examples("eval", 300, seed=7))
    te = keys(shapes.generate_examples("test", 300))
    assert not tr & ev and not tr & te and not ev & te
    with pytest.raises(ValueError):
        shapes.generate_examples("validation", 1)


def test_balance(train):
    letters = Counter(e["answer"] for e in train)
    assert set(letters) == set("ABCD")
    assert all(0.2 <= letters[k] / N <= 0.3 for k in "ABCD"), letters
    families = Counter(e["family"] for e in train)
    assert set(families) == set(shapes.FAMILIES)
    assert all(0.2 <= families[f] / N <= 0.3 for f in shapes.FAMILIES), families
    # the gold count itself varies in the count family
    golds = Counter(e["options"][ord(e["answer"]) - 65] for e in train if e["family"] == "count")
    assert len(golds) >= 4, golds


def test_answers_recheck_from_pixels(train):
    for ex in train:
        assert shapes_oracles.scene_from_image(ex["image"]) == ex["scene"], ex["id"]
        assert shapes_oracles.check_answer(ex) == ex["answer"], ex["id"]
        assert shapes_oracles.check_answer(ex, from_pixels=False) == ex["answer"], ex["id"]


@pytest.mark.parametrize("size", [84, 224])
def test_answers_recheck_other_sizes(size):
    for ex in shapes.generate_examples("eval", 48, seed=2, image_size=size):
        assert ex["image"].size == (size, size)
        assert shapes_oracles.check_answer(ex) == ex["answer"], ex["id"]


def test_cot_and_caption_truth(train):
    for ex in train[:160]:
        for letter in "ABCD":
            gold = letter == ex["answer"]
            for seed in (0, 1):
                cot = shapes.cot_for(ex, letter, seed=seed)
                text = ex["options"][ord(letter) - 65]
                assert cot.endswith(f"So the answer is ({letter}) {text}.")
                assert "<" not in cot
                assert len(cot.split()) <= 34, cot  # fits the embedded default's 64 completion tokens (<= 47 measured)
                assert shapes_oracles.statement_is_true(ex, cot) is gold, cot
                # the facts themselves (not only the conclusion) are true / false
                assert shapes_oracles.statement_is_true(ex, cot, include_conclusion=False) is gold, cot
                cap = shapes.caption_for(ex, letter, seed=seed)
                assert cap.endswith(".") and cap.count(".") == 1
                assert shapes_oracles.statement_is_true(ex, cap) is gold, cap


def test_phrasings_vary_with_seed(train):
    ex = train[0]
    assert shapes.cot_for(ex, "A", seed=0) != shapes.cot_for(ex, "A", seed=1)
    assert shapes.caption_for(ex, "A", seed=0) != shapes.caption_for(ex, "A", seed=1)
    assert shapes.cot_for(ex, "A", seed=2) == shapes.cot_for(ex, "A", seed=0)


def test_statement_checks_are_strict(train):
    ex = next(e for e in train if e["family"] == "count")
    with pytest.raises(ValueError):
        shapes_oracles.statement_is_true(ex, "Nothing checkable here.")
    with pytest.raises(ValueError):
        shapes.cot_for(ex, "E")


def test_generation_draws_few_scenes_per_example(monkeypatch):
    """Rejection sampling keeps the pairs a split owns (train owns 3 in 5): about 5/3 scenes drawn per
    train example, 5 per eval or test example, never a runaway loop."""
    calls = []
    owner = shapes.split_of
    monkeypatch.setattr(shapes, "split_of", lambda scene, question: calls.append(1) or owner(scene, question))
    for split, bound in (("train", 2.0), ("eval", 6.5), ("test", 6.5)):
        calls.clear()
        assert len(shapes.generate_examples(split, 800, seed=11)) == 800
        assert len(calls) < bound * 800, (split, len(calls) / 800)


def test_options_in_natural_order_with_gold_at_drawn_letter():
    """Options keep one fixed order per family; the scene is built so the gold sits at the drawn letter."""
    orders = {tuple(shapes.COUNT_OPTIONS), tuple(shapes.COLORS), tuple(shapes.SHAPES), tuple(shapes.RELATIONS)}
    for i, ex in enumerate(shapes.generate_examples("train", 64)):
        assert tuple(ex["options"]) in orders
        assert ex["answer"] == shapes.LETTERS[(i // 4) % 4]


def test_implied_option_reads_the_facts_of_every_reasoning_template():
    """The option a reasoning's facts imply is the one it was written toward, for every family, every
    option and both wordings: the measure reads what the templates state."""
    for ex in shapes.generate_examples("eval", 64, seed=5):
        for k in range(len(ex["options"])):
            for seed in (0, 1):
                cot = shapes.cot_for(ex, "ABCD"[k], seed=seed)
                assert shapes.implied_option(ex["question"], ex["options"], cot) == k, cot


def test_implied_option_ignores_the_stated_conclusion_and_refuses_to_guess():
    q, opts = "How many red objects are there?", ["0", "1", "2", "3"]
    drifted = "Objects by colour: blue objects 1, red objects 3. There are 3 red objects. So the answer is (B) 1."
    assert shapes.implied_option(q, opts, drifted) == 3  # the tally says 3, whatever the conclusion says
    assert shapes.implied_option(q, opts, "So the answer is (B) 1.") is None  # no facts
    assert shapes.implied_option(q, opts, "Objects by colour: red objects 3, red objects 2.") is None  # ambiguous
    assert shapes.implied_option(q, opts, "Objects by colour: red objects 7.") is None  # not an option
    extreme = "Which colour has the most objects?"
    tie = "Counting by colour: red 2, green 2, blue 0, yellow 1. Red has the most."
    assert shapes.implied_option(extreme, ["red", "green", "blue", "yellow"], tie) is None
    where = "Where is the red circle relative to the blue square?"
    cells = "Rows: red circle 1, blue square 1. Columns: red circle 3, blue square 1. The red circle is left of the blue square."
    assert shapes.implied_option(where, ["left of", "right of", "above", "below"], cells) == 1  # column 3 is right of 1
