""""shapes": the embedded procedural visual-reasoning benchmark.

Scenes are drawn with Pillow so that a tiny Qwen2.5-VL (patch 14, spatial
merge 2: one merged vision token per 28x28 pixel cell) can read them: a grey
``image_size`` square split into a ``grid`` x ``grid`` lattice of cells, each
holding at most one solid shape centred in the cell.

Every example carries its scene graph, so the gold answer, and correct or
deliberately wrong reasoning and captions, are generated exactly:

- ``generate_examples``  canonical multiple-choice examples, deterministic per
  (split, index, seed), with disjoint splits;
- ``render``             scene graph -> image;
- ``cot_for`` / ``caption_for``   reasoning / one-sentence caption toward any
  option letter (true for the gold letter, concretely false otherwise), lent to
  rlvlm.perturb as ``reasoning_toward`` / ``caption_toward`` (rlvlm.data's registries);
- ``implied_option``     the option a reasoning's stated facts imply (the
  evaluation's reasoning-validity reader, rlvlm.data.REASONING_READERS).

The independent oracles (the gold letter re-derived from the pixels, captions
and reasoning checked against the scene graph) are test code:
tests/shapes_oracles.py.
"""

from __future__ import annotations

import hashlib
import json
import random
import re

from PIL import Image, ImageDraw

# The vocabulary (colours, shapes, families, relations, counts, each family's option texts) lives in
# rlvlm.conditions, where the recipe validates warm_start.teacher_confusions against it.
from rewards.options import LETTERS as OPTION_LETTERS
from rlvlm.conditions import COLORS, COUNT_OPTIONS, FAMILIES, FAMILY_OPTIONS, RELATIONS, SHAPES  # noqa: F401

SOURCE = "shapes"
LETTERS = OPTION_LETTERS[:4]  # every shapes question has four options
GRID = 3
IMAGE_SIZE = GRID * 28  # one merged Qwen2.5-VL vision token per cell
MIN_OBJECTS, MAX_OBJECTS = 3, 5
RGB = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
}
# Neutral grey at the vision processor's normalisation mean (CLIP's): empty cells encode to ~0,
# so a from-scratch vision tower sees the objects instead of a large constant background offset.
BACKGROUND = (123, 117, 104)
# Share of the (scene, question) key space owned by each split: a key belongs
# to exactly one split, so splits are disjoint whatever their sizes and seeds.
SPLITS = ("train", "eval", "test")
_SPLIT_OF_BUCKET = ("train", "train", "train", "eval", "test")

_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven",
                 "eight", "nine", "ten")


# --------------------------------------------------------------------------
# rendering


def render(scene: dict, image_size: int = IMAGE_SIZE) -> Image.Image:
    """Draw a scene graph: a pure function of ``scene`` and ``image_size``."""
    grid = int(scene.get("grid", GRID))
    cell = image_size / grid
    radius = cell * 12 / 28
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene["objects"]:
        cx = (obj["col"] + 0.5) * cell
        cy = (obj["row"] + 0.5) * cell
        fill = RGB[obj["color"]]
        shape = obj["shape"]
        r = radius
        if shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif shape == "square":
            h = 0.85 * r
            draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
        elif shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)],
                         fill=fill)
        elif shape == "diamond":
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
        else:
            raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return image


# --------------------------------------------------------------------------
# scene and question generation (constructive: the gold answer is known by
# construction; tests/shapes_oracles.check_answer re-derives it independently)


def _plural(shape: str) -> str:
    return shape + "s"


def _place(rng: random.Random, attrs: list[tuple[str, str]], grid: int,
           fixed: list[tuple[tuple[str, str], int, int]] = ()) -> list[dict]:
    """Put attrs in random free cells (plus fixed objects), sorted by cell."""
    used = {(r, c) for _, r, c in fixed}
    free = [(r, c) for r in range(grid) for c in range(grid) if (r, c) not in used]
    cells = rng.sample(free, len(attrs))
    placed = [(a, r, c) for a, (r, c) in zip(attrs, cells)] + list(fixed)
    placed.sort(key=lambda t: (t[1], t[2]))
    return [{"color": a[0], "shape": a[1], "row": r, "col": c} for a, r, c in placed]


def _random_attr(rng: random.Random, avoid) -> tuple[str, str]:
    while True:
        attr = (rng.choice(COLORS), rng.choice(SHAPES))
        if not avoid(attr):
            return attr


