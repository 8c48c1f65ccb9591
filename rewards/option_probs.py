"""Option probabilities: one definition for the evaluator (``rlvlm.evaluation.generation``: P(correct),
option entropy) and the counterfactual reward (``rewards.counterfactual``: the forced answer).

At the position where the answer letter goes, the logits restricted to the single-token spellings of
the option letters ("B" and " B", those the tokenizer has), softmaxed together and summed per letter
(docs/concepts.md, "rlvlm.metrics"). :func:`forced_option_probabilities` reads them with one teacher-forced forward
of a left-padded batch whose texts each end where the letter goes (``...<answer>``);
:func:`letter_probabilities` turns logits read elsewhere (the evaluator reads them during generation)
into the same numbers.

Here, not in ``rlvlm``, because ``rewards`` must import on its own; importing this module pulls in no
torch (the functions import it when called).
"""

from __future__ import annotations

import functools

from rewards.options import letters

__all__ = ["letter_token_ids", "letter_probabilities", "encode_left_padded", "forced_option_probabilities"]


def letter_token_ids(tokenizer, n_options: int) -> list[list[int]]:
    """Per option letter, the single-token spellings of it ("B" and " B") that the tokenizer has.
    ``ValueError`` when a letter has none. ``letter_token_ids(tok, n)[:k] == letter_token_ids(tok, k)``."""
    out = []
    for letter in letters(n_options):
        ids = []
        for text in (letter, " " + letter):
            enc = tokenizer.encode(text, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(enc[0])
        if not ids:
            raise ValueError(f"the tokenizer has no single token for option letter {letter!r}")
        out.append(ids)
    return out


@functools.lru_cache(maxsize=64)
def _cached_letter_token_ids(tokenizer, n_options: int) -> list[list[int]]:
    return letter_token_ids(tokenizer, n_options)


def letter_probabilities(logits, groups: list[list[int]]) -> list[float]:
    """Softmax over the letters' token logits (``logits`` in the order of the flattened ``groups``), summed
    per letter: the option probabilities."""
    import torch

    p = torch.softmax(logits.float(), dim=-1).tolist()
    probs, k = [], 0
    for g in groups:
        probs.append(float(sum(p[k : k + len(g)])))
        k += len(g)
    return probs


def tokenizer_of(processor):
    return getattr(processor, "tokenizer", processor)


def encode_left_padded(processor, texts: list[str], images: list[list] | None = None):
    """A left-padded batch (every row ends at its last position); ``images`` one list per text, or None.
    The tokenizer's padding side is restored after."""
    tok = tokenizer_of(processor)
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        kwargs = {"images": images} if images is not None and any(images) else {}
        return processor(text=texts, padding=True, return_tensors="pt", **kwargs)
    finally:
        tok.padding_side = side


def forced_option_probabilities(model, processor, texts: list[str], images: list[list] | None,
                                n_options: list[int], letter_ids: dict | None = None) -> list[list[float]]:
    """One teacher-forced forward of ``texts`` (each ending where the answer letter goes) as one
    left-padded batch, under ``torch.no_grad``; per text the probabilities of its first ``n_options[i]``
    option letters ([] for 0). ``letter_ids``: an optional ``{n: letter_token_ids(tok, n)}`` cache."""
    import torch

    tok = tokenizer_of(processor)
    device = next(model.parameters()).device
    with torch.no_grad():
        enc = encode_left_padded(processor, texts, images).to(device)
        logits = model(**enc, logits_to_keep=1).logits[:, -1, :].float()
    out = []
    for row, n in zip(logits, n_options):
        if n == 0:
            out.append([])
            continue
        if letter_ids is None:
            groups = _cached_letter_token_ids(tok, n)
        else:
            if n not in letter_ids:
                letter_ids[n] = letter_token_ids(tok, n)
            groups = letter_ids[n]
        out.append(letter_probabilities(row[[i for g in groups for i in g]], groups))
    return out
