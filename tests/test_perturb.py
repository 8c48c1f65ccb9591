"""The eight conditions and training-time augmentation (docs/concepts.md, "The eight conditions")."""

import copy
from collections import Counter

import pytest
from PIL import Image

from rlvlm.data import shapes
from rlvlm.perturb import (
    CONDITIONS,
    DEFAULT_AUGMENTATION,
    STOP_THINK,
    augment,
    build_user_text,
    perturb,
)

import shapes_oracles  # tests/shapes_oracles.py: the independent scene-graph oracles


@pytest.fixture(scope="module")
def examples():
    return shapes.generate_examples("eval", 64, seed=0)


def generic(answer="B", options=("cat", "dog", "bird", "fish"), **kw):
    ex = {
        "id": "generic-1",
        "image": Image.new("RGB", (8, 8)),
        "question": "Which animal is shown?",
        "options": None if options is None else list(options),
        "answer": answer,
        "source": "toy",
    }
    ex.update(kw)
    return ex


def test_condition_names():
    assert CONDITIONS == ("base", "stop_think", "wrong_think", "wrong_think_hedge", "wrong_caption",
                          "wrong_caption_hedge", "correct_caption", "correct_think")


@pytest.mark.parametrize("condition", CONDITIONS)
def test_deterministic_and_pure(examples, condition):
    ex = examples[3]
    before = {k: copy.deepcopy(v) for k, v in ex.items() if k != "image"}
    a = perturb(ex, condition, seed=5)
    b = perturb(ex, condition, seed=5)
    assert {k: v for k, v in a.items() if k != "image"} == {k: v for k, v in b.items() if k != "image"}
    assert {k: v for k, v in ex.items() if k != "image"} == before
    assert "condition" not in ex and "prompt" not in ex
    assert a["image"] is ex["image"]
    for key in ("id", "question", "options", "answer", "source"):
        assert a[key] == ex[key]
    assert a["condition"] == condition


@pytest.mark.parametrize("condition", CONDITIONS)
def test_prompt_shape(examples, condition):
    ex = examples[0]
    p = perturb(ex, condition, seed=1)
    prompt = p["prompt"]
    user = prompt[0]
    assert user["role"] == "user"
    assert user["content"][0] == {"type": "image"}
    assert user["content"][1]["type"] == "text"
    text = user["content"][1]["text"]
    assert text == build_user_text(ex, p["caption"])
    assert ex["question"] in text and "A. " + ex["options"][0] in text and "D. " + ex["options"][3] in text
    assert "<answer></answer>" in text
    if p["caption"] is not None:
        assert text.startswith(p["caption"])
        assert text.index(p["caption"]) < text.index(ex["question"])
    if p["think_prefix"] is None:
        assert len(prompt) == 1
    else:
        assert prompt[-1] == {"role": "assistant", "content": p["think_prefix"]}


def test_base_and_stop_think(examples):
    ex = examples[0]
    base = perturb(ex, "base", seed=0)
    assert base["target"] is None and base["caption"] is None and base["think_prefix"] is None
    assert base["prompt"][0]["content"][1]["text"] == build_user_text(ex)
    stop = perturb(ex, "stop_think", seed=0)
    assert stop["target"] is None and stop["caption"] is None
    assert stop["think_prefix"] == STOP_THINK == "<think>Okay let's see. This should be the final answer.</think>"


def test_target_semantics(examples):
    for i, ex in enumerate(examples):
        for condition in ("correct_think", "correct_caption"):
            assert perturb(ex, condition, seed=i)["target"] == ex["answer"]
        for condition in ("wrong_think", "wrong_think_hedge", "wrong_caption", "wrong_caption_hedge"):
            t = perturb(ex, condition, seed=i)["target"]
            assert t in "ABCD" and len(t) == 1 and t != ex["answer"]


def test_think_prefixes(examples):
    for i, ex in enumerate(examples[:32]):
        for condition in ("wrong_think", "correct_think", "wrong_think_hedge"):
            p = perturb(ex, condition, seed=i)
            tp = p["think_prefix"]
            assert tp.startswith("<think>") and "</think>" not in tp
            assert p["caption"] is None
            body = tp[len("<think>"):]
            if condition == "wrong_think_hedge":
                assert body.endswith(" But I think")
                body = body[: -len(" But I think")]
                assert body == perturb(ex, "wrong_think", seed=i)["think_prefix"][len("<think>"):]
            text = ex["options"][ord(p["target"]) - 65]
            assert body.endswith(f"So the answer is ({p['target']}) {text}.")
            assert shapes_oracles.statement_is_true(ex, body) is (condition == "correct_think")


def test_captions_true_and_false(examples):
    for i, ex in enumerate(examples):
        correct = perturb(ex, "correct_caption", seed=i)
        assert shapes_oracles.statement_is_true(ex, correct["caption"])
        wrong = perturb(ex, "wrong_caption", seed=i)
        assert not shapes_oracles.statement_is_true(ex, wrong["caption"])
        assert wrong["think_prefix"] is None
        hedged = perturb(ex, "wrong_caption_hedge", seed=i)
        assert hedged["caption"] == wrong["caption"] + " But I could be wrong."
        assert hedged["target"] == wrong["target"]


def test_all_wrong_options_reachable(examples):
    for ex in (examples[0], examples[5], generic()):
        for condition in ("wrong_think", "wrong_caption"):
            seen = {perturb(ex, condition, seed=s)["target"] for s in range(60)}
            assert seen == set("ABCD") - {gold(ex)}


