"""Turn a recipe's dataset spec into canonical examples (see docs/concepts.md, "The canonical example").

`shapes` is generated (rlvlm.data.shapes); every other name is a `datasets`-backed adapter
registered in rlvlm.data.adapters (SAT, Pixmo-Count, Geometry3K, the paper's evaluation sets and
`custom`).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from rlvlm.recipe import DatasetSpec, RecipeError

EMBEDDED = {"shapes"}
_SOURCE_FIELDS = ("hub_id", "config", "path", "image_root", "columns")


def known_datasets() -> list[str]:
    from rlvlm.data.adapters import ADAPTERS

    return sorted(EMBEDDED | set(ADAPTERS))


def check_dataset(spec: DatasetSpec | list[DatasetSpec]) -> None:
    """Every check that needs no data: the name, and the spec's source fields."""
    if isinstance(spec, list):
        for one in spec:
            check_dataset(one)
        return
    if spec.name in EMBEDDED:
        given = [f for f in _SOURCE_FIELDS if getattr(spec, f)]
        if given:
            raise RecipeError(f"Dataset '{spec.name}' is generated; {', '.join(given)} do(es) not apply to it.")
        return
    from rlvlm.data.adapters import ADAPTERS, check_spec

    if spec.name not in ADAPTERS:
        raise RecipeError(f"Unknown dataset '{spec.name}'. Known: {known_datasets()}.")
    check_spec(spec)


def load_examples(spec: DatasetSpec | list[DatasetSpec], max_pixels: int | None = None) -> list[dict]:
    """Canonical examples of one spec, or of several concatenated (a training mix). A real dataset's
    images larger than `max_pixels` (the recipe's `model.max_pixels`) are downscaled to it."""
    if isinstance(spec, list):
        return [ex for one in spec for ex in load_examples(one, max_pixels)]
    check_dataset(spec)
    if spec.name in EMBEDDED:
        from rlvlm.data import shapes

        return shapes.generate_examples(spec.split, spec.n, seed=spec.seed)
    from rlvlm.data.adapters import load_adapted

    return load_adapted(spec, max_pixels)


def items_digest(examples: list[dict]) -> dict[str, tuple[int, str]]:
    """{dataset source: (number of examples, sha256 of their ids in order)}."""
    ids: dict[str, list[str]] = defaultdict(list)
    for ex in examples:
        ids[str(ex.get("source"))].append(str(ex["id"]))
    return {source: (len(v), hashlib.sha256("\n".join(v).encode()).hexdigest()) for source, v in ids.items()}


def check_same_items(sets: dict[str, list[dict]]) -> None:
    """Stop, on every process alike, when the processes do not hold the same items: a row one process
    skipped (an image download that failed on one machine) would otherwise score completions against
    the wrong items, or leave the processes with different batch counts until a collective hangs.

    `sets`: {what the examples are, e.g. "data.train": its examples}. Each process's digest of the ids
    (`items_digest`) is gathered with torch.distributed's all_gather_object; in one process (or before
    torch.distributed is initialised) there is nothing to compare. The DataError names the set and the
    dataset that differ, and what each process holds."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    mine = {name: items_digest(examples) for name, examples in sets.items()}
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    problems = []
    for name in sets:
        sources = sorted({s for digests in gathered for s in digests[name]})
        for source in sources:
            held = [digests[name].get(source, (0, "")) for digests in gathered]
            if len(set(held)) > 1:
                each = ", ".join(f"process {rank}: {n} items ({digest[:12] or 'none'})"
                                 for rank, (n, digest) in enumerate(held))
                problems.append(f"Dataset '{source}' ({name}): the processes loaded different items ({each})")
    if problems:
        from rlvlm.data.adapters import DataError

        raise DataError("; ".join(problems) + ". A row was skipped on some processes only (see each process's "
                        "'skipped' warning: an image that could not be fetched there?). Fetch the images "
                        "into a cache every process reads (RLVLM_CACHE), or give image_root, and run again.")