def _gen_count(rng: random.Random, grid: int, gold_pos: int):
    kind = rng.choice(("color_shape", "color", "shape"))
    color, shape = rng.choice(COLORS), rng.choice(SHAPES)
    if kind == "color_shape":
        match = lambda a: a == (color, shape)  # noqa: E731
        question = f"How many {color} {_plural(shape)} are there?"
    elif kind == "color":
        match = lambda a: a[0] == color  # noqa: E731
        question = f"How many {color} objects are there?"
    else:
        match = lambda a: a[1] == shape  # noqa: E731
        question = f"How many {_plural(shape)} are there?"
    count = gold_pos
    n = rng.randint(max(MIN_OBJECTS, count), MAX_OBJECTS)
    attrs = []
    for _ in range(count):
        attrs.append((color, shape) if kind == "color_shape"
                     else (color, rng.choice(SHAPES)) if kind == "color"
                     else (rng.choice(COLORS), shape))
    attrs += [_random_attr(rng, match) for _ in range(n - count)]
    rng.shuffle(attrs)
    return _place(rng, attrs, grid), question, COUNT_OPTIONS


def _gen_attribute(rng: random.Random, grid: int, gold_pos: int):
    n = rng.randint(MIN_OBJECTS, MAX_OBJECTS)
    if rng.random() < 0.5:
        shape, color = rng.choice(SHAPES), COLORS[gold_pos]
        attrs = [(color, shape)] + [_random_attr(rng, lambda a: a[1] == shape) for _ in range(n - 1)]
        question = f"What colour is the {shape}?"
        options = COLORS
    else:
        shape, color = SHAPES[gold_pos], rng.choice(COLORS)
        attrs = [(color, shape)] + [_random_attr(rng, lambda a: a[0] == color) for _ in range(n - 1)]
        question = f"What shape is the {color} object?"
        options = SHAPES
    rng.shuffle(attrs)
    return _place(rng, attrs, grid), question, options


def _gen_position(rng: random.Random, grid: int, gold_pos: int):
    relation = RELATIONS[gold_pos]
    a = (rng.choice(COLORS), rng.choice(SHAPES))
    b = _random_attr(rng, lambda x: x == a)
    line = rng.randrange(grid)
    lo, hi = sorted(rng.sample(range(grid), 2))
    if relation in ("left of", "right of"):
        first, second = (line, lo), (line, hi)     # first is left of second
        pa, pb = (first, second) if relation == "left of" else (second, first)
    else:
        first, second = (lo, line), (hi, line)     # first is above second
        pa, pb = (first, second) if relation == "above" else (second, first)
    n = rng.randint(MIN_OBJECTS, MAX_OBJECTS)
    others = [_random_attr(rng, lambda x: x in (a, b)) for _ in range(n - 2)]
    objects = _place(rng, others, grid, fixed=[(a, *pa), (b, *pb)])
    question = f"Where is the {a[0]} {a[1]} relative to the {b[0]} {b[1]}?"
    return objects, question, RELATIONS


def _gen_compare(rng: random.Random, grid: int, gold_pos: int):
    gold = COLORS[gold_pos]
    rest = [c for c in COLORS if c != gold]
    if rng.random() < 0.5:
        question = "Which colour has the most objects?"
        top = rng.randint(2, 4)
        while True:
            counts = [rng.randint(0, top - 1) for _ in rest]
            if MIN_OBJECTS <= top + sum(counts) <= MAX_OBJECTS:
                break
    else:
        # With at most six objects the unique minimum is an absent colour.
        question = "Which colour has the fewest objects?"
        top = 0
        counts = [rng.randint(1, 2) for _ in rest]
    attrs = [(gold, rng.choice(SHAPES)) for _ in range(top)]
    for color, k in zip(rest, counts):
        attrs += [(color, rng.choice(SHAPES)) for _ in range(k)]
    rng.shuffle(attrs)
    return _place(rng, attrs, grid), question, COLORS


_GENERATORS = {"count": _gen_count, "attribute": _gen_attribute,
               "position": _gen_position, "compare": _gen_compare}


def _key(scene: dict, question: str) -> str:
    objs = sorted((o["row"], o["col"], o["color"], o["shape"]) for o in scene["objects"])
    return json.dumps([scene["grid"], objs, question])


def split_of(scene: dict, question: str) -> str:
    """The split that owns a (scene, question) pair; splits never share one."""
    digest = hashlib.sha256(_key(scene, question).encode()).digest()
    return _SPLIT_OF_BUCKET[int.from_bytes(digest[:8], "big") % len(_SPLIT_OF_BUCKET)]


