"""Test oracles for the shapes benchmark, independent of how its examples are built (moved out of
rlvlm.data.shapes, whose runtime never calls them; issue 21):

- ``scene_from_image`` / ``check_answer``  the scene graph read back from the pixels, and the gold
  letter re-derived from it (or from the stored scene graph);
- ``statement_is_true``  a caption or a reasoning text checked against the scene graph.

They read the question forms and tallies of rlvlm.data.shapes, whose private names they import.
"""

from __future__ import annotations

import re

from PIL import Image

from rlvlm.data.shapes import (
    _C,
    _CONCLUSION,
    _NUMBER_WORDS,
    _Q_COLOR_OF,
    _Q_COUNT,
    _Q_EXTREME,
    _Q_SHAPE_OF,
    _Q_WHERE,
    _S,
    BACKGROUND,
    COLORS,
    GRID,
    LETTERS,
    RGB,
    SHAPES,
    _color_counts,
    _letter_index,
    _tally,
    _tally_spec,
    solve,
)


# --------------------------------------------------------------------------
# reading a scene back from pixels


def scene_from_image(image: Image.Image, grid: int = GRID) -> dict:
    """Recover the scene graph from a rendered image (one blob per cell).

    Each non-background pixel takes the nearest palette colour; a cell's colour is
    its majority colour, and its shape is read from the blob's row widths
    15% below its top and 15% above its bottom (relative to its widest row):
    square (both wide), diamond (both narrow), triangle (narrow top, wide
    bottom), circle (both in between).
    """
    import numpy as np

    pixels = np.asarray(image.convert("RGB"), dtype=np.int32)
    height, width, _ = pixels.shape
    palette = np.array([RGB[c] for c in COLORS], dtype=np.int32)
    dist = ((pixels[:, :, None, :] - palette[None, None]) ** 2).sum(-1)
    nearest = dist.argmin(-1)
    ink = (pixels != np.array(BACKGROUND)).any(-1)
    objects = []
    for row in range(grid):
        y0, y1 = round(row * height / grid), round((row + 1) * height / grid)
        for col in range(grid):
            x0, x1 = round(col * width / grid), round((col + 1) * width / grid)
            mask = ink[y0:y1, x0:x1]
            if mask.sum() < 4:
                continue
            votes = np.bincount(nearest[y0:y1, x0:x1][mask], minlength=len(COLORS))
            color = COLORS[int(votes.argmax())]
            widths = mask.sum(1)
            rows = widths[widths > 0]
            h, wmax = len(rows), rows.max()
            k = round(0.15 * h)
            top, bottom = rows[k] / wmax, rows[h - 1 - k] / wmax
            if top > 0.9 and bottom > 0.9:
                shape = "square"
            elif top < 0.5 and bottom < 0.5:
                shape = "diamond"
            elif top < 0.5:
                shape = "triangle"
            else:
                shape = "circle"
            objects.append({"color": color, "shape": shape, "row": row, "col": col})
    return {"objects": objects, "grid": grid}


def check_answer(example: dict, from_pixels: bool = True) -> str:
    """Re-derive the gold letter independently of how the example was built.

    With ``from_pixels`` (default) the scene is read back from the image;
    otherwise the stored scene graph is used. The question is parsed and
    solved, and the answer text is looked up among the options.
    """
    grid = int(example.get("scene", {}).get("grid", GRID))
    scene = scene_from_image(example["image"], grid) if from_pixels else example["scene"]
    text = solve(scene, example["question"])
    hits = [LETTERS[i] for i, opt in enumerate(example["options"]) if opt == text]
    if len(hits) != 1:
        raise ValueError(f"answer {text!r} matches {len(hits)} options of {example['options']}")
    return hits[0]


# --------------------------------------------------------------------------
# checking captions and reasoning against the scene graph

_NUM = r"(\d+|" + "|".join(_NUMBER_WORDS) + r")"
_COUNT_CLAIMS = (re.compile(rf"\bthere (?:is|are) {_NUM}\b", re.I),
                 re.compile(rf"\bI see {_NUM}\b", re.I),
                 re.compile(rf"\bexactly {_NUM}\b", re.I))
