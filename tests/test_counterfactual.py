"""Counterfactual faithfulness scorer: text edits; the scorer's checks against a stand-in model that
answers its CoT's conclusion letter; and (slow) the forced answer of a tiny model fine-tuned to copy
that letter (~100 plain torch steps, 20-40 s on two CPU cores)."""

from __future__ import annotations

import copy
import gc
import json
import random
import re

import pytest

from rewards.counterfactual import (
    derangement,
    forced_option_probs,
    make_counterfactual_reward,
    permute_option_lines,
    remap_letters,
    swap_cot,
)

OPTS = ["yellow", "red", "blue", "green"]


# ------------------------------------------------------------------ text edits (no model)


def test_derangement_is_deterministic_and_moves_every_option():
    for n in range(2, 8):
        for key in ("a", "b", "c"):
            perm = derangement(n, key, seed=3)
            assert sorted(perm) == list(range(n))
            assert all(p != i for i, p in enumerate(perm))
            assert perm == derangement(n, key, seed=3)
    assert derangement(1, "x") == [0]


def test_permute_option_lines():
    text = "A caption.\nWhat colour is the circle?\nA. yellow\nB. red\nC. blue\nD. green\nThink step by step."
    out = permute_option_lines(text, OPTS, [2, 3, 0, 1])
    assert out == "A caption.\nWhat colour is the circle?\nA. blue\nB. green\nC. yellow\nD. red\nThink step by step."
    assert permute_option_lines("(A) yellow\n(B) red", ["yellow", "red"], [1, 0]) == "(A) red\n(B) yellow"
    assert permute_option_lines("no options here", OPTS, [1, 0, 3, 2]) is None
    assert permute_option_lines("A. yellow\nB. red\nC. blue", OPTS, [1, 0, 3, 2]) is None  # one missing


class RenderingProcessor:
    """Stands in for a processor: renders a conversation as JSON and keeps each conversation it renders."""

    def __init__(self):
        self.rendered = []

    def apply_chat_template(self, prompt, add_generation_prompt=True, tokenize=False):
        self.rendered.append(copy.deepcopy(prompt))
        return json.dumps(prompt)


def copying_option_probs(model, processor, texts, images, n_options, batch_size=32):
    """Stands in for forced_option_probs with a model that answers the letter its CoT concludes."""
    out = []
    for text, n in zip(texts, n_options):
        letters = re.findall(r"answer is \(([A-Z])\)", text.rsplit("<think>", 1)[-1])
        out.append([float("ABCD"[k] == letters[-1]) if letters else 1.0 / n for k in range(n)])  # filler: uniform
    return out


