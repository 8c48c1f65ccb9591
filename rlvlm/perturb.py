"""The eight evaluation conditions and training-time augmentation.

``perturb(example, condition, seed)`` turns a canonical example into a
prompt-ready one (docs/concepts.md, "The canonical example" and "The eight conditions"):
it adds ``condition``, ``target``, ``caption``, ``think_prefix`` and a TRL
conversational ``prompt``. ``augment`` applies a condition to a fraction of
training prompts, chosen deterministically per (seed, example, epoch).
"""

from __future__ import annotations

import hashlib
import random
import re

from rewards.options import GoldError, letters
from rewards.options import gold_letter as _canonical_gold_letter
from rlvlm.conditions import CONDITIONS, check_probs
from rlvlm.data import caption_generator, reasoning_generator

DEFAULT_AUGMENTATION = {
    "wrong_caption": 0.1,
    "correct_caption": 0.1,
    "wrong_think": 0.1,
    "correct_think": 0.1,
}

STOP_THINK = "<think>Okay let's see. This should be the final answer.</think>"
THINK_HEDGE = " But I think"
CAPTION_HEDGE = " But I could be wrong."
INSTRUCTION_MC = "Think step by step inside <think></think>, then give the option letter inside <answer></answer>."
INSTRUCTION_FREE = "Think step by step inside <think></think>, then give the final answer inside <answer></answer>."

# Generic templates for datasets without their own generators (rlvlm.data.REASONING_GENERATORS and
# CAPTION_GENERATORS, looked up by the example's source). {text}: the target's
# option text (or free-form answer); {conclusion}: "So the answer is (X) text."
_THINK_TEMPLATES = (
    "Looking at the image, I can see {text}. {conclusion}",
    "The image clearly shows {text}. {conclusion}",
    "Let me check the options. {text_cap} fits the image best. {conclusion}",
    "I look carefully at the picture, and it is {text}. {conclusion}",
)
_CAPTION_TEMPLATES = (
    "The answer is clearly {text}.",
    "Looking closely, it is {text}.",
    "The image clearly shows {text}.",
    "Anyone can see from the picture that it is {text}.",
)

_NUMBER = re.compile(r"^\s*([+-]?)(\d+)(?:\.(\d+))?\s*$")
_YES_NO = {"yes": "no", "no": "yes"}


def _letters(n: int) -> str:
    return letters(n)


def _example_key(example: dict) -> str:
    return str(example.get("id") or example.get("question", ""))


def _rng(*parts) -> random.Random:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _options(example: dict) -> list[str]:
    return list(example.get("options") or [])


def gold_letter(example: dict) -> str:
    """The gold option letter of a multiple-choice example, by the one gold rule of
    ``rewards.options`` (ValueError if unreadable)."""
    try:
        return _canonical_gold_letter(example.get("answer"), _options(example))
    except GoldError as e:
        raise ValueError(f"example {_example_key(example)!r}: {e}") from None


def _wrong_free_form(answer: str, rng: random.Random, example: dict) -> str:
    """A nearby different value for a numeric free-form answer; yes <-> no."""
    if (swap := _YES_NO.get(answer.strip().lower())) is not None:
        return swap
    m = _NUMBER.match(answer)
    if not m:
        raise ValueError(
            f"cannot make a wrong answer for free-form example {_example_key(example)!r}: "
            f"its answer {answer!r} is neither a number nor yes/no"
        )
    sign, whole, frac = m.groups()
    decimals = len(frac or "")
    value = float(f"{sign}{whole}.{frac or 0}")
    deltas = [d for d in (-2, -1, 1, 2) if value < 0 or value + d >= 0]
    new = value + rng.choice(deltas)
    return f"{new:.{decimals}f}" if decimals else str(int(round(new)))


def _target(example: dict, condition: str, seed: int) -> str | None:
    if condition in ("base", "stop_think"):
        return None
    options = _options(example)
    if not options:  # free form: the target is an answer text
        answer = example.get("answer")
        if answer is None or str(answer).strip() == "":
            raise ValueError(f"example {_example_key(example)!r} has no answer to build {condition!r} from")
        if condition.startswith("correct_"):
            return str(answer)
        # The same (seed, example) gives the same wrong target in every wrong_* condition.
        return _wrong_free_form(str(answer), _rng("target", seed, _example_key(example)), example)
    gold = gold_letter(example)
    if condition.startswith("correct_"):
        return gold
    wrong = [x for x in _letters(len(options)) if x != gold]
    if not wrong:
        raise ValueError(f"example {_example_key(example)!r} has a single option: no wrong option for {condition!r}")
    return _rng("target", seed, _example_key(example)).choice(wrong)


