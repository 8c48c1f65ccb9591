"""What one evaluation runs on: prompt-ready items for every (eval set x condition), their prompt
lengths in tokens, the batches they are run in, and the text mechanics around the answer letter.

The items are the same at every checkpoint: each eval set is the seeded sample its DatasetSpec names
(`n` of a `seed`ed permutation), perturbed with the evaluation's seed.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger("rlvlm.evaluation")

ANSWER_OPEN = "<answer>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def dataset_labels(specs) -> list[str]:
    """A unique label per eval DatasetSpec: its name, qualified by split (then position) when repeated."""
    names = [s.name for s in specs]
    labels = [s.name if names.count(s.name) == 1 else f"{s.name}-{s.split}" for s in specs]
    return [lab if labels.count(lab) == 1 else f"{lab}-{i}" for i, lab in enumerate(labels)]


def load_eval_sets(recipe) -> dict[str, list[dict]]:
    """{label: examples} of every eval set; the same items on every process, or the same error on all
    (also when a set fails to load on some processes only: see rlvlm.data.load.load_same_items)."""
    from rlvlm.data.load import load_same_items

    labels = dataset_labels(recipe.data.eval)
    sets = load_same_items({f"data.eval {label}": spec for label, spec in zip(labels, recipe.data.eval)},
                           max_pixels=recipe.model.max_pixels)
    return {label: sets[f"data.eval {label}"] for label in labels}


def resolve_conditions(conditions) -> tuple[str, ...]:
    """The conditions to evaluate: all eight when none are named (None or empty)."""
    from rlvlm.conditions import check_conditions

    return check_conditions(conditions or None)


def prepare_items(eval_sets: dict[str, list[dict]], conditions, seed: int = 0) -> list[dict]:
    """Prompt-ready examples for every (dataset, condition); an example a condition cannot be built
    for (e.g. a non-numeric free-form answer under wrong_*) is left out of that condition."""
    from rlvlm.perturb import perturb

    items, skipped = [], 0
    for label, examples in eval_sets.items():
        for condition in conditions:
            for i, ex in enumerate(examples):
                try:
                    item = perturb(ex, condition, seed=seed + i)
                except ValueError:
                    skipped += 1
                    continue
                item["dataset"] = label
                items.append(item)
    if skipped:
        log.warning("%d (example, condition) pairs cannot be built and are left out of the evaluation", skipped)
    return items


def stored_images(item: dict) -> list:
    """An item's images as the example keeps them (encoded bytes, or the generated sets' PIL images)."""
    if item.get("images") is not None:
        return list(item["images"])
    return [item["image"]] if item.get("image") is not None else []


def item_images(item: dict) -> list:
    """An item's images decoded (RGB PIL images), for the batch that uses them."""
    from rlvlm.data.images import decode

    return [decode(v) for v in stored_images(item)]


# ============================================================================ lengths and batches


def image_token_count(processor, image) -> int:
    """How many tokens `image` becomes in the prompt (Qwen-VL: merged patches, after resizing to the
    processor's pixel limits). Read from the image processor's own arithmetic where it has it, else
    by processing the image."""
    from rlvlm.data.images import decode, size

    image_processor = processor.image_processor
    if hasattr(image_processor, "get_number_of_image_patches"):
        width, height = size(image)  # from the header: no decoding
        patches = image_processor.get_number_of_image_patches(height, width)
        return patches // getattr(image_processor, "merge_size", 1) ** 2
    out = processor(text=[processor.image_token], images=[decode(image)], return_tensors="pt")
    return int(out["input_ids"].shape[1])


def prompt_lengths(processor, items: list[dict]) -> list[int]:
    """Each item's prompt length in tokens, image tokens included (`_text` is its rendered prompt)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    text_ids = tokenizer([it["_text"] for it in items], add_special_tokens=False)["input_ids"]
    per_image: dict[int, int] = {}  # the conditions of one example share its image objects
    lengths = []
    for item, ids in zip(items, text_ids):
        images = stored_images(item)
        extra = 0
        for image in images:
            if id(image) not in per_image:
                per_image[id(image)] = image_token_count(processor, image)
            extra += per_image[id(image)] - 1  # the rendered text holds one placeholder token per image
        lengths.append(len(ids) + extra)
    return lengths


def plan_batches(lengths: list[int], max_rows: int, max_tokens: int, new_tokens: int,
                 groups: list | None = None) -> list[list[int]]:
    """Global batches of fixed composition, whatever the process count: items sorted by `groups` (the
    evaluator passes each item's condition and dataset), then prompt length, then position, and cut so
    that a batch's padded size, rows x (longest prompt + new tokens), stays within `max_tokens` and its
    rows within `max_rows`. An item longer than the budget runs alone. Grouping matters because a batch
    decodes until its longest response ends, and response lengths follow the condition (a pre-filled
    think is often closed at once; stop_think answers without reasoning)."""
    keys = groups if groups is not None else [0] * len(lengths)
    order = sorted(range(len(lengths)), key=lambda i: (keys[i], lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        rows, width = len(current) + 1, max(longest, lengths[i])  # a new group may start shorter
        if current and (rows > max_rows or rows * (width + new_tokens) > max_tokens):
            batches.append(current)
            current, width = [], lengths[i]
        current.append(i)
        longest = width
    if current:
        batches.append(current)
    return batches


# ============================================================================ text around the answer


def forced_answer_suffix(think_prefix: str | None, completion: str) -> str:
    """The completion cut right where the answer letter goes: after its first `<answer>` (and an
    opening parenthesis it wrote there), closing the think and opening the answer when the model did
    not. Returned relative to the end of the prompt (which already holds any think prefix)."""
    prefix = think_prefix or ""
    response = prefix + completion
    k = response.find(ANSWER_OPEN, len(prefix))
    if k >= 0:
        end = k + len(ANSWER_OPEN)
        m = re.match(r"\s*\(", response[end:])
        cut = response[: end + (m.end() if m else 0)]
    else:
        j = response.find(THINK_CLOSE)
        if j < 0:
            cut = response + THINK_CLOSE + ANSWER_OPEN
        else:
            cut = response[: max(j + len(THINK_CLOSE), len(prefix))] + ANSWER_OPEN
    return cut[len(prefix) :]


def own_think(think_prefix: str | None, think: str | None) -> str:
    """The part of the think the model wrote itself (a pre-filled open think is removed; a pre-filled
    closed think leaves nothing)."""
    if not think:
        return ""
    if think_prefix:
        if THINK_CLOSE in think_prefix:
            return ""
        pre = think_prefix.split(THINK_OPEN, 1)[-1].strip()
        if think.startswith(pre):
            return think[len(pre) :].strip()
    return think
