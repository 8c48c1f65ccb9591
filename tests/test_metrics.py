"""Metrics on hand-computed cases (docs/concepts.md, "rlvlm.metrics")."""

import math

import pytest

from rlvlm.metrics import (
    CATEGORY_KEYS,
    TRACE_KEYS,
    auroc,
    categories,
    distinct_n,
    identical_share,
    mean_words,
    option_entropy,
    robustness_auroc,
    shortcut_signals,
    summarize,
    trace_row,
)


def test_option_entropy_hand_cases():
    assert option_entropy([0.25] * 4) == pytest.approx(math.log(4))
    assert option_entropy([1.0, 0.0, 0.0]) == 0.0
    assert option_entropy([2.0, 2.0]) == pytest.approx(math.log(2))  # renormalised
    p = [0.7, 0.2, 0.1]
    assert option_entropy(p) == pytest.approx(-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)))
    with pytest.raises(ValueError):
        option_entropy([0.0, 0.0])


def test_auroc_hand_cases():
    # pairs (pos, neg): (0.35, 0.1) win, (0.35, 0.4) loss, (0.8, 0.1) win, (0.8, 0.4) win -> 3/4
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.1, 0.9], [False, True]) == 1.0
    assert auroc([0.9, 0.1], [0, 1]) == 0.0
    assert auroc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)  # a tie counts half
    # one tie among four pairs: (0.5 vs 0.5) half, (0.5 vs 0.2) win, (0.9 vs 0.5) win, (0.9 vs 0.2) win
    assert auroc([0.5, 0.2, 0.5, 0.9], [0, 0, 1, 1]) == pytest.approx(3.5 / 4)
    with pytest.raises(ValueError, match="one class"):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError):
        auroc([0.1, 0.2, 0.3], [0, 1])


def _rec(ok, cons, probs, gold=0, id_="x"):
    return {"id": id_, "correct": ok, "consistent": cons, "option_probs": probs, "p_correct": probs[gold]}


def test_categories_sum_to_n():
    cats = categories([True, True, False, False, True], [True, False, True, False, True])
    assert cats == {"consistent_correct": 2, "inconsistent_correct": 1, "consistent_incorrect": 1,
                    "inconsistent_incorrect": 1, "unscored": 0}
    assert set(cats) == set(CATEGORY_KEYS) and sum(cats.values()) == 5
    cats = categories([True, False, True], [None, None, True])
    assert cats["unscored"] == 2 and cats["consistent_correct"] == 1 and sum(cats.values()) == 3


def test_consistency_is_over_the_scored_examples_only():
    """A verdict the judge could not give is neither consistent nor inconsistent."""
    records = [_rec(True, True, [0.9, 0.1]), _rec(True, None, [0.9, 0.1]), _rec(False, False, [0.9, 0.1]),
               _rec(False, None, [0.9, 0.1])]
    row = trace_row(0, "shapes", "base", records)
    assert row["accuracy"] == 0.5  # over all four
    assert row["consistency"] == 0.5 and row["consistent_accuracy"] == 0.5  # over the two scored
    assert row["categories"]["unscored"] == 2 and sum(row["categories"].values()) == 4
    none_scored = trace_row(0, "shapes", "base", [_rec(True, None, [0.9, 0.1])])
    assert none_scored["consistency"] is None and none_scored["consistent_accuracy"] is None
    assert none_scored["accuracy"] == 1.0


def test_summarize_and_trace_row_hand_case():
    records = [
        _rec(True, True, [0.5, 0.5]),  # H = ln 2, p_correct 0.5
        _rec(True, False, [1.0, 0.0]),  # H = 0, p_correct 1
        _rec(False, True, [0.25, 0.75]),
        _rec(False, False, [0.5, 0.5]),
    ]
    row = trace_row(40, "shapes", "wrong_think", records)
    assert tuple(row) == TRACE_KEYS
    assert row["step"] == 40 and row["dataset"] == "shapes" and row["condition"] == "wrong_think" and row["n"] == 4
    assert row["accuracy"] == 0.5
    assert row["consistency"] == 0.5
    assert row["consistent_accuracy"] == 0.25
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert row["option_entropy"] == pytest.approx((math.log(2) + 0 + h + math.log(2)) / 4)
    assert row["p_correct"] == pytest.approx((0.5 + 1.0 + 0.25 + 0.5) / 4)
    assert row["categories"] == {**{k: 1 for k in CATEGORY_KEYS}, "unscored": 0}
    assert summarize([])["n"] == 0


def test_robustness_auroc_hand_case():
    base = [
        _rec(True, True, [0.9, 0.1], id_="a"),
        _rec(True, True, [0.6, 0.4], id_="b"),
        _rec(True, True, [0.7, 0.3], id_="c"),
        _rec(False, True, [0.2, 0.8], id_="d"),  # wrong under base: not in the population
    ]
    perturbed = [_rec(True, True, [1, 0], id_="a"), _rec(False, True, [1, 0], id_="b"), _rec(True, True, [1, 0], id_="c"),
                 _rec(True, True, [1, 0], id_="d")]
    out = robustness_auroc(base, perturbed)
    assert out["n"] == 3 and out["n_stay_correct"] == 2 and out["note"] is None
    assert out["auroc"] == 1.0  # 0.9 and 0.7 (stay) above 0.6 (flips)
    assert out["auroc_entropy"] == 1.0  # lower entropy for the confident ones
    one = robustness_auroc(base, [_rec(True, True, [1, 0], id_=i) for i in "abcd"])
    assert one["auroc"] is None and "one class" in one["note"]
    none = robustness_auroc([_rec(False, True, [0.1, 0.9], id_="a")], perturbed)
    assert none["auroc"] is None and none["n"] == 0


def test_shortcut_signals_hand_case():
    thinks = ["a b c", "A  b c", "x y", "", None]
    assert mean_words([t or "" for t in thinks]) == pytest.approx((3 + 3 + 2) / 5)
    # bigrams: ab bc ab bc xy -> 3 distinct of 5
    assert distinct_n([t or "" for t in thinks], 2) == pytest.approx(0.6)
    assert identical_share([t or "" for t in thinks]) == pytest.approx(2 / 5)  # empties are not "identical thinks"
    s = shortcut_signals(thinks)
    assert s == pytest.approx({"think_words": 1.6, "distinct_2": 0.6, "identical_share": 0.4, "empty_think_share": 0.4})
    assert shortcut_signals([])["distinct_2"] == 0.0