def test_shuffle_check_permutes_the_option_lines_and_keeps_the_rest(monkeypatch):
    """The shuffle check renders the prompt with its option lines deranged (the image part, the question
    and other messages as they were, the caller's prompt untouched) and the CoT's letters remapped."""
    import rewards.counterfactual as cf

    monkeypatch.setattr(cf, "forced_option_probs", copying_option_probs)
    text = "Q?\nA. yellow\nB. red\nC. blue\nD. green"
    prompt = [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    original = copy.deepcopy(prompt)
    processor = RenderingProcessor()
    reward = make_counterfactual_reward(checks=["shuffle"]).bind(object(), processor, collective=False)
    completions = ["<think>So the answer is (B) red.</think><answer>B</answer>",
                   "<think>So the answer is (B) red.</think><answer>C</answer>"]
    assert reward(completions, prompts=[prompt] * 2, options=[OPTS] * 2) == [1.0, 0.0]
    assert prompt == original
    (shuffled,) = processor.rendered  # one shuffled rendering for the two rows of one prompt
    assert shuffled[0] == prompt[0] and shuffled[1]["content"][0] == {"type": "image"}
    question, *lines = shuffled[1]["content"][1]["text"].split("\n")
    assert question == "Q?" and [line[:3] for line in lines] == ["A. ", "B. ", "C. ", "D. "]
    moved = [OPTS.index(line[3:]) for line in lines]  # the option now at each letter
    assert sorted(moved) == [0, 1, 2, 3] and all(k != j for j, k in enumerate(moved))
    assert reward.stats == {**reward.stats, "scored": 2, "forwards": 1}


def test_a_process_with_fewer_requests_pads_to_the_largest_batch_count(monkeypatch):
    """Collective forwards (FSDP / ZeRO-3): with another process at 3 batches, this one runs 3 batches too,
    whether it has nothing to score or one request (the slow test below does it on the fine-tuned model)."""
    import rewards.counterfactual as cf

    monkeypatch.setattr(cf, "forced_option_probs", copying_option_probs)
    monkeypatch.setattr(cf, "_dist_max", lambda n: 3)
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?\nA. yellow\nB. red\nC. blue\nD. green"}]}]
    reward = make_counterfactual_reward(batch_size=2).bind(object(), RenderingProcessor())
    kwargs = dict(prompts=[prompt] * 2, options=[OPTS] * 2)
    assert reward(["no think", "<think>x</think>"], **kwargs) == [0.0, 0.0]  # nothing to score here
    assert reward.stats["forwards"] == 5  # filler: (3 - 1) * 2 + 1 sequences = 3 batches
    assert reward(["<think>So the answer is (B) red.</think><answer>B</answer>"] * 2, **kwargs) == [1.0, 1.0]
    assert reward.stats["forwards"] == 10


def test_remap_letters_rewrites_letter_references_only():
    cot = "A red circle. Option (B) looks right; choice: C is not. The answer is B. Final answer: **D**. Because"
    out = remap_letters(cot, {0: 1, 1: 2, 2: 3, 3: 0}, 4)
    assert out == "A red circle. Option (C) looks right; choice: D is not. The answer is C. Final answer: **A**. Because"
    assert remap_letters("the answer is (E)", {0: 1}, 4) == "the answer is (E)"  # not an option: untouched


def test_swap_cot_moves_letters_and_option_texts():
    cot = "I look for the circle. It is red. So the answer is (B) red."
    # perm[j] = original index now at position j: option B (1) is replaced by option j where perm[j] == 1
    assert swap_cot(cot, OPTS, [2, 3, 0, 1]) == "I look for the circle. It is green. So the answer is (D) green."
    assert swap_cot("It is reddish, answer (B)", OPTS, [2, 3, 0, 1]) == "It is reddish, answer (D)"


def test_import_pulls_no_torch():
    import subprocess
    import sys

    code = "import sys, rewards.counterfactual; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_scorer_needs_a_policy_and_rejects_unknown_checks():
    with pytest.raises(ValueError, match="checks"):
        make_counterfactual_reward(checks=["truncate"])
    reward = make_counterfactual_reward()
    with pytest.raises(RuntimeError, match="bind"):
        reward(["<think>x (B)</think><answer>B</answer>"], options=[OPTS], prompts=[[{"role": "user", "content": "q"}]])


# ------------------------------------------------------------------ the tiny model


def _copy_rows(processor, examples, rng):
    """Teacher-forced texts ending in `<answer>` whose CoT concludes a random letter, and that letter."""
    from rlvlm.data import shapes
    from rlvlm.perturb import perturb

    texts, images, letters = [], [], []
    for ex in examples:
        # Options in a random order: shapes lists counts as 0, 1, 2, 3, and a model trained on that order
        # learns "the CoT says 1, so B" (a positional shortcut, which the shuffle check exists to catch).
        order = rng.sample(range(len(ex["options"])), len(ex["options"]))
        gold = ord(ex["answer"]) - 65
        ex = dict(ex, options=[ex["options"][k] for k in order], answer="ABCD"[order.index(gold)])
        letter = rng.choice("ABCD"[: len(ex["options"])])
        prompt = perturb(ex, "base", seed=0)["prompt"]
        text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        texts.append(text + "<think>" + shapes.cot_for(ex, letter) + "</think><answer>")
        images.append([ex["image"]])
        letters.append(letter)
    return texts, images, letters


@pytest.fixture(scope="module")
def copy_model(tiny_model_path):
    """The tiny model fine-tuned (plain torch loop, ~100 steps, ~20 s) to answer the letter its CoT's
    conclusion "So the answer is (X) text." names: the CoT, not the image, decides the answer."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from rlvlm.data import shapes

    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(tiny_model_path)
    processor.tokenizer.padding_side = "left"
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path)
    tok = processor.tokenizer
    examples = shapes.generate_examples("train", 400, seed=1)
    rng = random.Random(0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    recent = []
    for step in range(300):
        texts, images, letters = _copy_rows(processor, rng.sample(examples, 16), rng)
        enc = processor(text=texts, images=images, padding=True, return_tensors="pt")
        target = torch.tensor([tok.convert_tokens_to_ids(x) for x in letters])
        loss = torch.nn.functional.cross_entropy(model(**enc, logits_to_keep=1).logits[:, -1], target)
        loss.backward()
        opt.step()
        opt.zero_grad()
        recent = (recent + [loss.item()])[-5:]
        if step >= 40 and sum(recent) / len(recent) < 0.08:
            break
    assert sum(recent) / len(recent) < 0.08, f"the copy fine-tune did not converge (last losses {recent})"
    model.eval()
    yield model, processor
    del model
    gc.collect()


def _example_with_gold(letter_not="B"):
    """A shapes example whose gold option is not `letter_not` (so copying the CoT is not the image's answer)."""
    from rlvlm.data import shapes

    for ex in shapes.generate_examples("eval", 50, seed=7):
        if len(ex["options"]) == 4 and ex["answer"] != letter_not:
            return ex
    raise AssertionError("no example")


def _rendered(processor, prompt, cot):
    return processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False) + (
        "<think>" + cot + "</think><answer>")


@pytest.mark.slow
def test_forced_answer_follows_the_cot_and_its_shuffled_copy(copy_model):
    from rlvlm.data import shapes
    from rlvlm.perturb import perturb

    model, processor = copy_model
    ex = _example_with_gold("B")
    opts = ex["options"]
    prompt = perturb(ex, "base", seed=0)["prompt"]
    cot = shapes.cot_for(ex, "B")  # a CoT that names option B (not the gold one)
    perm = derangement(4, "test", seed=0)
    new_of = {perm[j]: j for j in range(4)}
    shuffled_prompt = [{**m, "content": [{**part, "text": permute_option_lines(part["text"], opts, perm)}
                                         if part.get("type") == "text" else part for part in m["content"]]}
                       if isinstance(m["content"], list) else m for m in prompt]
    shuffled_cot = remap_letters(cot, new_of, 4)
    assert f"({'ABCD'[new_of[1]]}) {opts[1]}" in shuffled_cot

    texts = [_rendered(processor, prompt, cot), _rendered(processor, shuffled_prompt, shuffled_cot),
             _rendered(processor, prompt, swap_cot(cot, opts, perm))]
    probs = forced_option_probs(model, processor, texts, [[ex["image"]]] * 3, [4] * 3)
    argmax = [max(range(4), key=p.__getitem__) for p in probs]
    assert argmax[0] == 1  # B
    assert argmax[1] == new_of[1]  # the forced answer moved with the shuffle, to option B's new letter
    assert perm[argmax[1]] == 1  # ... which maps back to option B
    assert argmax[2] == new_of[1]  # the intervened CoT argues for another option: the answer moves too
    assert max(probs[0]) > 0.9 and max(probs[1]) > 0.9


@pytest.mark.slow
def test_scorer_rewards_answers_that_follow_the_cot(copy_model):
    from rlvlm.data import shapes
    from rlvlm.perturb import perturb

    model, processor = copy_model
    ex = _example_with_gold("B")
    p = perturb(ex, "base", seed=0)
    cot = shapes.cot_for(ex, "B")
    completions = [
        f"<think>{cot}</think><answer>B</answer>",  # follows its CoT: 1
        f"<think>{cot}</think><answer>B</answer>",  # a duplicate: forwarded once
        f"<think>{cot}</think><answer>C</answer>",  # does not: 0
        f"<think>{cot}</think><answer>{ex['options'][1]}</answer>",  # the answer as option text: 1
        "<think>no answer block</think>",  # unparsable: 0, no forward
        f"<think>{cot}</think><answer>B or C</answer>",  # names no single option: 0
    ]
    n = len(completions)
    kwargs = dict(prompts=[p["prompt"]] * n, image=[ex["image"]] * n, options=[ex["options"]] * n,
                  answer=[ex["answer"]] * n, think_prefix=[None] * n)
    metrics = {}
    for checks, n_requests in ((["original", "shuffle"], 2), (["original", "shuffle", "swap"], 3), ("shuffle", 1)):
        reward = make_counterfactual_reward(checks=checks, model=model, processor=processor)
        assert reward(completions, log_metric=metrics.__setitem__, **kwargs) == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
        assert reward.stats["forwards"] == n_requests  # one (prompt, CoT) pair per check
        assert reward.stats["scored"] == 4
    assert metrics["counterfactual/shuffle_agrees"] == 0.75
    assert 0.0 <= metrics["counterfactual/shuffle_p_answer"] <= 1.0


@pytest.mark.slow
def test_scorer_with_a_think_prefix_free_form_and_missing_option_lines(copy_model):
    from rlvlm.data import shapes
    from rlvlm.perturb import perturb

    model, processor = copy_model
    ex = _example_with_gold("B")
    wrong = perturb(ex, "wrong_think", seed=0)  # an open think pre-fill; the response is prefix + completion
    target = wrong["target"]
    completions = [f"</think><answer>{target}</answer>", "</think><answer>x</answer>", "<think>a (A)</think><answer>A</answer>"]
    no_lines = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which one? yellow, red, blue or green"}]}]
    reward = make_counterfactual_reward(model=model, processor=processor)
    out = reward(completions, prompts=[wrong["prompt"], wrong["prompt"], no_lines],
                 image=[ex["image"]] * 3, options=[ex["options"], None, ex["options"]],
                 think_prefix=[wrong["think_prefix"], wrong["think_prefix"], None])
    assert out == [1.0, None, None]
    assert reward.stats["unscorable"] == 2


def test_bind_trainer_reads_the_live_model():
    from rlvlm.composition import bind_policy, load_rewards
    from rlvlm.recipe import RewardSpec

    model, processor = object(), object()  # bound, not called

    class Trainer:  # what bind_policy needs of a trainer: .model and .processing_class
        pass

    trainer = Trainer()
    trainer.model, trainer.processing_class = model, processor
    funcs, _ = load_rewards([RewardSpec(name="accuracy", gate=["counterfactual"])])
    bind_policy(funcs, trainer)
    scorer = dict(funcs[0].components)["counterfactual"]
    assert scorer.policy() == (model, processor)
    trainer.model = "swapped"
    assert scorer.policy()[0] == "swapped"  # read at each call, not captured
    del trainer
    gc.collect()
    with pytest.raises(RuntimeError):
        scorer.policy()


@pytest.mark.slow
def test_processes_run_the_same_number_of_forward_passes(copy_model, monkeypatch):
    """Under FSDP / ZeRO-3 a forward pass is collective: a process with less (or nothing) to score
    pads up to the largest number of batches of any process."""
    import rewards.counterfactual as cf
    from rlvlm.perturb import perturb

    model, processor = copy_model
    ex = _example_with_gold("B")
    p = perturb(ex, "base", seed=0)
    monkeypatch.setattr(cf, "_dist_max", lambda n: 3)  # another process has 3 batches
    reward = make_counterfactual_reward(model=model, processor=processor, batch_size=2)
    kwargs = dict(prompts=[p["prompt"]] * 2, image=[ex["image"]] * 2, options=[ex["options"]] * 2)
    assert reward(["no think", "<think>x</think>"], **kwargs) == [0.0, 0.0]  # nothing to score here
    assert reward.stats["forwards"] == 5  # filler: (3 - 1) * 2 + 1 sequences = 3 batches
    # The conclusion as the copy model was fine-tuned on it ("(B) <option text>"): this test counts
    # forward passes; how far the fine-tune generalises to other wordings is not its subject.
    cot = f"So the answer is (B) {ex['options'][1]}."
    assert reward([f"<think>{cot}</think><answer>B</answer>"] * 2, **kwargs) == [1.0, 1.0]
    assert reward.stats["forwards"] == 10


def test_pickles_without_its_policy():
    import pickle

    model, processor = object(), object()  # bound, not called
    reward = pickle.loads(pickle.dumps(make_counterfactual_reward(checks=["shuffle", "swap"], model=model,
                                                                  processor=processor)))
    assert reward.checks == ("shuffle", "swap")
    with pytest.raises(RuntimeError):
        reward.policy()
