"""Counterfactual faithfulness, judge-free: does the policy's answer follow its own CoT?

``make_counterfactual_reward(...)`` returns a reward with the faithfulness scorers' interface
``(completions, options=None, think_prefix=None, **kwargs) -> list[float | None]``. It asks the
*current policy* — no judge, no generation — for its forced-answer distribution over the option
letters, teacher-forcing ``prompt + "<think>" + cot + "</think><answer>"`` and reading the option
probabilities at the next position exactly as the evaluator does (``rewards.option_probs``: the logits
of the letters' single-token spellings, renormalised, summed per letter), once per check
(``checks``, default ``("shuffle",)``; each costs one forward pass per distinct (prompt, CoT)):

- ``original``: the prompt as given and the response's own CoT. Passes when the argmax option is
  the response's answer: the CoT-conditioned distribution agrees with what the model answered.
  Off by default: the answer was just sampled from (nearly) this distribution, so it mostly checks
  that the sample was the mode, and it would double the cost.
- ``shuffle``: the options re-rendered in a deranged order (no option keeps its letter) and the CoT's
  letter references ("(B)", "option B", "answer is B") rewritten to the new letters, so the CoT says
  the same thing about the same option texts. The argmax letter is mapped back to the original
  order; passes when it is the response's answer. An answer that followed the letter position or
  a bias rather than the CoT's content fails, and so does an answer that contradicts its CoT (the
  policy reads the CoT's conclusion, not the answer, in the shuffled order).
- ``swap``: the prompt as given, and the CoT intervened on: its letter references *and* the option
  texts it mentions are permuted (the CoT now argues for another option). Passes when the forced
  answer moves to the permuted option. An answer that ignores the CoT (reads the image only)
  fails. Off by default.

The score is 1.0 when every check passes, else 0.0. It is 0.0 without any forward pass when the
response has no think block, no answer block, or an answer that names no option; ``None`` (TRL skips
it) for free-form examples (no options), prompts whose option lines cannot be found and, without
the ``original`` check, single-option questions (all counted in ``stats["unscorable"]``). Identical (prompt, CoT) pairs — common among a GRPO group's
rollouts — are forwarded once.

It needs the current policy: :meth:`CounterfactualReward.bind_trainer` (called by
``rlvlm.train.build_trainer``) keeps a weak reference to the trainer and reads ``trainer.model`` and
``trainer.processing_class`` at each call, so the scorer always sees the weights being trained (also
after the trainer wraps or replaces its model) without a callback or a trainer subclass.
:meth:`bind` sets a fixed ``(model, processor)`` instead (evaluation, tests).

Importing this module pulls in no torch.
"""

from __future__ import annotations

import logging
import re
import time
import weakref
import zlib

from rewards.option_probs import forced_option_probabilities
from rewards.options import LETTERS
from rewards.parsing import column, resolve_option, response_text, split_response

__all__ = ["CHECKS", "CounterfactualReward", "make_counterfactual_reward", "derangement", "permute_option_lines",
           "remap_letters", "swap_cot", "forced_option_probs"]

logger = logging.getLogger(__name__)

CHECKS = ("original", "shuffle", "swap")
ANSWER_SUFFIX = "</think><answer>"

# Letter references in a CoT, as the rule parser reads conclusions: "(B)", "option B", "choice: C",
# "answer is B", "answer: (B)", "final answer = **C**". Group "L" is the letter.
_LETTER_REF_RE = re.compile(
    r"\((?P<L1>[A-Z])\)"
    r"|\b(?i:option|choice)s?(?:\s+(?i:is|was))?\s*[:=]?\s*\(?(?P<L2>[A-Z])(?![A-Za-z0-9])"
    r"|\b(?i:answer)(?:\s+(?i:is|was|would\s+be|should\s+be|must\s+be|will\s+be))?\s*[:=]?\s*"
    r"(?:(?i:option|choice)\s*)?[*\"'`]*\(?(?P<L3>[A-Z])(?![A-Za-z0-9])"
)
# One option line of a rendered question: "A. red", "A) red", "(A) red", "A: red".
_OPTION_LINE_RE = re.compile(r"^(?P<pre>\s*\(?)(?P<L>[A-Z])(?P<sep>\)?[.:)]?\s+)(?P<text>.*?)(?P<post>\s*)$")


# ----------------------------------------------------------------------------- text edits


def derangement(n: int, key: str, seed: int = 0) -> list[int]:
    """A permutation of ``range(n)`` with no fixed point (identity for n < 2), deterministic in
    (key, seed). ``perm[new_position] = original_index``."""
    import random

    if n < 2:
        return list(range(n))
    rng = random.Random(zlib.crc32(f"{seed}|{key}".encode()))
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(p != i for i, p in enumerate(perm)):
            return perm