def _example_id(split: str, index: int, seed: int) -> str:
    return f"shapes-{split}-{index:07d}" if seed == 0 else f"shapes-{split}-s{seed}-{index:07d}"


def generate_example(split: str, index: int, seed: int = 0, image_size: int = IMAGE_SIZE) -> dict:
    """Example ``index`` of a split, from its own RNG (independent of others).

    The family is ``FAMILIES[index % 4]`` and the gold letter
    ``LETTERS[(index // 4) % 4]``, so families and gold letters are exactly
    balanced over every 16 consecutive examples. Options come in a fixed,
    natural order per family (counts ascending, colours, shapes, relations),
    as many benchmarks list them: the scene is built so that the gold option
    sits at the drawn letter. A from-scratch tiny model learns that mapping in
    minutes, where looking a text up in shuffled options takes it far longer.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    rng = random.Random(f"shapes|{split}|{seed}|{index}")
    family = FAMILIES[index % len(FAMILIES)]
    gold_pos = (index // len(FAMILIES)) % len(LETTERS)
    while True:  # rejection: keep only pairs this split owns
        objects, question, options = _GENERATORS[family](rng, GRID, gold_pos)
        scene = {"objects": objects, "grid": GRID}
        if split_of(scene, question) == split:
            break
    return {
        "id": _example_id(split, index, seed),
        "image": render(scene, image_size),
        "question": question,
        "options": list(options),
        "answer": LETTERS[gold_pos],
        "source": SOURCE,
        "family": family,
        "scene": scene,
    }


def generate_examples(split: str, n: int, seed: int = 0, image_size: int = IMAGE_SIZE) -> list[dict]:
    """``n`` canonical examples of ``split`` ("train", "eval" or "test").

    Deterministic for (split, n, seed); the first k of n equal
    ``generate_examples(split, k, seed)``; no (scene, question) pair appears in
    two splits.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [generate_example(split, i, seed, image_size) for i in range(n)]


# --------------------------------------------------------------------------
# independent solver: question text + scene graph -> answer text

_C = "|".join(COLORS)
_S = "|".join(SHAPES)
_Q_COUNT = re.compile(rf"^How many (?:({_C}) )?({_S}|object)s are there\?$")
_Q_COLOR_OF = re.compile(rf"^What colou?r is the ({_S})\?$")
_Q_SHAPE_OF = re.compile(rf"^What shape is the ({_C}) object\?$")
_Q_WHERE = re.compile(rf"^Where is the ({_C}) ({_S}) relative to the ({_C}) ({_S})\?$")
_Q_EXTREME = re.compile(r"^Which colou?r has the (most|fewest) objects\?$")


def _only(objs: list[dict], what: str) -> dict:
    if len(objs) != 1:
        raise ValueError(f"{what}: expected exactly one object, found {len(objs)}")
    return objs[0]


def _color_counts(scene: dict) -> dict[str, int]:
    counts = {c: 0 for c in COLORS}
    for o in scene["objects"]:
        counts[o["color"]] += 1
    return counts


def _relation(a: dict, b: dict) -> str:
    if a["row"] == b["row"] and a["col"] != b["col"]:
        return "left of" if a["col"] < b["col"] else "right of"
    if a["col"] == b["col"] and a["row"] != b["row"]:
        return "above" if a["row"] < b["row"] else "below"
    raise ValueError("objects are neither in the same row nor in the same column")


def solve(scene: dict, question: str) -> str:
    """The answer text to ``question`` about ``scene`` (ValueError if ill-posed)."""
    objs = scene["objects"]
    if m := _Q_COUNT.match(question):
        color, shape = m.group(1), m.group(2)
        return str(sum(1 for o in objs if (color is None or o["color"] == color)
                       and (shape == "object" or o["shape"] == shape)))
    if m := _Q_COLOR_OF.match(question):
        return _only([o for o in objs if o["shape"] == m.group(1)], question)["color"]
    if m := _Q_SHAPE_OF.match(question):
        return _only([o for o in objs if o["color"] == m.group(1)], question)["shape"]
    if m := _Q_WHERE.match(question):
        ca, sa, cb, sb = m.groups()
        a = _only([o for o in objs if (o["color"], o["shape"]) == (ca, sa)], question)
        b = _only([o for o in objs if (o["color"], o["shape"]) == (cb, sb)], question)
        return _relation(a, b)
    if m := _Q_EXTREME.match(question):
        counts = _color_counts(scene)
        best = (max if m.group(1) == "most" else min)(counts.values())
        return _only([{"color": c} for c, k in counts.items() if k == best], question)["color"]
    raise ValueError(f"not a shapes question: {question!r}")