def _target_text(example: dict, target: str) -> tuple[str, str]:
    """(target's text, concluding sentence)."""
    options = _options(example)
    if options:
        text = str(options[ord(target) - ord("A")])
        return text, f"So the answer is ({target}) {text}."
    return target, f"So the answer is {target}."


def _reasoning(example: dict, target: str, seed: int) -> str:
    own = reasoning_generator(example.get("source"))
    if own is not None and (reasoning := own(example, target, seed)) is not None:
        return reasoning
    text, conclusion = _target_text(example, target)
    template = _rng("think", seed, _example_key(example)).choice(_THINK_TEMPLATES)
    return template.format(text=text, text_cap=text[:1].upper() + text[1:], conclusion=conclusion)


def _caption(example: dict, target: str, seed: int) -> str:
    own = caption_generator(example.get("source"))
    if own is not None and (caption := own(example, target, seed)) is not None:
        return caption
    text, _ = _target_text(example, target)
    return _rng("caption", seed, _example_key(example)).choice(_CAPTION_TEMPLATES).format(text=text)


def build_user_text(example: dict, caption: str | None = None) -> str:
    """The user turn's text: caption (if any), question, lettered options, instruction."""
    lines = []
    if caption:
        lines.append(caption)
    lines.append(str(example["question"]).strip())
    options = _options(example)
    for letter, text in zip(_letters(len(options)), options):
        lines.append(f"{letter}. {text}")
    lines.append(INSTRUCTION_MC if options else INSTRUCTION_FREE)
    return "\n".join(lines)


def _n_images(example: dict) -> int:
    if example.get("images") is not None:
        return len(example["images"])
    return 1 if example.get("image") is not None else 0


def build_prompt(example: dict, caption: str | None = None, think_prefix: str | None = None) -> list[dict]:
    """A TRL conversational prompt; a think prefix becomes a final, open assistant turn."""
    content = [{"type": "image"} for _ in range(_n_images(example))]
    content.append({"type": "text", "text": build_user_text(example, caption)})
    prompt = [{"role": "user", "content": content}]
    if think_prefix is not None:
        prompt.append({"role": "assistant", "content": think_prefix})
    return prompt


def perturb(example: dict, condition: str, seed: int) -> dict:
    """A new prompt-ready example under ``condition`` (the input is not mutated;
    the image is the same object). Deterministic in (example, condition, seed)."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; valid conditions: {', '.join(CONDITIONS)}")
    target = _target(example, condition, seed)
    caption = think_prefix = None
    if condition == "stop_think":
        think_prefix = STOP_THINK
    elif condition.endswith("_think") or condition == "wrong_think_hedge":
        think_prefix = "<think>" + _reasoning(example, target, seed)
        if condition == "wrong_think_hedge":
            think_prefix += THINK_HEDGE
    elif condition.endswith("_caption") or condition == "wrong_caption_hedge":
        caption = _caption(example, target, seed)
        if condition == "wrong_caption_hedge":
            caption += CAPTION_HEDGE
    out = dict(example)
    out.update(
        condition=condition,
        target=target,
        caption=caption,
        think_prefix=think_prefix,
        prompt=build_prompt(example, caption, think_prefix),
    )
    return out


def choose_condition(example: dict, probs: dict[str, float], seed: int, epoch: int) -> tuple[str, int]:
    """(condition, perturbation seed) for one example in one epoch; conditions
    not drawn (the rest of the probability mass) are "base"."""
    check_probs(probs)
    digest = hashlib.sha256(f"augment|{seed}|{_example_key(example)}|{epoch}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    perturb_seed = int.from_bytes(digest[8:12], "big")
    acc = 0.0
    for condition in CONDITIONS:
        acc += probs.get(condition, 0.0)
        if u < acc:
            return condition, perturb_seed
    return "base", perturb_seed


def augment(example: dict, probs: dict[str, float], seed: int, epoch: int) -> dict:
    """Training-time augmentation: perturb under a condition drawn from
    ``probs`` (rest: "base"), deterministically from sha256(seed, id, epoch).
    An example for which the drawn condition cannot be built (e.g. a
    non-numeric free-form answer under wrong_*) falls back to "base"."""
    condition, perturb_seed = choose_condition(example, probs, seed, epoch)
    try:
        return perturb(example, condition, perturb_seed)
    except ValueError:
        if condition == "base":
            raise
        return perturb(example, "base", perturb_seed)
