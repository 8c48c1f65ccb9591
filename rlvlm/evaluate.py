"""Robustness evaluation: batched greedy generation under each condition, a teacher-forced pass for
the option-letter distribution, and one trace row per (step, dataset, condition)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from rewards.accuracy import accuracy_reward
from rewards.faithfulness import consistency_reward
from rlvlm.metrics import option_entropy

ANSWER_OPEN = "<answer>"


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _encode(processor, examples: list[dict], suffixes: list[str] | None = None):
    """Render prompts (open pre-fill included) plus optional text suffixes, with images, left-padded."""
    texts = processor.apply_chat_template([ex["prompt"] for ex in examples], add_generation_prompt=True, tokenize=False)
    if suffixes is not None:
        texts = [t + s for t, s in zip(texts, suffixes)]
    images = [[ex["image"]] for ex in examples]
    processor.tokenizer.padding_side = "left"
    return processor(text=texts, images=images, padding=True, return_tensors="pt")


@torch.no_grad()
def generate(model, processor, examples: list[dict], max_new_tokens: int = 64, batch_size: int = 64) -> list[str]:
    """Greedy completions (the text after any think_prefix)."""
    model.eval()
    out = []
    for batch in _chunks(examples, batch_size):
        enc = _encode(processor, batch).to(model.device)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        out += processor.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def _forced_answer_suffix(completion: str) -> str:
    """The completion cut right after its first `<answer>`, closing the think and opening the answer if needed."""
    if ANSWER_OPEN in completion:
        return completion[: completion.index(ANSWER_OPEN) + len(ANSWER_OPEN)]
    if "</think>" in completion:
        return completion[: completion.index("</think>") + len("</think>")] + ANSWER_OPEN
    return completion + "</think>" + ANSWER_OPEN


@torch.no_grad()
def option_probs(model, processor, examples: list[dict], completions: list[str], batch_size: int = 64) -> list[list[float]]:
    """P(option letter) at the first answer-letter position, restricted to the option letters and renormalised."""
    model.eval()
    tok = processor.tokenizer
    probs = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        suffixes = [_forced_answer_suffix(c) for c in completions[start : start + batch_size]]
        enc = _encode(processor, batch, suffixes).to(model.device)
        logits = model(**enc).logits[:, -1, :].float()
        for row, ex in zip(logits, batch):
            letters = [chr(ord("A") + k) for k in range(len(ex["options"]))]
            ids = [tok.convert_tokens_to_ids(tok.tokenize(letter)[0]) for letter in letters]
            probs.append(torch.softmax(row[ids], dim=-1).tolist())
    return probs


def score(examples: list[dict], completions: list[str], probs: list[list[float]]) -> list[dict]:
    """Per-example records: correct, consistent, option probabilities."""
    answers = [ex["answer"] for ex in examples]
    options = [ex["options"] for ex in examples]
    prefixes = [ex.get("think_prefix") for ex in examples]
    correct = accuracy_reward(completions, answers, options=options, think_prefix=prefixes)
    consistent = consistency_reward(completions, options=options, think_prefix=prefixes)
    records = []
    for ex, c, ok, cons, p in zip(examples, completions, correct, consistent, probs):
        gold = ord(ex["answer"]) - ord("A")
        records.append(
            {
                "id": ex["id"],
                "condition": ex.get("condition", "base"),
                "response": (ex.get("think_prefix") or "") + c,
                "correct": bool(ok),
                "consistent": bool(cons),
                "option_probs": p,
                "p_correct": p[gold] if 0 <= gold < len(p) else 0.0,
            }
        )
    return records


def trace_row(step: int, dataset: str, condition: str, records: list[dict]) -> dict:
    n = len(records)
    cats = {"consistent_correct": 0, "inconsistent_correct": 0, "consistent_incorrect": 0, "inconsistent_incorrect": 0}
    for r in records:
        key = ("consistent" if r["consistent"] else "inconsistent") + ("_correct" if r["correct"] else "_incorrect")
        cats[key] += 1
    mean = lambda xs: float(sum(xs) / n) if n else 0.0  # noqa: E731
    return {
        "step": step,
        "dataset": dataset,
        "condition": condition,
        "n": n,
        "accuracy": mean([r["correct"] for r in records]),
        "consistency": mean([r["consistent"] for r in records]),
        "consistent_accuracy": cats["consistent_correct"] / n if n else 0.0,
        "option_entropy": mean([option_entropy(r["option_probs"]) for r in records]),
        "p_correct": mean([r["p_correct"] for r in records]),
        "categories": cats,
    }


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append whole lines in one write and fsync, so a killed run never leaves half a row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in rows)
    with open(path, "a") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def evaluate_examples(model, processor, examples: list[dict], max_new_tokens: int = 64, batch_size: int = 64) -> list[dict]:
    completions = generate(model, processor, examples, max_new_tokens, batch_size)
    probs = option_probs(model, processor, examples, completions, batch_size)
    return score(examples, completions, probs)
