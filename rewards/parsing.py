"""Shared, dependency-free parsing of ``<think>…</think><answer>…</answer>`` responses.

Everything here is plain ``re`` with precompiled patterns and runs in time linear in
the response length; math-verify (sympy) is only imported on the free-form path.

Public helpers (used by the rewards, the evaluator and the judge):

- :func:`completion_text` — a TRL completion (string or conversational) as text
- :func:`response_text` — ``think_prefix + completion``, the judged response
- :func:`split_response` — ``(think, answer)`` contents, ``None`` when missing or malformed
- :func:`resolve_option` — the option index that an answer string names, or ``None``
- :func:`think_conclusion` — the option index of the think's last explicit conclusion
- :func:`think_conclusion_text` — the free-form text of that last conclusion
- :func:`normalize_text` — case-folded, whitespace-normalised text (from :mod:`rewards.options`)
- :func:`resolve_gold` — the gold option's index by the gold rule of :mod:`rewards.options`, or ``None``
- :func:`free_form_match` — free-form equality (normalised text, then numbers/LaTeX)
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache

# The option letters, option-text normalisation and the gold rule live in rewards.options (one rule for
# the adapters, the perturbations and the rewards); imported here so these names stay where they were.
from rewards.options import LETTERS, normalize_text, resolve_gold
from rewards.options import options_info as _info

__all__ = [
    "LETTERS",
    "completion_text",
    "response_text",
    "split_response",
    "is_well_formatted",
    "resolve_option",
    "resolve_gold",
    "think_conclusion",
    "think_conclusion_text",
    "normalize_text",
    "free_form_match",
]

# Any think/answer tag, in any letter case: odd-case tags still count as tags, so
# "<ANSWER>A</ANSWER><answer>B</answer>" is two answer blocks, not one.
_TAG_RE = re.compile(r"<(/?)(think|answer)>", re.IGNORECASE)
# Canonical format: exact lower-case tags, only whitespace between the blocks.
_FORMAT_RE = re.compile(r"<think>(.*?)</think>\s*<answer>(.*?)</answer>", re.DOTALL)

# --------------------------------------------------------------------------- text


def completion_text(completion) -> str:
    """Text of one TRL completion: a string, or a list of chat messages whose
    ``content`` is a string or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(completion, str):
        return completion
    if completion is None:
        return ""
    if isinstance(completion, dict):
        completion = [completion]
    parts = []
    for message in completion:
        content = message.get("content", "") if isinstance(message, dict) else message
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    text = part.get("text")
                    if isinstance(text, str):
                        parts.append(text)
                elif isinstance(part, str):
                    parts.append(part)
        elif content is not None:
            parts.append(str(content))
    return "".join(parts)


def response_text(completion, think_prefix=None) -> str:
    """The response every reward judges: ``think_prefix + completion``."""
    text = completion_text(completion)
    if think_prefix:
        return think_prefix + text
    return text


