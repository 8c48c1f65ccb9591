"""Turn a recipe's dataset spec into canonical examples (see DESIGN.md, "Canonical example")."""

from __future__ import annotations

from rlvlm.recipe import DatasetSpec, RecipeError

EMBEDDED = {"shapes"}


def check_dataset(spec: DatasetSpec) -> None:
    if spec.name not in EMBEDDED:
        raise RecipeError(f"Unknown dataset '{spec.name}'. Known: {sorted(EMBEDDED)}.")


def load_examples(spec: DatasetSpec) -> list[dict]:
    check_dataset(spec)
    from rlvlm.data import shapes

    return shapes.generate_examples(spec.split, spec.n, seed=spec.seed)
