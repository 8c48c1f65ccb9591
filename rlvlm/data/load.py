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


def load_same_items(specs: dict[str, DatasetSpec | list[DatasetSpec]], max_pixels: int | None = None) -> dict[str, list[dict]]:
    """{what the examples are, e.g. "data.train": its spec or specs} -> {the same name: its examples},
    loaded on every process and checked to be the same items on all of them (`check_same_items`).

    A load that fails on some processes only (a download that failed on one machine leaving it no
    usable row, a file the local main process could not read where the others found a cache) must not
    leave the processes in different collectives: each spec is loaded even after another one failed (so
    every process enters every spec's `main_process_first` block), and the one gather of
    `check_same_items` carries each process's errors with its digests. Every process then raises the
    same error."""
    sets: dict[str, list[dict]] = {}
    errors: list[tuple[str, Exception]] = []
    for name, spec in specs.items():
        sets[name] = []
        for one in spec if isinstance(spec, list) else [spec]:
            try:
                sets[name].extend(load_examples(one, max_pixels))
            except Exception as e:  # noqa: BLE001 - shared with every process in check_same_items
                errors.append((name, e))
    check_same_items(sets, errors)
    return sets


def check_same_items(sets: dict[str, list[dict]], errors: list[tuple[str, Exception]] = ()) -> None:
    """Stop, on every process alike, when the processes do not hold the same items: a row one process
    skipped (an image download that failed on one machine) would otherwise score completions against
    the wrong items, or leave the processes with different batch counts until a collective hangs.

    `sets`: {what the examples are, e.g. "data.train": its examples}. `errors`: (name, exception) for each
    load that failed on this process (see `load_same_items`). Each process's digest of the ids
    (`items_digest`) and its error messages are gathered with torch.distributed's all_gather_object; in one
    process (or before torch.distributed is initialised) there is nothing to compare, and the first
    error is raised as it is. When every process failed alike, its error is raised as it is on each; when
    some failed otherwise or not at all, a DataError naming the sets, the processes and their errors. The
    DataError for different items names the set and the dataset that differ, and what each process holds."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        if errors:
            raise errors[0][1]
        return
    from rlvlm.data.adapters import DataError

    messages = [(name, f"{type(e).__name__}: {e}") for name, e in errors]
    mine = {"digests": {name: items_digest(examples) for name, examples in sets.items()}, "errors": messages}
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if any(g["errors"] for g in gathered):
        if errors and all(g["errors"] == messages for g in gathered):
            raise errors[0][1]  # the same error everywhere (a recipe or file problem): as it is
        failed = "; ".join(f"process {rank} ({name}): {message}" for rank, g in enumerate(gathered)
                           for name, message in g["errors"])
        fine = [str(rank) for rank, g in enumerate(gathered) if not g["errors"]]
        loaded = f"; process(es) {', '.join(fine)} loaded every set" if fine else ""
        cause = errors[0][1] if errors else None
        raise DataError(f"Loading the data failed on some processes only: {failed}{loaded}. Every process "
                        "stops; a failure on one machine only (an image it could not fetch, a file it could "
                        "not read) calls for a cache every process reads (RLVLM_CACHE), or image_root.") from cause
    problems = []
    for name in sets:
        sources = sorted({s for g in gathered for s in g["digests"][name]})
        for source in sources:
            held = [g["digests"][name].get(source, (0, "")) for g in gathered]
            if len(set(held)) > 1:
                each = ", ".join(f"process {rank}: {n} items ({digest[:12] or 'none'})"
                                 for rank, (n, digest) in enumerate(held))
                problems.append(f"Dataset '{source}' ({name}): the processes loaded different items ({each})")
    if problems:
        raise DataError("; ".join(problems) + ". A row was skipped on some processes only (see each process's "
                        "'skipped' warning: an image that could not be fetched there?). Fetch the images "
                        "into a cache every process reads (RLVLM_CACHE), or give image_root, and run again.")