# --------------------------------------------------------------------------
# what a reasoning's stated facts imply (reasoning validity)

# A concluding "answer is (X)" sentence: implied_option reads the facts around it, not it.
_CONCLUSION = re.compile(r"[^.;]*\banswer is \(([A-Z])\)[^.]*\.?", re.IGNORECASE)


def _stated_count(name: str, text: str) -> int | None:
    """The number stated right after `name` ("red circles 2"); None when absent or stated twice differently."""
    found = {int(n) for n in re.findall(rf"\b{re.escape(name)} (\d+)\b", text, re.I)}
    return found.pop() if len(found) == 1 else None


def implied_option(question: str, options: list[str], think: str) -> int | None:
    """The index of the option that the facts stated in `think` imply, applying the question to them:
    the asked entry of a tally (count), the one value a tally counts at all (colour or shape of an
    object), the relation of two stated cells (position), the extreme of stated per-colour counts
    (compare). Only the facts are read, not the stated conclusion ("So the answer is (B)"): comparing the
    two says whether the reasoning follows from its own premises. None when the think states no usable
    facts, states them ambiguously, or implies a value that is not an option."""
    body = _CONCLUSION.sub(" ", think or "")

    def index_of(value) -> int | None:
        return options.index(value) if value is not None and value in options else None

    if _Q_COUNT.match(question) or _Q_COLOR_OF.match(question) or _Q_SHAPE_OF.match(question):
        _, key, asked, color, shape = _tally_spec(question)
        values = COLORS if key == "colour" else SHAPES
        tally = {v: _stated_count(_tally_name(key, v, color, shape), body) for v in values}
        if _Q_COUNT.match(question):
            n = tally[asked]
            return index_of(None if n is None else str(n))
        present = [v for v, n in tally.items() if n]
        return index_of(present[0]) if len(present) == 1 else None
    if m := _Q_WHERE.match(question):
        a, b = f"{m.group(1)} {m.group(2)}", f"{m.group(3)} {m.group(4)}"
        rows, cols = re.search(r"\b(?:Rows|By row):([^.]*)\.", body), re.search(r"\b(?:Columns|By column):([^.]*)\.", body)
        if rows is None or cols is None:
            return None
        cells = [(_stated_count(x, rows.group(1)), _stated_count(x, cols.group(1))) for x in (a, b)]
        if any(n is None for cell in cells for n in cell):
            return None
        try:
            relation = _relation({"row": cells[0][0], "col": cells[0][1]}, {"row": cells[1][0], "col": cells[1][1]})
        except ValueError:
            return None
        return index_of(relation)
    if m := _Q_EXTREME.match(question):
        counts = {c: _stated_count(c, body) for c in COLORS}
        if any(n is None for n in counts.values()):
            return None
        best = (max if m.group(1) == "most" else min)(counts.values())
        extremes = [c for c, n in counts.items() if n == best]
        return index_of(extremes[0]) if len(extremes) == 1 else None
    return None


# --------------------------------------------------------------------------
# reasoning and captions toward an option


def _letter_index(example: dict, letter: str) -> int:
    letter = letter.strip().upper()
    if len(letter) != 1 or not ("A" <= letter < chr(ord("A") + len(example["options"]))):
        raise ValueError(f"letter {letter!r} is not an option of {example['id']}")
    return ord(letter) - ord("A")


def _count_subject(question: str) -> tuple[str, str]:
    """(plural, singular) description of what a count question counts."""
    m = _Q_COUNT.match(question)
    color, shape = m.group(1), m.group(2)
    singular = f"{color} {shape}" if color else shape
    return singular + "s", singular


def _number_word(n: int) -> str:
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def _claimed_counts(example: dict, letter: str) -> dict[str, int]:
    """Per-colour counts that make ``letter`` the extreme: the truth for gold,
    the truth with the gold and claimed colours' counts swapped otherwise."""
    counts = _color_counts(example["scene"])
    claimed = example["options"][_letter_index(example, letter)]
    gold = solve(example["scene"], example["question"])
    counts[gold], counts[claimed] = counts[claimed], counts[gold]
    return counts