_REL_CLAIMS = {
    "left of": re.compile(r"\b(?:left of|further left)\b", re.I),
    "right of": re.compile(r"\b(?:right of|further right)\b", re.I),
    "above": re.compile(r"\b(?:above|further up)\b", re.I),
    "below": re.compile(r"\b(?:below|further down)\b", re.I),
}
_LINE_CLAIM = re.compile(r"\bshare a (row|column)\b", re.I)
_CELL_CLAIM = re.compile(rf"\b({_C}) ({_S})(?::| is at| at) row (\d+), column (\d+)", re.I)
_LINE_TALLY = re.compile(rf"\b(rows?|columns?): ((?:(?:{_C}) (?:{_S}) \d+(?:, )?)+)", re.I)
_LINE_ITEM = re.compile(rf"\b({_C}) ({_S}) (\d+)\b", re.I)
_TALLY_CLAIM = re.compile(r"\bby (?:colour|shape): ((?:[a-z]+ ){1,2}\d+(?:, (?:[a-z]+ ){1,2}\d+)*)", re.I)
_COLOR_COUNT_CLAIM = re.compile(rf"\b({_C}) (\d+)\b", re.I)
_EXTREME_CLAIMS = (
    (re.compile(rf"\b({_C}) has the (most|fewest)\b", re.I), None),
    (re.compile(rf"\b(?:there are )?(more|fewer) ({_C}) objects than\b", re.I), "swap"),
    (re.compile(rf"\b({_C}) is the (most|least) common colou?r\b", re.I), None),
)


def _word(pattern: str, text: str) -> list[str]:
    return [w.lower() for w in re.findall(rf"\b({pattern})\b", text, re.I)]


def statement_is_true(example: dict, text: str, include_conclusion: bool = True) -> bool:
    """Whether every checkable claim in ``text`` (a caption or a reasoning
    text) holds in the example's scene graph.

    Claims are read per question family (counts, colours, shapes, relations,
    per-colour counts, extremes); with ``include_conclusion`` a concluding
    "answer is (X)" must name the option that the scene implies. Raises
    ValueError when the text contains no checkable claim.
    """
    scene, q = example["scene"], example["question"]
    truth = solve(scene, q)
    checks: list[bool] = []
    for m in _CONCLUSION.finditer(text):
        if include_conclusion:
            checks.append(example["options"][_letter_index(example, m.group(1))] == truth)
    body = _CONCLUSION.sub(" ", text)
    if _Q_COUNT.match(q) or _Q_COLOR_OF.match(q) or _Q_SHAPE_OF.match(q):
        _, key, _, color, shape = _tally_spec(q)
        truth_tally = _tally(scene, key, color, shape)
        wanted = COLORS if key == "colour" else SHAPES
        for m in _TALLY_CLAIM.finditer(body):
            for item in m.group(1).split(", "):
                *words, n = item.lower().split()
                value = next((w.removesuffix("s") for w in words if w.removesuffix("s") in wanted), None)
                checks.append(value is not None and truth_tally[value] == int(n))
        body = _TALLY_CLAIM.sub(" ", body)
    if _Q_COUNT.match(q):
        for pattern in _COUNT_CLAIMS:
            for w in pattern.findall(body):
                w = w.lower()
                n = int(w) if w.isdigit() else _NUMBER_WORDS.index(w)
                checks.append(n == int(truth))
    elif _Q_COLOR_OF.match(q):
        checks += [c == truth for c in _word(_C, body)]
    elif _Q_SHAPE_OF.match(q):
        checks += [s == truth for s in _word(_S, body)]
    elif _Q_WHERE.match(q):
        cells = {(o["color"], o["shape"]): (o["row"] + 1, o["col"] + 1) for o in scene["objects"]}
        for color, shape, row, col in _CELL_CLAIM.findall(body):
            checks.append(cells.get((color.lower(), shape.lower())) == (int(row), int(col)))
        for line, items in _LINE_TALLY.findall(body):
            axis = 1 if "column" in line.lower() else 0
            for color, shape, k in _LINE_ITEM.findall(items):
                cell = cells.get((color.lower(), shape.lower()))
                checks.append(cell is not None and cell[axis] == int(k))
        for rel, pattern in _REL_CLAIMS.items():
            checks += [rel == truth for _ in pattern.findall(body)]
        for line in _LINE_CLAIM.findall(body):
            horizontal = truth in ("left of", "right of")
            checks.append((line.lower() == "row") == horizontal)
    elif _Q_EXTREME.match(q):
        counts = _color_counts(scene)
        for color, k in _COLOR_COUNT_CLAIM.findall(body):
            checks.append(counts[color.lower()] == int(k))
        for pattern, order in _EXTREME_CLAIMS:
            for g in pattern.findall(body):
                kind, color = (g[0], g[1]) if order == "swap" else (g[1], g[0])
                kind, color = kind.lower(), color.lower()
                others = [k for c, k in counts.items() if c != color]
                if kind in ("most", "more"):
                    checks.append(counts[color] > max(others))
                else:
                    checks.append(counts[color] < min(others))
    else:
        raise ValueError(f"not a shapes question: {q!r}")
    if not checks:
        raise ValueError(f"no checkable claim in {text!r}")
    return all(checks)
