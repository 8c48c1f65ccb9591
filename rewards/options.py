"""The options of a multiple-choice example, and what its gold answer is: one rule, used by the data
adapters (``rlvlm.data.adapters``), the perturbations (``rlvlm.perturb``), the rewards and the evaluator.

It lives in ``rewards/`` because ``rewards`` must stay importable on its own (rewards are plain
functions that TRL, or a user's script, imports without ``rlvlm``), and ``rlvlm`` already imports
``rewards``; the other way round would make the rewards depend on the training package. Plain ``re``,
no torch.

Option letters: option ``i`` is ``LETTERS[i]``, ``A`` to ``Z``; a multiple-choice example has at
most 26 options.

**The gold rule** (:func:`gold_index`). A gold answer names option ``i`` of ``options`` when it is,
tried in this order:

1. an integer (``int`` or a numpy integer, not ``bool``): the option index ``i`` itself;
2. an upper-case letter alone, plain or decorated (``B``, ``(B)``, ``B.``, ``B)``, ``B:``, ``**B**``),
   within the options;
3. the text of exactly one option (case-insensitive, whitespace-collapsed, without surrounding quotes,
   markdown emphasis or a trailing full stop; an option stored with its own letter, ``"B. red"``,
   is read as ``red``);
4. a lower-case letter alone, plain or decorated (``b``, ``(b)``), within the options: after the
   texts, so with options ``["b", "c"]`` the gold ``"b"`` is the first option's text;
5. an upper-case letter followed by that option's text (``B. red``, ``B: red``, ``(B) red``, ``B red``).

Anything else cannot be read: a missing or blank answer, a letter or index outside the options, a
text two options share, a letter whose text is another option's (``B. blue`` where B is ``red``).
:func:`gold_index` raises :class:`GoldError` (a ``ValueError``) saying which; :func:`resolve_gold`
returns ``None`` instead (the accuracy reward scores such a row ``None``). ``strict=True`` (user data,
``custom`` sets) also refuses options that share a text and an answer that reads two ways (an index
or a letter that is also another option's text).

A canonical example's ``answer`` is the gold letter itself (:func:`gold_letter`); :func:`check_example`
validates an example against that.
"""

from __future__ import annotations

import math
import operator
import re
from functools import lru_cache

__all__ = [
    "LETTERS",
    "MAX_OPTIONS",
    "GoldError",
    "letters",
    "normalize_text",
    "gold_index",
    "gold_letter",
    "resolve_gold",
    "check_example",
]

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MAX_OPTIONS = len(LETTERS)


class GoldError(ValueError):
    """The gold answer cannot be read against the options; the message says why."""


def letters(n: int) -> str:
    """The letters of ``n`` options: ``letters(4) == "ABCD"``."""
    if n > MAX_OPTIONS:
        raise ValueError(f"{n} options: at most {MAX_OPTIONS} (A-Z) can be lettered")
    return LETTERS[:n]


# ----------------------------------------------------------------------------- option texts

_STRIP_CHARS = " \t\r\n*`\"'"


def normalize_text(text: str) -> str:
    """Case-folded, whitespace-collapsed text without surrounding quotes, markdown
    emphasis or a trailing full stop."""
    s = " ".join(text.split()).casefold().strip(_STRIP_CHARS)
    while s.endswith("."):
        s = s[:-1].rstrip(_STRIP_CHARS)
    return s


# An option text that carries its own letter, e.g. options stored as "B. red".
_OPTION_PREFIX_RE = re.compile(r"\(?([A-Z])[.:)]\s+|\(([A-Z])\)\s*")


def strip_own_letter(option, index: int) -> str:
    """The option's text (stripped) without the letter prefix it carries for its own position: "B. red"
    or "(B) red" at index 1 -> "red". A prefix of another letter ("A: red" at index 1) is part of the
    text and stays, as does a letter that would be the whole text ("(B)")."""
    s = str(option).strip()
    m = _OPTION_PREFIX_RE.match(s)
    if m is not None and (m.group(1) or m.group(2)) == LETTERS[index % 26] and m.end() < len(s):
        return s[m.end() :]
    return s


@lru_cache(maxsize=4096)
def _options_info(options: tuple) -> tuple[int, tuple[str, ...], dict[str, int]]:
    """(number of options, normalised texts, normalised text -> index; -1 when two
    options share a text)."""
    norms = [normalize_text(strip_own_letter(opt, i)) for i, opt in enumerate(options)]
    lookup: dict[str, int] = {}
    for i, s in enumerate(norms):
        if not s:
            continue
        lookup[s] = -1 if s in lookup else i
    return len(options), tuple(norms), lookup


def options_info(options):
    """``_options_info`` of any options sequence (``None`` for no options); cached."""
    if not options:
        return None
    try:
        return _options_info(tuple(options))
    except TypeError:  # unhashable option entries
        return _options_info(tuple(str(o) for o in options))


# ----------------------------------------------------------------------------- the gold rule