def _tally_spec(question: str) -> tuple[str, str, str, str | None, str | None]:
    """(group words, tally key, the key value the question asks about, colour filter, shape filter)."""
    if m := _Q_COUNT.match(question):
        color, shape = m.group(1), m.group(2)
        if shape == "object":
            return "objects", "colour", color, None, None
        if color is None:
            return "objects", "shape", shape, None, None
        return _plural(shape), "colour", color, None, shape
    if m := _Q_COLOR_OF.match(question):
        return _plural(m.group(1)), "colour", None, None, m.group(1)
    if m := _Q_SHAPE_OF.match(question):
        return f"{m.group(1)} objects", "shape", None, m.group(1), None
    raise ValueError(f"no tally for {question!r}")


def _tally(scene: dict, key: str, color: str | None, shape: str | None) -> dict[str, int]:
    values = COLORS if key == "colour" else SHAPES
    counts = dict.fromkeys(values, 0)
    for o in scene["objects"]:
        if (color is None or o["color"] == color) and (shape is None or o["shape"] == shape):
            counts[o["color"] if key == "colour" else o["shape"]] += 1
    return counts


def _tally_name(key: str, value: str, color: str | None, shape: str | None) -> str:
    """What a tally entry counts, in full: "red circles", "blue squares", "circles", "red objects"."""
    if shape:
        return f"{value} {_plural(shape)}"
    if color:
        return f"{color} {_plural(value)}"
    return _plural(value) if key == "shape" else f"{value} objects"


def _claimed_tally(example: dict, letter: str) -> tuple[str, str, dict[str, int]]:
    """The tally behind option ``letter``: the truth for gold; for a wrong letter, the truth changed
    just enough to imply it (the asked count set to the claim, or the attribute's counts swapped)."""
    q = example["question"]
    group, key, asked, color, shape = _tally_spec(q)
    counts = _tally(example["scene"], key, color, shape)
    claimed = example["options"][_letter_index(example, letter)]
    if _Q_COUNT.match(q):
        counts[asked] = int(claimed)
    else:
        gold = solve(example["scene"], q)
        counts[gold], counts[claimed] = counts[claimed], counts[gold]
    return group, key, counts