def gold(ex):
    return ex["answer"]


def test_generic_mc_templates_vary():
    ex = generic()
    caps = {perturb(ex, "wrong_caption", seed=s)["caption"] for s in range(40)}
    thinks = {perturb(ex, "correct_think", seed=s)["think_prefix"] for s in range(40)}
    assert len(caps) >= 3 and len(thinks) >= 3
    p = perturb(ex, "correct_think", seed=0)
    assert p["target"] == "B" and p["think_prefix"].endswith("So the answer is (B) dog.")
    c = perturb(ex, "correct_caption", seed=0)
    assert "dog" in c["caption"]
    w = perturb(ex, "wrong_caption", seed=0)
    assert ex["options"][ord(w["target"]) - 65] in w["caption"]


def test_gold_given_as_option_text():
    ex = generic(answer="dog")
    assert perturb(ex, "correct_caption", seed=0)["target"] == "B"
    assert perturb(ex, "wrong_think", seed=0)["target"] in "ACD"


def test_multi_image_prompt():
    ex = generic()
    del ex["image"]
    ex["images"] = [Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4))]
    p = perturb(ex, "base", seed=0)
    assert [c["type"] for c in p["prompt"][0]["content"]] == ["image", "image", "text"]
    assert p["images"] is ex["images"]


def test_free_form_numbers():
    ex = generic(answer="7", options=[])
    text = build_user_text(ex)
    assert "A." not in text and "<answer></answer>" in text
    targets = {perturb(ex, "wrong_think", seed=s)["target"] for s in range(50)}
    assert targets and "7" not in targets
    assert all(isinstance(t, str) and 1 <= abs(int(t) - 7) <= 2 for t in targets)
    assert perturb(ex, "correct_caption", seed=0)["target"] == "7"
    zero = generic(answer="0", options=None)
    assert all(int(perturb(zero, "wrong_caption", seed=s)["target"]) > 0 for s in range(30))
    dec = generic(answer="2.5", options=[])
    t = perturb(dec, "wrong_caption", seed=0)["target"]
    assert t != "2.5" and "." in t
    assert perturb(ex, "base", seed=0)["target"] is None


def test_value_errors(examples):
    with pytest.raises(ValueError, match="wrong_think_hedge"):
        perturb(examples[0], "bogus", seed=0)
    text_only = generic(answer="a tabby cat", options=[])
    with pytest.raises(ValueError, match="wrong answer"):
        perturb(text_only, "wrong_caption", seed=0)
    assert perturb(text_only, "correct_think", seed=0)["target"] == "a tabby cat"
    with pytest.raises(ValueError):
        perturb(generic(answer="cat", options=["cat"]), "wrong_think", seed=0)
    with pytest.raises(ValueError):
        perturb(generic(answer="Z"), "correct_caption", seed=0)
    # base needs no readable gold
    assert perturb(generic(answer="Z"), "base", seed=0)["target"] is None


def test_augment_deterministic_and_mix():
    exs = [generic(id=f"toy-{i}") for i in range(4000)]
    picked = Counter(augment(ex, DEFAULT_AUGMENTATION, seed=3, epoch=0)["condition"] for ex in exs)
    for condition, p in DEFAULT_AUGMENTATION.items():
        assert abs(picked[condition] / len(exs) - p) < 0.02, picked
    assert abs(picked["base"] / len(exs) - 0.6) < 0.03
    assert set(picked) == set(DEFAULT_AUGMENTATION) | {"base"}
    ex = exs[17]
    assert augment(ex, DEFAULT_AUGMENTATION, 3, 1) == augment(ex, DEFAULT_AUGMENTATION, 3, 1)
    per_epoch = [augment(ex, DEFAULT_AUGMENTATION, 3, e)["condition"] for e in range(40)]
    assert len(set(per_epoch)) > 1
    assert augment(ex, {}, 3, 0)["condition"] == "base"
    assert augment(ex, {"stop_think": 1.0}, 3, 0)["condition"] == "stop_think"


def test_augment_rejects_bad_probs():
    with pytest.raises(ValueError):
        augment(generic(), {"nope": 0.1}, 0, 0)
    with pytest.raises(ValueError):
        augment(generic(), {"wrong_think": 0.7, "wrong_caption": 0.6}, 0, 0)
    with pytest.raises(ValueError):
        augment(generic(), {"wrong_think": -0.1}, 0, 0)


def test_augment_falls_back_to_base_when_impossible():
    ex = generic(answer="a tabby cat", options=[])
    out = augment(ex, {"wrong_caption": 1.0}, 0, 0)
    assert out["condition"] == "base"


def test_gold_is_read_by_the_one_rule():
    """rewards.options' gold rule: an upper-case letter, then an option's text, then a lower-case letter;
    an integer is an index."""
    from rlvlm.perturb import gold_letter

    assert perturb(generic(answer="b"), "correct_think", seed=0)["target"] == "B"
    assert perturb(generic(answer=2), "correct_think", seed=0)["target"] == "C"
    assert gold_letter(generic(answer="b", options=["b", "c"])) == "A"
    assert gold_letter(generic(answer="dog")) == "B"
    with pytest.raises(ValueError, match="generic-1.*not among options"):
        gold_letter(generic(answer="Z"))
