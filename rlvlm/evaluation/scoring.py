"""Per-example scoring: accuracy with the accuracy reward, consistency with the recipe's faithfulness
scorer, the answer letter's probabilities, into one record per (item, response)."""

from __future__ import annotations

from rlvlm.evaluation.items import item_images, own_think


def load_scorer(section):
    """The consistency scorer named by `evaluation.faithfulness` (rule | judge | counterfactual | a
    registered reward | module:function), a function with the faithfulness scorers' interface."""
    from rlvlm.composition import resolve

    return resolve(section.faithfulness, section.faithfulness_kwargs)[1]


def score(items: list[dict], completions: list[str], probs: list[list[float]], scorer=None) -> list[dict]:
    """Per-example records: response, parsed think/answer, correct, consistent, option probabilities."""
    from rewards.accuracy import accuracy_reward
    from rewards.options import LETTERS, resolve_gold
    from rewards.parsing import is_well_formatted, resolve_option, split_response
    from rlvlm.metrics import option_entropy

    if scorer is None:
        from rewards.faithfulness import consistency_reward as scorer
    options = [it.get("options") or None for it in items]
    prefixes = [it.get("think_prefix") for it in items]
    correct = accuracy_reward(completions, [it["answer"] for it in items], options=options, think_prefix=prefixes)
    pictures = [item_images(it) for it in items]  # decoded for this batch only
    consistent = scorer(
        completions,
        options=options,
        think_prefix=prefixes,
        prompts=[it["prompt"] for it in items],
        answer=[it["answer"] for it in items],
        image=[decoded[0] if it.get("image") is not None else None for it, decoded in zip(items, pictures)],
        images=[decoded if it.get("images") is not None else None for it, decoded in zip(items, pictures)],
    )
    records = []
    for it, c, ok, cons, p, opts, prefix in zip(items, completions, correct, consistent, probs, options, prefixes):
        response = (prefix or "") + c
        think, answer = split_response(response)
        gold = resolve_gold(it["answer"], opts) if opts else None
        pred = resolve_option(answer, opts) if opts else None
        implied, valid = reasoning_validity(it, think)
        records.append(
            {
                "dataset": it["dataset"],
                "condition": it.get("condition", "base"),
                "id": it["id"],
                "target": it.get("target"),
                "gold": LETTERS[gold] if gold is not None else it["answer"],
                "response": response,
                "think": think,
                "answer": answer,
                "pred": LETTERS[pred] if pred is not None else None,
                "correct": bool(ok),
                "consistent": None if cons is None else bool(cons),  # None: the scorer gave no verdict
                "format": is_well_formatted(response),
                "option_probs": p,
                "p_correct": float(p[gold]) if p and gold is not None and gold < len(p) else 0.0,
                "option_entropy": option_entropy(p) if p else None,
                "own_think": own_think(prefix, think),
                "implied": LETTERS[implied] if implied is not None else None,
                "reasoning_valid": valid,
            }
        )
    return records


def reasoning_validity(item: dict, think: str | None) -> tuple[int | None, bool | None]:
    """(the option the think's stated facts imply, whether its stated conclusion is that option), by the
    dataset's reader (`rlvlm.data.reasoning_reader`); (None, None) for a dataset without one. A think
    without usable facts or without a conclusion is not valid."""
    from rewards.parsing import think_conclusion
    from rlvlm.data import reasoning_reader

    reader = reasoning_reader(item.get("source"))
    options = item.get("options")
    if reader is None or not options or not item.get("question"):
        return None, None
    implied = reader(item["question"], options, think or "")
    concluded = think_conclusion(think, options) if think else None
    return implied, implied is not None and implied == concluded
