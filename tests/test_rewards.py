"""Rule-based rewards: accuracy, format, consistency and the shared parser."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rewards import REWARDS
from rewards.accuracy import accuracy_reward
from rewards.faithfulness import consistency_reward
from rewards.format import format_reward
from rewards.parsing import resolve_option, split_response, think_conclusion

OPTS = ["red", "blue", "green", "yellow"]


def acc(text, gold="B", options=OPTS, prefix=None):
    return accuracy_reward([text], answer=[gold], options=[options], think_prefix=None if prefix is None else [prefix])[0]


def fmt(text, prefix=None):
    return format_reward([text], think_prefix=None if prefix is None else [prefix])[0]


def cons(text, options=OPTS, prefix=None):
    return consistency_reward([text], options=[options], think_prefix=None if prefix is None else [prefix])[0]


def resp(think, answer):
    return f"<think>{think}</think><answer>{answer}</answer>"


# ------------------------------------------------------------------ registry


def test_registry():
    assert REWARDS == {"accuracy": accuracy_reward, "format": format_reward, "consistency": consistency_reward}


def test_import_pulls_no_torch():
    code = "import sys, rewards, rewards.parsing; assert 'torch' not in sys.modules; assert 'math_verify' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ accuracy


@pytest.mark.parametrize(
    "answer",
    ["B", "(B)", "B.", "B)", "B:", "B: blue", "B. blue", "B) blue", "(B) blue", "blue", "  BLUE ", "Blue.", "**B**",
     "B:  Blue"],
)
def test_accuracy_accepts_decorated_letters_and_text(answer):
    assert acc(resp("The answer is B.", answer)) == 1.0


@pytest.mark.parametrize(
    "answer",
    ["A", "A B C D", "A or B", "B or A", "A, B", "B/C", "B: red", "A. blue", "b", "", "  ", "Because", "Blue or red",
     "E", "The colour is blue and red", "B blue red", "AB"],
)
def test_accuracy_rejects_wrong_or_ambiguous(answer):
    assert acc(resp("x", answer)) == 0.0


@pytest.mark.parametrize(
    "text",
    [
        "<think>x</think><answer>B</answer><answer>B</answer>",  # several answer blocks
        "<think>x</think><answer>A</answer><answer>B</answer>",
        "<think>x</think><ANSWER>A</ANSWER><answer>B</answer>",  # odd-case tags still count
        "<think>so <answer>B</answer></think>",  # answer only inside the think
        "<think>so <answer>B</answer></think> B",
        "<think>so <answer>B</answer>",  # inside an unclosed think
        "<think>x</think><answer><answer>B</answer></answer>",  # nested
        "<think>x</think><answer>B",  # unclosed
        "<think>x</think>B",  # no answer block
        "The answer is B.",  # no tags at all
        "<answer><think>B</think></answer>",
        "<think>x</think> <think> <answer>B</answer>",  # inside a second, open think
    ],
)
def test_accuracy_hacks_score_zero(text):
    assert acc(text) == 0.0


def test_accuracy_ignores_format():
    # Accuracy judges the answer block only; format is a separate reward.
    assert acc("<answer>B</answer>") == 1.0
    assert acc("<think>x</think>\n\n<answer>\n B \n</answer>\n") == 1.0


@pytest.mark.parametrize("gold", [None, "", "E", "Z", "purple", "A or B", 7, True])
def test_accuracy_none_when_gold_unreadable(gold):
    assert acc(resp("answer is B", "B"), gold=gold) is None


@pytest.mark.parametrize("gold", ["blue", "B", "(B)", "B. Blue", 1])
def test_accuracy_gold_as_letter_text_or_index(gold):
    assert acc(resp("answer is B", "B"), gold=gold) == 1.0


def test_accuracy_options_with_own_letter_prefix():
    opts = ["A. red", "B. blue", "C. green"]
    assert acc(resp("x", "blue"), options=opts) == 1.0
    assert acc(resp("x", "B"), options=opts) == 1.0
    assert acc(resp("x", "B. blue"), options=opts) == 1.0


def test_accuracy_option_text_with_leading_capital():
    opts = ["A dog", "A cat"]
    assert acc(resp("x", "a cat"), gold="B", options=opts) == 1.0
    assert acc(resp("x", "B. A cat"), gold="B", options=opts) == 1.0
    assert acc(resp("x", "A"), gold="B", options=opts) == 0.0


def test_accuracy_duplicate_option_texts_are_ambiguous():
    assert acc(resp("x", "blue"), options=["blue", "blue", "red"], gold="A") == 0.0
    assert acc(resp("x", "A"), options=["blue", "blue", "red"], gold="A") == 1.0


def test_accuracy_batch_columns_and_forms():
    completions = [resp("x", "B"), [{"role": "assistant", "content": resp("x", "B")}], resp("x", "C"), resp("x", "4")]
    out = accuracy_reward(completions, answer=["B", "B", "B", "4"], options=[OPTS, OPTS, OPTS, None])
    assert out == [1.0, 1.0, 0.0, 1.0]


def test_both_completion_forms_agree():
    texts = [resp("The answer is B.", "B"), resp("answer: A", "B"), "<think>x<answer>B</answer></think>", "B",
             resp("", "B"), resp("Answer is blue", "B: blue")]
    conv = [[{"role": "assistant", "content": t}] for t in texts]
    parts = [[{"role": "assistant", "content": [{"type": "text", "text": t}]}] for t in texts]
    n = len(texts)
    for form in (conv, parts):
        assert accuracy_reward(form, answer=["B"] * n, options=[OPTS] * n) == accuracy_reward(
            texts, answer=["B"] * n, options=[OPTS] * n)
        assert format_reward(form) == format_reward(texts)
        assert consistency_reward(form, options=[OPTS] * n) == consistency_reward(texts, options=[OPTS] * n)


def test_extra_trl_kwargs_are_ignored():
    kw = dict(prompts=["p"], completion_ids=[[1, 2]], trainer_state=None, log_extra=None, log_metric=None, id=["x"])
    assert accuracy_reward([resp("x", "B")], answer=["B"], options=[OPTS], **kw) == [1.0]
    assert format_reward([resp("x", "B")], **kw) == [1.0]
    assert consistency_reward([resp("answer is B", "B")], options=[OPTS], **kw) == [1.0]


# ---------------------------------------------------------------- free-form


@pytest.mark.parametrize(
    "gold,pred,expected",
    [
        ("0.5", "\\frac{1}{2}", 1.0),
        ("\\frac{1}{2}", "0.5", 1.0),
        ("0.5", "$\\frac{1}{2}$", 1.0),
        ("1/2", "0.5", 1.0),
        ("12", "12", 1.0),
        ("12", "\\boxed{12}", 1.0),
        ("12", "13", 0.0),
        ("Paris", " paris. ", 1.0),
        ("Paris", "London", 0.0),
        ("2", "1 or 2", 0.0),  # spraying
        ("2", "1 2 3", 0.0),
        ("2", "1, 2", 0.0),
        ("3", "2, 3", 0.0),
        ("1000", "1,000", 1.0),
        ("(1, 2)", "(1, 2)", 1.0),
        ("4", "", 0.0),
    ],
)
def test_accuracy_free_form(gold, pred, expected):
    for options in (None, []):
        assert accuracy_reward([resp("x", pred)], answer=[gold], options=[options])[0] == expected
    assert accuracy_reward([resp("x", pred)], answer=[gold])[0] == expected


@pytest.mark.parametrize("gold", [None, "", "  "])
def test_accuracy_free_form_gold_unreadable(gold):
    assert accuracy_reward([resp("x", "4")], answer=[gold])[0] is None


def test_accuracy_free_form_hacks():
    assert accuracy_reward(["<think>x</think><answer>4</answer><answer>4</answer>"], answer=["4"]) == [0.0]
    assert accuracy_reward(["<think><answer>4</answer></think>"], answer=["4"]) == [0.0]


# -------------------------------------------------------------------- format


@pytest.mark.parametrize(
    "text",
    [
        "<think>x</think><answer>B</answer>",
        "  <think>reason\nmore</think>\n<answer> B </answer>\n",
        "<think>a < b and b > c</think><answer>B</answer>",
    ],
)
def test_format_good(text):
    assert fmt(text) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "<think></think><answer>B</answer>",  # empty think
        "<think>x</think><answer>  </answer>",  # empty answer
        "<think>x</think><answer>B</answer> trailing",
        "leading <think>x</think><answer>B</answer>",
        "<think>x</think> text <answer>B</answer>",
        "<answer>B</answer><think>x</think>",
        "<think>x</think><answer>B</answer><answer>B</answer>",
        "<think>x</think><think>y</think><answer>B</answer>",
        "<think><think>x</think></think><answer>B</answer>",
        "<think>x <answer>B</answer></think><answer>B</answer>",
        "<think>x</think><answer><think>y</think>B</answer>",
        "<think>x</think><answer>B</ANSWER>",
        "<think>x<answer>B</answer>",
        "<answer>B</answer>",
        "<think>x</think>",
        "",
        "B",
    ],
)
def test_format_bad(text):
    assert fmt(text) == 0.0


def test_format_judges_prefix_plus_completion():
    prefix = "<think>The answer is A."
    completion = " Wait, actually the answer is B.</think><answer>B</answer>"
    assert fmt(completion) == 0.0
    assert fmt(completion, prefix=prefix) == 1.0
    # a completion that reopens the think after the prefix repeats the tag
    assert fmt("<think>again</think><answer>B</answer>", prefix=prefix) == 0.0


# --------------------------------------------------------------- consistency


@pytest.mark.parametrize(
    "think",
    [
        "So the answer is B.",
        "answer: B",
        "Answer: (B)",
        "The answer is option B",
        "I choose option B.",
        "It must be (B).",
        "Therefore the answer is blue.",
        "The final answer is **B**",
        "The answer is A. Wait, actually the answer is B.",
        "Option A is wrong. The answer is B.",
        "The answer is (A)? No. The answer is blue.",
        "Because of the colour, the answer is B.",
    ],
)
def test_consistency_consistent(think):
    assert cons(resp(think, "B")) == 1.0
    assert cons(resp(think, "blue")) == 1.0


@pytest.mark.parametrize(
    "think",
    [
        "The answer is B. Hmm, no: the answer is A.",
        "The answer is blue. Actually the answer is red.",
        "Because Both Boxes are Blue.",  # capital B inside words is no conclusion
        "B is the Best",
        "I am not sure.",
        "The answer is A or B.",  # a hedge is no conclusion
        "The answer is blue or red.",
        "The answer is E.",  # not an option
        "",
    ],
)
def test_consistency_inconsistent_or_missing(think):
    assert cons(resp(think, "B")) == 0.0


def test_consistency_missing_blocks():
    assert cons("<think>The answer is B.</think>") == 0.0
    assert cons("<answer>B</answer>") == 0.0
    assert cons("The answer is B. <answer>B</answer>") == 0.0
    assert cons(resp("The answer is B.", "A or B")) == 0.0
    assert cons("<think>The answer is B. <answer>B</answer></think>") == 0.0  # answer only inside think


def test_consistency_corrected_wrong_prefix():
    prefix = "<think>The answer is A."
    completion = " Wait, actually the answer is B.</think><answer>B</answer>"
    assert cons(completion, prefix=prefix) == 1.0
    # the prefix's wrong conclusion is followed: consistent, though wrong
    assert cons(" Yes.</think><answer>A</answer>", prefix=prefix) == 1.0
    assert acc(" Yes.</think><answer>A</answer>", prefix=prefix) == 0.0
    # prefix concluded A, the model never corrects and answers B: inconsistent
    assert cons(" Hmm.</think><answer>B</answer>", prefix=prefix) == 0.0
    # stop-think: a closed, content-free think has no conclusion
    stop = "<think>Okay let's see. This should be the final answer.</think>"
    assert cons("<answer>B</answer>", prefix=stop) == 0.0
    assert fmt("<answer>B</answer>", prefix=stop) == 1.0
    assert acc("<answer>B</answer>", prefix=stop) == 1.0


def test_prefix_column_with_none_entries():
    prefixes = ["<think>The answer is A.", None]
    completions = [" So the answer is B.</think><answer>B</answer>", resp("answer is B", "B")]
    assert consistency_reward(completions, options=[OPTS, OPTS], think_prefix=prefixes) == [1.0, 1.0]
    assert format_reward(completions, think_prefix=prefixes) == [1.0, 1.0]
    assert accuracy_reward(completions, answer=["B", "B"], options=[OPTS, OPTS], think_prefix=prefixes) == [1.0, 1.0]


def test_consistency_free_form():
    assert consistency_reward([resp("So the answer is 1/2.", "0.5")]) == [1.0]
    assert consistency_reward([resp("So the answer is Paris.", "paris")]) == [1.0]
    assert consistency_reward([resp("So the answer is 3.", "4")]) == [0.0]
    assert consistency_reward([resp("No conclusion here.", "4")]) == [0.0]


# -------------------------------------------------------------- parser API


def test_split_response():
    assert split_response("<think> a </think><answer> B </answer>") == ("a", "B")
    assert split_response("no tags") == (None, None)
    assert split_response("<think>a <answer>B</answer></think>") == ("a <answer>B</answer>", None)
    assert split_response("<think>a</think><think>b</think><answer>B</answer>") == (None, "B")
    assert split_response("<think>a") == (None, None)


def test_resolve_option():
    assert resolve_option("C", OPTS) == 2
    assert resolve_option("(D)", OPTS) == 3
    assert resolve_option("green", OPTS) == 2
    assert resolve_option("C: green", OPTS) == 2
    assert resolve_option("C: red", OPTS) is None
    assert resolve_option("A B", OPTS) is None
    assert resolve_option("B", None) is None
    assert resolve_option(None, OPTS) is None


def test_think_conclusion():
    assert think_conclusion("answer is C", OPTS) == 2
    assert think_conclusion("Because Both", OPTS) is None
    assert think_conclusion("(A) first, then answer is yellow", OPTS) == 3
    assert think_conclusion("answer is yellow, then (A)", OPTS) == 0
    assert think_conclusion(None, OPTS) is None
    assert think_conclusion("answer is C", None) is None


def test_adversarial_input_is_scored():
    """Input built to make a backtracking pattern take quadratic (or worse) time: 20 000 repeats each of
    a conclusion phrase and a letter, and 2 000 unclosed answer tags. The parsers answer (no closed
    answer block: 0 everywhere) instead of hanging; a regression shows as a hung test, not a timing."""
    big = "<think>" + "answer is " * 20_000 + "(B) " * 20_000 + "</think>" + "<answer>" * 2000
    assert consistency_reward([big], options=[OPTS]) == [0.0]
    assert accuracy_reward([big], answer=["B"], options=[OPTS]) == [0.0]
    assert format_reward([big]) == [0.0]


# ------------------------------------------------------------------ the gold rule (rewards.options)

GOLD_FORMS = ["B", "(B)", "B.", "B)", "B:", "**B**", "b", "(b)", "blue", "  BLUE ", "Blue.", "B. blue", "B: Blue",
              "(B) blue", "B blue", 1]


@pytest.mark.parametrize("gold", GOLD_FORMS)
def test_one_gold_rule_for_adapters_perturb_and_reward(gold):
    """Every reader of a gold answer (the adapters, the perturbations, the accuracy reward, the
    evaluator's scoring) names the same option: a gold "b" is B everywhere."""
    from rewards.options import gold_letter
    from rlvlm.data.adapters import gold_letter as adapter_gold
    from rlvlm.evaluation.scoring import score
    from rlvlm.perturb import gold_letter as perturb_gold

    assert gold_letter(gold, OPTS) == "B"
    assert adapter_gold(OPTS, gold) == "B"
    assert perturb_gold({"id": "x", "options": OPTS, "answer": gold}) == "B"
    assert acc(resp("x", "B"), gold=gold) == 1.0
    item = {"dataset": "d", "id": "x", "answer": gold, "options": OPTS, "prompt": []}
    assert score([item], [resp("x", "B")], [[0.1, 0.6, 0.2, 0.1]])[0]["gold"] == "B"


@pytest.mark.parametrize("gold, options, letter", [
    ("b", ["b", "c"], "A"),  # an option's text comes before a lower-case letter
    ("B", ["B", "x"], "B"),  # an upper-case letter comes before an option's text
    ("E", ["E", "F"], "A"),  # a letter outside the options may be an option's text
    ("A. red", ["A. red", "B. blue"], "A"),  # options stored with their own letter
])
def test_gold_rule_precedence(gold, options, letter):
    from rewards.options import gold_letter
    from rlvlm.data.adapters import gold_letter as adapter_gold

    assert gold_letter(gold, options) == letter == adapter_gold(options, gold)


@pytest.mark.parametrize("gold, reason", [
    (None, "no gold answer"), ("", "no gold answer"), (True, "no gold answer"), ("E", "not among options ABCD"),
    (4, "index 4 not among 4 options"), ("purple", "not among options"), ("B. red", "disagrees with option B"),
])
def test_unreadable_gold_says_why(gold, reason):
    from rewards.options import GoldError, gold_index, resolve_gold

    with pytest.raises(GoldError, match=reason):
        gold_index(gold, OPTS)
    assert resolve_gold(gold, OPTS) is None


def test_gold_rule_strict_mode_and_shared_texts():
    from rewards.options import GoldError, gold_index

    with pytest.raises(GoldError, match="ambiguous: the text of several options"):
        gold_index("red", ["red", "blue", "red"])
    assert gold_index("C", ["red", "blue", "red"]) == 2
    with pytest.raises(GoldError, match=r"duplicate option 'red' \(options A and C\)"):
        gold_index("C", ["red", "blue", "red"], strict=True)
    with pytest.raises(GoldError, match="gold 2 is ambiguous: option B's text, or index 2"):
        gold_index(2, ["1", "2", "3"], strict=True)
    assert gold_index(2, ["1", "2", "3"]) == 2 and gold_index("2", ["1", "2", "3"]) == 1


def test_check_example():
    from rewards.options import check_example

    check_example({"options": ["a", "b"], "answer": "B"})
    check_example({"options": [], "answer": "12"})
    for bad in ({"options": ["a", "b"], "answer": "C"}, {"options": ["a", "b"], "answer": "AB"},
                {"options": ["a", "b"], "answer": "b"}, {"options": ["a", ""], "answer": "A"},
                {"options": [str(i) for i in range(27)], "answer": "A"}, {"options": [], "answer": " "}):
        with pytest.raises(ValueError):
            check_example(bad)


def test_one_letters_constant():
    import rewards.options
    import rewards.parsing
    from rlvlm.data import adapters

    assert rewards.parsing.LETTERS is rewards.options.LETTERS
    assert adapters.LETTERS == rewards.options.LETTERS[:10]
