"""Names the recipe validates against, kept here so that the recipe imports no data or perturbation
module (both of those import these names from here instead):

- the eight evaluation conditions (docs/concepts.md, "The eight conditions") and the rule for a
  mapping of conditions to probabilities (augmentation, warm_start.captions), used by rlvlm.perturb;
- the embedded shapes benchmark's question families and the option texts each can offer, used by
  rlvlm.data.shapes and keying warm_start.teacher_confusions.

Imports nothing.
"""

from __future__ import annotations

CONDITIONS = (
    "base",
    "stop_think",
    "wrong_think",
    "wrong_think_hedge",
    "wrong_caption",
    "wrong_caption_hedge",
    "correct_caption",
    "correct_think",
)


def check_conditions(names) -> tuple[str, ...]:
    """The condition names as a tuple, all eight when `names` is None; ValueError naming any unknown one."""
    if names is None:
        return CONDITIONS
    unknown = [c for c in names if c not in CONDITIONS]
    if unknown:
        raise ValueError(f"unknown condition(s) {unknown}; valid: {', '.join(CONDITIONS)}")
    return tuple(names)


def check_probs(probs: dict[str, float]) -> None:
    """ValueError unless ``probs`` maps known conditions to numbers in [0, 1] summing to at most 1."""
    unknown = [k for k in probs if k not in CONDITIONS]
    if unknown:
        raise ValueError(f"unknown augmentation condition(s) {unknown}; valid conditions: {', '.join(CONDITIONS)}")
    bad = {k: v for k, v in probs.items() if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0)}
    if bad:
        raise ValueError(f"augmentation probabilities must be numbers in [0, 1]: {bad}")
    total = sum(probs.values())
    if total > 1.0 + 1e-9:
        raise ValueError(f"augmentation probabilities sum to {total:.4g} > 1")


# The shapes benchmark's vocabulary (rlvlm.data.shapes generates its questions from it).
COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle", "diamond")
FAMILIES = ("count", "attribute", "position", "compare")
RELATIONS = ("left of", "right of", "above", "below")
COUNT_OPTIONS = ("0", "1", "2", "3")
# The option texts each family's questions can offer (attribute: colours or shapes, by question).
FAMILY_OPTIONS = {"count": COUNT_OPTIONS, "attribute": COLORS + SHAPES, "position": RELATIONS, "compare": COLORS}