# A letter alone: "B", "(B)", "B.", "B)", "B:", "(B).", "(B" (quotes and markdown stripped first).
_GOLD_LETTER_RE = re.compile(r"\(?([A-Za-z])\)?[.:)]?")
# An upper-case letter and a text: "B. red", "B: red", "B) red", "(B) red", "(B)red", "B red".
_GOLD_LETTER_TEXT_RE = re.compile(r"\(?([A-Z])(?:\)[.:]?\s*|[.:]\s*|\s+)(\S.*)", re.DOTALL)


def _missing(answer) -> bool:
    if answer is None or isinstance(answer, bool):
        return True
    if isinstance(answer, float) and math.isnan(answer):
        return True
    return isinstance(answer, str) and not answer.strip()


def gold_index(answer, options, *, strict: bool = False) -> int:
    """The index of the option ``answer`` names, by the gold rule (module docstring); raises
    :class:`GoldError` when it names none. ``strict``: also refuse options that share a text, and an
    answer (index or letter) that is also the text of another option than the one it names."""
    if not options:
        raise GoldError("no options for a multiple-choice question")
    info = options_info(options)
    n, norms, lookup = info
    if n > MAX_OPTIONS:
        raise GoldError(f"{n} options: at most {MAX_OPTIONS} (A-Z)")
    if strict:
        first: dict[str, int] = {}
        for i, s in enumerate(norms):
            if s and s in first:
                raise GoldError(f"duplicate option {options[i]!r} (options {LETTERS[first[s]]} and {LETTERS[i]})")
            first[s] = i
    if _missing(answer):
        raise GoldError("no gold answer")
    index, how = _read(answer, options, info)
    if strict and how != "text":
        as_text = lookup.get(normalize_text(str(answer)), -1)
        if as_text >= 0 and as_text != index:
            said = f"index {answer}" if how == "index" else f"letter {LETTERS[index]}"
            raise GoldError(f"gold {answer!r} is ambiguous: option {LETTERS[as_text]}'s text, or {said} "
                            f"(option {LETTERS[index]}, {options[index]!r}); give the letter")
    return index


def _read(answer, options, info) -> tuple[int, str]:
    """(index, how it was read: index | letter | text) or GoldError."""
    n, norms, lookup = info
    if not isinstance(answer, str):
        try:
            index = operator.index(answer)  # int, numpy integer
        except TypeError:
            answer = str(answer)
        else:
            if 0 <= index < n:
                return index, "index"
            raise GoldError(f"gold index {index} not among {n} options")
    text = answer.strip()
    bare = text.strip(_STRIP_CHARS)
    m = _GOLD_LETTER_RE.fullmatch(bare)
    if m is not None and m.group(1).isupper() and ord(m.group(1)) - 65 < n:  # 2. "B", "(B)"
        return ord(m.group(1)) - 65, "letter"
    index = lookup.get(normalize_text(text))  # 3. an option's text
    if index is not None:
        if index < 0:
            raise GoldError(f"gold {answer!r} is ambiguous: the text of several options")
        return index, "text"
    if m is not None:  # 4. "b", "(b)"; or an upper-case letter outside the options
        index = ord(m.group(1).upper()) - 65
        if index < n:
            return index, "letter"
        raise GoldError(f"gold {answer!r} not among options {LETTERS[:n]}")
    m = _GOLD_LETTER_TEXT_RE.fullmatch(bare)
    if m is not None and ord(m.group(1)) - 65 < n:  # 5. "B. red"
        index = ord(m.group(1)) - 65
        if norms[index] and normalize_text(m.group(2)) == norms[index]:
            return index, "letter"
        raise GoldError(f"gold {answer!r} disagrees with option {LETTERS[index]} ({options[index]!r})")
    raise GoldError(f"gold {answer!r} not among options")


def gold_letter(answer, options, *, strict: bool = False) -> str:
    """The gold option letter (the canonical ``answer``); raises :class:`GoldError`."""
    return LETTERS[gold_index(answer, options, strict=strict)]


def resolve_gold(gold, options) -> int | None:
    """Index of the gold option by the gold rule, or ``None`` when it cannot be read (or there are no
    options)."""
    try:
        return gold_index(gold, options)
    except GoldError:
        return None


# ----------------------------------------------------------------------------- canonical examples


def check_example(example: dict) -> None:
    """Raise ``ValueError`` unless ``example`` is canonical: ``options`` a list of at most 26 non-empty
    strings, and ``answer`` one of their letters (multiple choice) or a non-empty text (free form)."""
    options = example.get("options")
    if options is None:
        options = []
    if not isinstance(options, (list, tuple)):
        raise ValueError(f"options must be a list, not {type(options).__name__}")
    if len(options) > MAX_OPTIONS:
        raise ValueError(f"{len(options)} options: at most {MAX_OPTIONS} (A-Z)")
    for i, option in enumerate(options):
        if not isinstance(option, str) or not option.strip():
            raise ValueError(f"option {LETTERS[i]} ({option!r}) is not a non-empty text")
    answer = example.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"answer {answer!r} is not a non-empty text")
    if options and (len(answer) != 1 or answer not in LETTERS[: len(options)]):
        raise ValueError(f"answer {answer!r} is not one of the option letters {LETTERS[: len(options)]}")