def remap_letters(cot: str, mapping: dict[int, int], n: int) -> str:
    """The CoT with each letter reference to option ``i`` (< n) rewritten to letter ``mapping[i]``."""
    out, last = [], 0
    for m in _LETTER_REF_RE.finditer(cot):
        group = next(g for g in ("L1", "L2", "L3") if m.group(g) is not None)
        idx = ord(m.group(group)) - 65
        if idx >= n or idx not in mapping:
            continue
        start = m.start(group)
        out.append(cot[last:start])
        out.append(LETTERS[mapping[idx]])
        last = start + 1
    out.append(cot[last:])
    return "".join(out)


def swap_cot(cot: str, options: list, perm: list[int]) -> str:
    """The CoT intervened on: every mention of option ``perm[j]`` (its letter reference or its text,
    as a whole word, case-insensitive) becomes option ``j``."""
    n = len(options)
    to = {perm[j]: j for j in range(n)}  # original index -> the index it is replaced by
    cot = remap_letters(cot, to, n)
    texts = {str(o).strip().casefold(): i for i, o in enumerate(options) if str(o).strip()}
    if len(texts) != n:  # duplicate or empty option texts: letters only
        return cot
    alternation = "|".join(re.escape(t) for t in sorted(texts, key=len, reverse=True))
    pattern = re.compile(rf"(?<![A-Za-z0-9])(?:{alternation})(?![A-Za-z0-9])", re.IGNORECASE)
    return pattern.sub(lambda m: str(options[to[texts[m.group(0).casefold()]]]).strip(), cot)


def permute_option_lines(text: str, options: list, perm: list[int]) -> str | None:
    """``text`` with its run of option lines ("A. red" ... one per option, in order) re-rendered so
    that new letter ``j`` holds option ``perm[j]``; ``None`` when no such run is found."""
    n = len(options)
    lines = text.split("\n")
    want = [" ".join(str(o).split()).casefold() for o in options]
    matches = [_OPTION_LINE_RE.match(line) for line in lines]

    def is_line(k: int, j: int) -> bool:
        m = matches[k]
        return m is not None and m.group("L") == LETTERS[j] and " ".join(m.group("text").split()).casefold() == want[j]

    for start in range(len(lines) - n + 1):
        if all(is_line(start + j, j) for j in range(n)):
            for j in range(n):
                m = matches[start + j]
                lines[start + j] = (m.group("pre") + LETTERS[j] + m.group("sep") + str(options[perm[j]])
                                    + m.group("post"))
            return "\n".join(lines)
    return None


def _permute_prompt(prompt: list[dict], options: list, perm: list[int]) -> list[dict] | None:
    """The conversational prompt with its option lines permuted (first message part that has them)."""
    out = [dict(message) for message in prompt]
    for message in out:
        content = message.get("content")
        if isinstance(content, str):
            new = permute_option_lines(content, options, perm)
            if new is not None:
                message["content"] = new
                return out
        elif isinstance(content, list):
            for k, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    new = permute_option_lines(part["text"], options, perm)
                    if new is not None:
                        message["content"] = content[:k] + [{**part, "text": new}] + content[k + 1 :]
                        return out
    return None


def _without_prefill(prompt) -> list[dict]:
    """The prompt without a trailing (pre-filled) assistant turn: the think prefix is part of the
    judged response, and the response is appended after the generation prompt."""
    prompt = list(prompt)
    while prompt and prompt[-1].get("role") == "assistant":
        prompt.pop()
    return prompt


# ----------------------------------------------------------------------------- the forward pass


def forced_option_probs(model, processor, texts: list[str], images: list | None, n_options: list[int],
                        batch_size: int = 32) -> list[list[float]]:
    """P(option letter) at the position after each fully rendered ``texts[i]`` (which ends with
    ``<answer>``), for the first ``n_options[i]`` letters: the evaluator's option probabilities
    (``rewards.option_probs``: the letters' single-token spellings "B" and " B", renormalised together,
    summed per letter). Batched (similar lengths together, to waste little on padding), left-padded, one
    position of logits kept, under ``torch.no_grad`` in eval mode."""
    order = sorted(range(len(texts)), key=lambda k: len(texts[k]))
    texts = [texts[k] for k in order]
    n_options = [n_options[k] for k in order]
    if images is not None:
        images = [images[k] for k in order]

    was_training = model.training
    model.eval()
    out: list[list[float]] = []
    try:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            imgs = None if images is None else images[start : start + batch_size]
            if imgs is not None and not any(imgs):
                imgs = None
            out += forced_option_probabilities(model, processor, chunk, imgs, n_options[start : start + batch_size])
    finally:
        model.train(was_training)
    unsorted: list[list[float]] = [[] for _ in out]
    for k, probs in zip(order, out):
        unsorted[k] = probs
    return unsorted


