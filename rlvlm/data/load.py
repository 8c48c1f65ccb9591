"""Turn a recipe's dataset spec into canonical examples (see docs/concepts.md, "The canonical example").

`shapes` is generated (rlvlm.data.shapes); every other name is a `datasets`-backed adapter
registered in rlvlm.data.adapters (SAT, Pixmo-Count, Geometry3K, the paper's evaluation sets and
`custom`).
"""

from __future__ import annotations

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


def load_examples(spec: DatasetSpec | list[DatasetSpec]) -> list[dict]:
    """Canonical examples of one spec, or of several concatenated (a training mix)."""
    if isinstance(spec, list):
        return [ex for one in spec for ex in load_examples(one)]
    check_dataset(spec)
    if spec.name in EMBEDDED:
        from rlvlm.data import shapes

        return shapes.generate_examples(spec.split, spec.n, seed=spec.seed)
    from rlvlm.data.adapters import load_adapted

    return load_adapted(spec)