def _claimed_cells(example: dict, letter: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """1-based (row, column) of the two objects of a position question as the reasoning toward
    ``letter`` states them: the truth for gold; otherwise the true cells mirrored (left/right,
    above/below) and/or transposed (row <-> column) just enough to imply the claimed relation."""
    ca, sa, cb, sb = _Q_WHERE.match(example["question"]).groups()
    objs = example["scene"]["objects"]
    a = _only([o for o in objs if (o["color"], o["shape"]) == (ca, sa)], example["question"])
    b = _only([o for o in objs if (o["color"], o["shape"]) == (cb, sb)], example["question"])
    pa, pb = (a["row"], a["col"]), (b["row"], b["col"])
    truth, claim = _relation(a, b), example["options"][_letter_index(example, letter)]
    horizontal = ("left of", "right of")
    if (truth in horizontal) != (claim in horizontal):
        pa, pb = pa[::-1], pb[::-1]  # transposed: "left of" becomes "above", "right of" "below"
        truth = {"left of": "above", "right of": "below", "above": "left of", "below": "right of"}[truth]
    if truth != claim:
        pa, pb = pb, pa
    return (pa[0] + 1, pa[1] + 1), (pb[0] + 1, pb[1] + 1)


def conclusion(example: dict, letter: str) -> str:
    """The sentence every shapes reasoning ends with: "So the answer is (X) <option text>.\""""
    text = example["options"][_letter_index(example, letter)]
    return f"So the answer is ({letter.strip().upper()}) {text}."


def cot_for(example: dict, letter: str, seed: int = 0) -> str:
    """Short step-by-step reasoning (no tags) toward option ``letter``.

    For the gold letter every stated fact holds in the scene; for a wrong
    letter it states concrete false facts implying that option. It ends with
    "So the answer is (X) <option text>."
    """
    idx = _letter_index(example, letter)
    option = example["options"][idx]
    q = example["question"]
    v = seed % 2
    if _Q_COUNT.match(q) or _Q_COLOR_OF.match(q) or _Q_SHAPE_OF.match(q):
        # Counting and attribute questions reason through a tally of the relevant objects, each count
        # after the full name of what it counts ("red circles 1", not "red 1" under a "Circles by
        # colour" lead): the tiny model reads a count where its name is, and attribute accuracy of the
        # warm-start went from 0.40-0.55 to 0.86 (1,024 test questions).
        group, key, counts = _claimed_tally(example, letter)
        _, _, asked, color, shape = _tally_spec(q)
        lead = f"{group.capitalize()} by {key}" if v == 0 else f"Sorting the {group} by {key}"
        if _Q_COUNT.match(q):
            # The asked entry comes last, so "There are N" copies the number just written: listed in
            # its fixed place, the tiny model read it right (236 of 256) and then restated another
            # entry's number in 66 conclusions, and count accuracy stayed at 0.65.
            counts = {k: n for k, n in counts.items() if k != asked} | {asked: counts[asked]}
        tally = ", ".join(f"{_tally_name(key, k, color, shape)} {n}" for k, n in counts.items())
        if _Q_COUNT.match(q):
            plural, singular = _count_subject(q)
            n = int(option)
            step = f"There {'is' if n == 1 else 'are'} {n} {singular if n == 1 else plural}."
        else:
            step = f"It is {'a ' if key == 'shape' else ''}{option}."
        body = f"{lead}: {tally}. {step}"
    elif m := _Q_WHERE.match(q):
        # Position questions reason through the two objects' grid cells (rows and columns counted from
        # 1 at the top left), so the relation is read off two numbers instead of guessed; each number
        # follows its object's name, in the tallies' form. (The tiny model still mostly writes one cell
        # for both objects, in this wording as in "row 1, column 3": position stays near chance.)
        a, b = f"{m.group(1)} {m.group(2)}", f"{m.group(3)} {m.group(4)}"
        (ra, ca), (rb, cb) = _claimed_cells(example, letter)
        rows, cols = ("Rows", "Columns") if v == 0 else ("By row", "By column")
        body = f"{rows}: {a} {ra}, {b} {rb}. {cols}: {a} {ca}, {b} {cb}. The {a} is {option} the {b}."
    elif m := _Q_EXTREME.match(q):
        counts = _claimed_counts(example, letter)
        listed = ", ".join(f"{c} {counts[c]}" for c in COLORS)
        lead = "Counting by colour" if v == 0 else "I count each colour"
        body = f"{lead}: {listed}. {option.capitalize()} has the {m.group(1)}."
    else:
        raise ValueError(f"not a shapes question: {q!r}")
    return f"{body} {conclusion(example, letter)}"


def caption_for(example: dict, letter: str, seed: int = 0) -> str:
    """One sentence asserting a concrete fact that implies option ``letter``
    (true for the gold letter, false for any other)."""
    idx = _letter_index(example, letter)
    option = example["options"][idx]
    q = example["question"]
    v = seed % 2
    if _Q_COUNT.match(q):
        plural, singular = _count_subject(q)
        n = int(option)
        if v == 0:
            return f"There {'is' if n == 1 else 'are'} {_number_word(n)} {singular if n == 1 else plural}."
        return f"The picture shows exactly {n} {singular if n == 1 else plural}."
    if m := _Q_COLOR_OF.match(q):
        shape = m.group(1)
        return f"The {shape} is {option}." if v == 0 else f"The {shape} in the picture is coloured {option}."
    if m := _Q_SHAPE_OF.match(q):
        color = m.group(1)
        return (f"The {color} object is a {option}." if v == 0
                else f"The {color} object in the picture is a {option}.")
    if m := _Q_WHERE.match(q):
        a, b = f"{m.group(1)} {m.group(2)}", f"{m.group(3)} {m.group(4)}"
        return f"The {a} is {option} the {b}." if v == 0 else f"The {a} is located {option} the {b}."
    if m := _Q_EXTREME.match(q):
        most = m.group(1) == "most"
        if v == 0:
            return f"There are {'more' if most else 'fewer'} {option} objects than objects of any other colour."
        return f"{option.capitalize()} is the {'most' if most else 'least'} common colour in the picture."
    raise ValueError(f"not a shapes question: {q!r}")



def _has_scene(example: dict) -> bool:
    return "scene" in example and bool(example.get("options"))


def reasoning_toward(example: dict, target: str, seed: int) -> str | None:
    """rlvlm.perturb's reasoning for a shapes example (rlvlm.data.REASONING_GENERATORS): ``cot_for``
    when it carries its scene graph and options, None (perturb's generic templates) otherwise."""
    return cot_for(example, target, seed=seed) if _has_scene(example) else None


def caption_toward(example: dict, target: str, seed: int) -> str | None:
    """rlvlm.perturb's caption for a shapes example (rlvlm.data.CAPTION_GENERATORS): ``caption_for``
    when it carries its scene graph and options, None (perturb's generic templates) otherwise."""
    return caption_for(example, target, seed=seed) if _has_scene(example) else None