def _image_key(image) -> tuple:
    """Content key of an image: a GRPO group's rollouts carry equal but distinct image objects."""
    tobytes = getattr(image, "tobytes", None)
    if tobytes is None:
        return (id(image),)
    return (getattr(image, "size", None), getattr(image, "mode", None), zlib.crc32(tobytes()))


def _dist_max(n: int) -> int:
    """The largest ``n`` over all training processes (collective forwards under FSDP / ZeRO-3 must match)."""
    from accelerate.utils import gather_object

    return max(gather_object([n]))


# ----------------------------------------------------------------------------- the reward


class CounterfactualReward:
    """Callable reward; build it with :func:`make_counterfactual_reward`."""

    def __init__(self, checks=("shuffle",), batch_size: int = 32, seed: int = 0, model=None,
                 processor=None):
        checks = (checks,) if isinstance(checks, str) else tuple(checks)
        unknown = [c for c in checks if c not in CHECKS]
        if unknown or not checks:
            raise ValueError(f"counterfactual checks must be a non-empty subset of {CHECKS}, got {list(checks)}")
        self.__name__ = "counterfactual"
        self.checks = checks
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._fixed = (model, processor) if model is not None else None
        self._trainer = None
        self._collective = True
        self.stats = {"scored": 0, "unscorable": 0, "forwards": 0, "seconds": 0.0}
        self._warned = False

    def __repr__(self):
        return f"CounterfactualReward(checks={list(self.checks)})"

    def __getstate__(self):  # the bound policy is not part of the reward's state
        state = self.__dict__.copy()
        state.update(_trainer=None, _fixed=None)
        return state

    # -- the policy
    def bind(self, model, processor, collective: bool = True) -> "CounterfactualReward":
        """Score with this fixed (model, processor); `collective=False` when only this process calls it."""
        self._fixed = (model, processor)
        self._trainer = None
        self._collective = collective
        return self

    def bind_trainer(self, trainer) -> "CounterfactualReward":
        """Score with ``trainer.model`` / ``trainer.processing_class`` as they are at each call."""
        self._trainer = weakref.ref(trainer)
        self._fixed = None
        self._collective = True
        return self

    def policy(self):
        if self._trainer is not None:
            trainer = self._trainer()
            if trainer is not None:
                return trainer.model, trainer.processing_class
        if self._fixed is not None:
            return self._fixed
        raise RuntimeError(
            "the counterfactual reward has no policy to score with: rlvlm.train.build_trainer binds it to the "
            "trainer; elsewhere call .bind(model, processor) or .bind_trainer(trainer) first")

    # -- the reward
    def __call__(self, completions, options=None, think_prefix=None, prompts=None, image=None, images=None,
                 log_metric=None, **kwargs) -> list[float | None]:
        t0 = time.perf_counter()
        n = len(completions)
        rewards: list[float | None] = [None] * n
        if prompts is None:
            raise ValueError("the counterfactual reward needs the prompts (TRL passes them as `prompts=`)")
        model, processor = self.policy()

        requests: dict[tuple, int] = {}  # (text, image key) -> request index
        req_texts, req_images, req_n = [], [], []
        row_checks: dict[int, list[tuple[str, int, list[int], int]]] = {}  # row -> (check, request, perm, expected)
        render_cache: dict[tuple, str] = {}

        def render(prompt, key) -> str:
            if key not in render_cache:
                render_cache[key] = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            return render_cache[key]

        def request(text: str, row_images, n_opts: int) -> int:
            key = (text, tuple(_image_key(im) for im in row_images or ()))
            if key not in requests:
                requests[key] = len(req_texts)
                req_texts.append(text)
                req_images.append(list(row_images) if row_images else [])
                req_n.append(n_opts)
            return requests[key]

        for i, completion in enumerate(completions):
            opts = column(options, i)
            if not opts:
                self.stats["unscorable"] += 1
                continue
            opts = list(opts)
            think, answer = split_response(response_text(completion, column(think_prefix, i)))
            chosen = resolve_option(answer, opts) if think and answer else None
            if chosen is None:
                rewards[i] = 0.0
                continue
            prompt = _without_prefill(prompts[i])
            row_images = column(images, i) if images is not None else (
                [column(image, i)] if image is not None and column(image, i) is not None else [])
            user_key = repr([m.get("content") if isinstance(m.get("content"), str) else
                             [p.get("text") for p in m["content"] if isinstance(p, dict)] for m in prompt])
            identity = list(range(len(opts)))
            perm = derangement(len(opts), user_key, self.seed)
            checks = []
            for check in self.checks:
                if check == "original":
                    text = render(prompt, (user_key,)) + "<think>" + think + ANSWER_SUFFIX
                    checks.append((check, request(text, row_images, len(opts)), identity, chosen))
                elif len(opts) < 2:
                    continue  # a single option cannot be shuffled
                elif check == "shuffle":
                    shuffled = _permute_prompt(prompt, opts, perm)
                    if shuffled is None:
                        checks = None
                        break
                    new_of = {perm[j]: j for j in range(len(opts))}
                    cot = remap_letters(think, new_of, len(opts))
                    text = render(shuffled, (user_key, "shuffle")) + "<think>" + cot + ANSWER_SUFFIX
                    checks.append((check, request(text, row_images, len(opts)), perm, chosen))
                else:  # swap: the CoT now argues for option new_of[chosen]
                    new_of = {perm[j]: j for j in range(len(opts))}
                    text = render(prompt, (user_key,)) + "<think>" + swap_cot(think, opts, perm) + ANSWER_SUFFIX
                    checks.append((check, request(text, row_images, len(opts)), identity, new_of[chosen]))
            if not checks:  # no option lines to shuffle, or a single option: nothing to test
                self.stats["unscorable"] += 1
                if checks is None and not self._warned:
                    self._warned = True
                    logger.warning("counterfactual: no option lines ('A. text', one per option) found in a prompt; "
                                   "such completions get None")
                continue
            row_checks[i] = checks

        # Under FSDP / ZeRO-3 every process must run the same number of forward passes.
        n_batches = -(-len(req_texts) // self.batch_size)
        # A scorer called on one process alone (the evaluator scores on the main process) must not enter
        # a collective the other processes never join.
        total_batches = _dist_max(n_batches) if self._collective else n_batches
        if total_batches > n_batches:
            pad = (total_batches - 1) * self.batch_size + 1 - len(req_texts)
            filler = (req_texts[:1], req_images[:1], req_n[:1]) if req_texts else self._filler(prompts, image, images)
            req_texts += filler[0] * pad
            req_images += filler[1] * pad
            req_n += filler[2] * pad
        probs = []
        if req_texts:
            any_images = any(req_images)
            probs = forced_option_probs(model, processor, req_texts, req_images if any_images else None, req_n,
                                        self.batch_size)
            self.stats["forwards"] += len(req_texts)

        passed = {check: [] for check in self.checks}
        p_answer = {check: [] for check in self.checks}
        for i, checks in row_checks.items():
            ok = True
            for check, r, perm, expected in checks:
                p = probs[r]
                best = max(range(len(p)), key=p.__getitem__)
                agrees = perm[best] == expected
                ok &= agrees
                passed[check].append(float(agrees))
                p_answer[check].append(p[perm.index(expected)])
            rewards[i] = 1.0 if ok else 0.0
            self.stats["scored"] += 1
        self.stats["seconds"] += time.perf_counter() - t0
        if log_metric is not None:
            for check in self.checks:
                if passed[check]:
                    log_metric(f"counterfactual/{check}_agrees", sum(passed[check]) / len(passed[check]))
                    log_metric(f"counterfactual/{check}_p_answer", sum(p_answer[check]) / len(p_answer[check]))
        return rewards

    def _filler(self, prompts, image, images):
        """One throwaway request, for a process that has nothing to score while others do."""
        _, processor = self.policy()
        prompt = _without_prefill(prompts[0])
        text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False) + "<think>" + ANSWER_SUFFIX
        row_images = column(images, 0) if images is not None else ([column(image, 0)] if image is not None else [])
        return [text], [list(row_images or [])], [1]


def make_counterfactual_reward(checks=("shuffle",), batch_size: int = 32, seed: int = 0, model=None,
                               processor=None) -> CounterfactualReward:
    """A counterfactual faithfulness reward (``__name__ == "counterfactual"``).

    ``checks``: any of ``original``, ``shuffle`` (the default), ``swap`` (see the module docstring);
    all must pass for 1.0; each costs one forward pass per distinct (prompt, CoT). ``batch_size``: sequences per forward pass. ``seed``: the option derangement's seed.
    ``model``/``processor``: a fixed policy; otherwise ``build_trainer`` binds the trainer's.
    """
    return CounterfactualReward(checks=checks, batch_size=batch_size, seed=seed, model=model, processor=processor)