def column(values, i):
    """Entry ``i`` of an optional TRL column (``None`` when the column is absent)."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)):  # a scalar passed for every row
        return values
    return values[i] if i < len(values) else None


# ---------------------------------------------------------------------- structure


def split_response(text: str) -> tuple[str | None, str | None]:
    """Contents of the think block and of the answer block, each stripped.

    - ``think`` is the content of the one ``<think>…</think>`` block; ``None`` when
      the response has no think block, leaves it open, or repeats/misorders tags.
    - ``answer`` is the content of the one ``<answer>…</answer>`` block; ``None``
      when there is no such block, when there are several, when it is unclosed,
      nested or contains think tags, or when it sits inside the think block (an
      answer hidden in the reasoning is not an answer).
    """
    if not text or "<" not in text:
        return None, None
    t_open = t_close = a_open = a_close = None
    n_t_open = n_t_close = n_a_open = n_a_close = 0
    depth = 0  # think nesting depth while scanning
    a_depth = 0  # think depth where the answer opens
    think_in_answer = False
    for m in _TAG_RE.finditer(text):
        is_close = m.group(1) == "/"
        if m.group(2).lower() == "think":
            if n_a_open == 1 and n_a_close == 0:
                think_in_answer = True
            if is_close:
                n_t_close += 1
                depth = 0
                if t_close is None:
                    t_close = m
            else:
                n_t_open += 1
                depth = 1
                if t_open is None:
                    t_open = m
        elif is_close:
            n_a_close += 1
            if a_close is None:
                a_close = m
        else:
            n_a_open += 1
            if a_open is None:
                a_open = m
                a_depth = depth

    think = None
    if n_t_open == 1 and n_t_close == 1 and t_open.end() <= t_close.start():
        think = text[t_open.end() : t_close.start()].strip()

    answer = None
    if (
        n_a_open == 1
        and n_a_close == 1
        and a_open.end() <= a_close.start()
        and a_depth == 0
        and not think_in_answer
    ):
        answer = text[a_open.end() : a_close.start()].strip()
    return think, answer


def is_well_formatted(text: str) -> bool:
    """The whole trimmed response is one non-empty think block followed by one
    non-empty answer block (whitespace between them allowed), nothing else."""
    s = text.strip()
    if not s.startswith("<think>") or not s.endswith("</answer>"):
        return False
    m = _FORMAT_RE.fullmatch(s)
    if m is None:
        return False
    think, answer = m.group(1), m.group(2)
    if not think.strip() or not answer.strip():
        return False
    if "<" in think and _TAG_RE.search(think):
        return False
    if "<" in answer and _TAG_RE.search(answer):
        return False
    return True


# ------------------------------------------------------------------------ options

# "B", "(B)", "B.", "B:", "B)", "(B)." — the letter alone.
_LETTER_ONLY_RE = re.compile(r"\(([A-Z])\)[.:]?|([A-Z])[.:)]?")
# "B. text", "B: text", "B) text", "(B) text", "(B): text" — letter plus its text.
_LETTER_TEXT_RE = re.compile(r"(?:\(([A-Z])\)[.:]?|([A-Z])[.:)])\s*(\S.*)", re.DOTALL)


def resolve_option(text: str | None, options) -> int | None:
    """Index of the one option that ``text`` names, else ``None``.

    ``text`` names option *i* when it is that option's capital letter alone or
    decorated (``B``, ``(B)``, ``B.``, ``B)``, ``B:``), the letter followed by text
    that matches the option (``B. red``, ``B: red``, ``(B) red``), or the option's
    text itself (case-insensitive, whitespace-normalised). Anything naming two
    options (``A B``, ``A or B``, ``B: <text of A>``) or none resolves to ``None``.
    """
    if text is None:
        return None
    info = _info(options)
    if info is None:
        return None
    n, norms, lookup = info
    s = text.strip().strip("*`\"' ")
    if not s:
        return None
    if len(s) <= 4:
        m = _LETTER_ONLY_RE.fullmatch(s)
        if m is not None:
            idx = ord(m.group(1) or m.group(2)) - 65
            if idx < n:
                return idx
    idx = lookup.get(normalize_text(s))
    if idx is not None:
        return idx if idx >= 0 else None
    m = _LETTER_TEXT_RE.fullmatch(s)
    if m is not None:
        idx = ord(m.group(1) or m.group(2)) - 65
        if idx < n and norms[idx] and normalize_text(m.group(3)) == norms[idx]:
            return idx
    return None


# --------------------------------------------------------------- think conclusion
#
# The think is scanned backwards from its end: candidate keywords ("answer",
# "option", "choice", "(") are found with str.rfind on a lower-cased copy and the
# anchored patterns below are tried at each; the first that matches is the last
# conclusion. That is linear and, since conclusions sit at the end, usually
# touches only the tail of the text.

_VERB = r"(?:\s+(?i:is|was|would\s+be|should\s+be|must\s+be|will\s+be|=))"
# The letter is a lone capital: the next character may not be a letter or digit,
# so "Because" never reads as B. A hedge such as "answer is A or B" is no conclusion.
_NOT_HEDGE = r"(?![A-Za-z0-9])(?!\s*(?:(?i:or|and)\s|/|,)\s*\(?[A-Z](?![A-Za-z0-9]))"
_LETTER_TAIL = r"?\s*[:=]?\s*[*\"'`]*\(?([A-Z])\)?" + _NOT_HEDGE
# "answer is B", "answer: (B)", "answer is option B", "final answer = **C**"
_ANSWER_LETTER_RE = re.compile(
    r"\b(?i:answer)" + _VERB + r"?\s*[:=]?\s*(?:(?i:option|choice)\s*)?[*\"'`]*\(?([A-Z])\)?" + _NOT_HEDGE
)
# "option B", "choice: C", "option is (D)"
_OPTION_LETTER_RE = re.compile(r"\b(?i:option|choice)" + _VERB + _LETTER_TAIL)
# "(B)"
_PAREN_LETTER_RE = re.compile(r"\(([A-Z])\)" + _NOT_HEDGE)
# "answer is <text>", "answer: <text>"
_TEXT_INTRO_RE = re.compile(
    r"\b(?i:answer(?:\s+(?:is|was|would\s+be|should\s+be|must\s+be|will\s+be)\s*:?|\s*[:=]))\s*"
)
_TEXT_HEDGE_RE = re.compile(r"\s*(?:(?:or|and)\s|/|,)\s*(?:option\s+|the\s+)?")
_SENTENCE_END_RE = re.compile(r"[.!?;,](?=\s|$)|\n")
_ASCII_LOWER = {c: c + 32 for c in range(65, 91)}
_KEYWORDS = ("answer", "option", "choice", "(")


def _lower_same_length(text: str) -> str:
    low = text.lower()
    return low if len(low) == len(text) else text.translate(_ASCII_LOWER)


def _candidates(low: str):
    """(keyword, position) of every candidate keyword, last first."""
    pos = [low.rfind(k) for k in _KEYWORDS]
    while True:
        p = max(pos)
        if p < 0:
            return
        k = pos.index(p)
        yield k, p
        pos[k] = low.rfind(_KEYWORDS[k], 0, p)


def think_conclusion(think: str | None, options) -> int | None:
    """Option index of the think's last explicit conclusion, or ``None``.

    Conclusions: "answer is B", "answer: B", "(B)", "option B", and "answer is
    <option text>". A later conclusion overrides an earlier one; a letter that is
    not one of the options, and a hedge ("A or B"), are no conclusion.
    """
    if not think:
        return None
    info = _info(options)
    if info is None:
        return None
    n, norms, _ = info
    for k, p in _candidates(_lower_same_length(think)):
        letter = None
        if k == 0:  # answer
            m = _ANSWER_LETTER_RE.match(think, p)
            if m is not None:
                letter = ord(m.group(1)) - 65
                if letter >= n:
                    letter = None
            m = _TEXT_INTRO_RE.match(think, p)
            if m is not None:
                idx, length = _option_at(think, m.end(), norms)
                if idx is not None and (letter is None or length > 1):
                    return idx
        elif k == 3:  # (
            m = _PAREN_LETTER_RE.match(think, p)
            if m is not None:
                letter = ord(m.group(1)) - 65
        else:  # option / choice
            m = _OPTION_LETTER_RE.match(think, p)
            if m is not None:
                letter = ord(m.group(1)) - 65
        if letter is not None and letter < n:
            return letter
    return None


def _option_at(text: str, pos: int, norms) -> tuple[int | None, int]:
    """The longest option text that ``text[pos:]`` starts with (followed by a word
    boundary), as (index, normalised length); ``None`` for a hedge ("red or blue")."""
    longest = max((len(s) for s in norms), default=0)
    if longest == 0:
        return None, 0
    window = " ".join(text[pos : pos + 2 * longest + 16].split()).casefold().lstrip("*`\"' ")
    best, best_len = None, 0
    for i, s in enumerate(norms):
        L = len(s)
        if L > best_len and window.startswith(s) and (len(window) == L or not window[L].isalnum()):
            best, best_len = i, L
    if best is not None:
        m = _TEXT_HEDGE_RE.match(window, best_len)
        if m is not None and m.end() < len(window):
            other, _ = _option_at(window, m.end(), norms)
            if other is not None and other != best:
                return None, 0
    return best, best_len


def think_conclusion_text(think: str | None) -> str | None:
    """Free-form text of the think's last "answer is …" / "answer: …" conclusion
    (up to the end of its sentence), or ``None``."""
    if not think:
        return None
    low = _lower_same_length(think)
    p = low.rfind("answer")
    while p >= 0:
        m = _TEXT_INTRO_RE.match(think, p)
        if m is not None:
            rest = think[m.end() : m.end() + 400]
            end = _SENTENCE_END_RE.search(rest)
            if end is not None:
                rest = rest[: end.start()]
            rest = rest.strip().strip("*`\"' ")
            return rest or None
        p = low.rfind("answer", 0, p)
    return None


# ------------------------------------------------------------------ free-form

_LATEX_CMD_RE = re.compile(r"\\[A-Za-z]+")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
_WORD_RE = re.compile(r"[A-Za-z]{2,}")
_OK_GAP_RE = re.compile(r"[\s+\-*/^(){}\[\]=×÷·<>_a-zA-Z]*")


def _single_expression(pred: str, allow_lists: bool) -> bool:
    """Heuristic guard against answer spraying on the math path ("1 or 2",
    "1 2 3", "1, 2"): several numbers must be joined by operators or braces only."""
    s = _LATEX_CMD_RE.sub("*", pred.replace("$", " "))
    s = _THOUSANDS_RE.sub("", s)
    nums = list(_NUMBER_RE.finditer(s))
    if len(nums) <= 1:
        return True
    for a, b in zip(nums, nums[1:]):
        gap = s[a.end() : b.start()]
        if allow_lists:
            gap = gap.replace(",", "+").replace(";", "+")
        if not gap.strip() or _WORD_RE.search(gap) or not _OK_GAP_RE.fullmatch(gap):
            return False
    return True


def _mv_parse(text: str, timeout):
    from math_verify import parse

    parsed = parse(text, parsing_timeout=timeout)
    if not parsed and "$" not in text:
        parsed = parse(f"${text}$", parsing_timeout=timeout)
    return parsed


@lru_cache(maxsize=16384)
def _math_equal(gold: str, pred: str) -> bool:
    try:
        from math_verify import verify

        timeout = 5 if threading.current_thread() is threading.main_thread() else None
        g = _mv_parse(gold, timeout)
        if not g:
            return False
        p = _mv_parse(pred, timeout)
        if not p:
            return False
        return bool(verify(g, p, timeout_seconds=timeout))
    except Exception:  # math-verify must never take the reward down
        return False


def free_form_match(gold: str, pred: str | None) -> bool:
    """Free-form answer equality: normalised text, else numbers/LaTeX via math-verify."""
    if pred is None:
        return False
    g, p = normalize_text(gold), normalize_text(pred)
    if not p:
        return False
    if g == p:
        return True
    if not any(c.isdigit() for c in p) and "\\" not in p:
        return False
    if not _single_expression(pred, allow_lists=("," in gold or ";" in gold)):
        return False
    return _math_equal(gold.strip(), pred.strip())
