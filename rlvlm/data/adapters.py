"""Real datasets -> canonical examples (docs/concepts.md, "The canonical example"), through `datasets`.

Each adapter reads one dataset in the schema its hub card (or, where there is no hub copy, its
release) documents, and maps a row to::

    {id, image | images, question, options, answer, source}

`answer` is the gold option letter for multiple-choice sets and the answer text otherwise.
In production a dataset comes from the hub (`load_dataset(hub_id, config, split=...)`; where the
maintained copy has moved, the adapter names a mirror that is tried when its hub id cannot be loaded);
a recipe's `path` reads a local copy instead (parquet, JSON/JSONL, CSV/TSV, an imagefolder or a
`save_to_disk` directory), and `hub_id` points at another copy. Each adapter reads every copy its card
lists (the hub's, lmms-eval's, VLMEvalKit's TSV, the original release; docs/data.md). Images are taken
as the copy stores them: a decoded `datasets.Image`, its `{bytes, path}` struct, raw bytes, a base64
string, a file path (relative paths resolve against `image_root`, then the hub repo) or a URL (looked up
by file name in `image_root` when given, else fetched into `$RLVLM_CACHE/images` by
`rlvlm.data.images.fetch_images`). An example keeps its images as the encoded bytes, checked to decode
and capped at `max_pixels` (rlvlm.data.images).

A row that cannot be used (no image, an unreadable image, no options for a multiple-choice set, a
gold answer that is not among the options, ...) is skipped and counted, and the first few ids are
logged; with `on_bad_row: stop` the first such row stops the run with a `DataError` naming it.

The recipe form (`data.train` or an entry of `data.eval`)::

    {name: cv_bench, split: test, n: 5000, seed: 0}                 # from the hub
    {name: cv_bench, split: test, path: data/cv_bench.parquet}      # a local copy, same schema
    {name: custom, path: data/mine.jsonl, image_root: data/img,
     columns: {question: q, options: [A, B, C, D], answer: label, image: file}}
"""

from __future__ import annotations

import ast
import base64
import binascii
import glob
import hashlib
import functools
import json
import logging
import math
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rewards.options import GoldError, check_example
from rewards.options import LETTERS as OPTION_LETTERS
from rewards.options import gold_letter as _canonical_gold_letter
from rewards.options import strip_own_letter
from rlvlm.data.images import ImageError, checked, encode, fetch_images, main_process_first
from rlvlm.recipe import DatasetSpec, RecipeError

log = logging.getLogger("rlvlm.data")

LETTERS = OPTION_LETTERS[:10]  # the option columns / inline options a source may store: A to J
MAX_LOGGED_IDS = 5
CANONICAL_COLUMNS = ("id", "image", "images", "question", "options", "answer")


class DataError(RecipeError):
    """A dataset that cannot be read, or (with `on_bad_row: stop`) a row that cannot be used."""


class BadRow(Exception):
    """This row cannot become a canonical example; the message says why (it is the skip reason)."""


# --------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class Adapter:
    name: str
    convert: Callable[[dict, "Row"], dict]
    hub_id: str | None  # None: not on the hub; the recipe gives `path` (or a mirror's `hub_id`)
    config: str | None = None
    split: str = "test"  # the split the paper's recipes read
    multiple_choice: bool = True
    card: str = ""  # where the schema was read
    key: str | Callable[[dict, DatasetSpec], Any] | None = "id"  # the id column; absent/None: row index
    mirrors: tuple[str, ...] = ()  # hub ids tried in turn when `hub_id` cannot be loaded
    # raw row -> {image URL: its sha256 or None}: fetched in parallel before the rows are converted
    image_urls: Callable[[dict], dict[str, str | None]] | None = None
    # A JSON copy whose items are lists (WhatsUp's COCO_QA / VG_QA): the names of their fields, in order
    list_fields: tuple[str, ...] | None = None
    free_form_ok: bool = False  # `free_form: true` turns the set into free-form questions (Geometry3K)

    def row_key(self, raw: dict, spec: DatasetSpec) -> Any:
        if self.key is None:
            return None
        return self.key(raw, spec) if callable(self.key) else raw.get(self.key)


ADAPTERS: dict[str, Adapter] = {}


def register(name: str, hub_id: str | None, *, config: str | None = None, split: str = "test",
             multiple_choice: bool = True, card: str = "", key: str | Callable | None = "id", **more):
    def wrap(fn):
        ADAPTERS[name] = Adapter(name, fn, hub_id, config, split, multiple_choice, card, key, **more)
        return fn

    return wrap


# --------------------------------------------------------------------------------------------
# one row's context: ids, images, options


@dataclass
class Row:
    spec: DatasetSpec
    adapter: Adapter
    index: int  # position of the row in the split, before any shuffling
    image_root: Path | None
    hub_id: str | None  # where relative image paths are fetched from when not found locally
    rid: str  # the canonical id: `<dataset>-<the row's id, or its index>`
    max_pixels: int | None = None  # images larger are downscaled (rlvlm.data.images.cap_pixels)
    fetched: dict = field(default_factory=dict)  # URL -> cached file or ImageError (fetch_images)

    def image(self, value: Any):
        return load_image(value, self)

    def shuffle_key(self) -> str:
        """Seeds the option order where the source lists the gold option first."""
        return f"{self.spec.seed}|{self.adapter.name}|{self.index}"


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in ("", "nan", "none", "null")


def _text(value: Any, what: str) -> str:
    if _missing(value):
        raise BadRow(f"no {what}")
    return str(value).strip()


def letter_columns(raw: dict, letters: str = LETTERS) -> list[str]:
    """Options stored one per column (`A`, `B`, ...), as MMBench and VLMEvalKit TSVs do."""
    present = [(x, raw.get(x)) for x in letters if x in raw]
    options, ended = [], False
    for letter, value in present:
        if _missing(value):
            ended = True
        elif ended:
            raise BadRow(f"options are not contiguous (option {letter} follows an empty one)")
        else:
            options.append(str(value).strip())
    return options


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split()).rstrip(".")


def gold_letter(options: list[str], answer: Any, strict: bool = False) -> str:
    """The gold option letter, by the one gold rule of `rewards.options` (a letter `B`, `(B)`, `b`,
    `B. text`, an index, or an option's text); BadRow saying why when it names no option. `strict`
    (custom sets): options must be distinct, and an answer that reads two ways is refused."""
    try:
        return _canonical_gold_letter(answer, options, strict=strict)
    except GoldError as e:
        reason = str(e)
        if options and _missing(answer) and not reason.startswith("duplicate option"):
            reason = "no gold answer"  # also "nan", "null": a null as the source wrote it
        raise BadRow(reason) from None


_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[).:]\s*(.+?)\s*$")
_INLINE_OPTION = re.compile(r"\(([A-J])\)\s*(.+?)(?=\s*\([A-J]\)|$)", re.S)


def inline_options(text: str) -> tuple[str, list[str]]:
    """Split a question that carries its options (`(A) x` / `A. x`, one per line or inline)."""
    lines = text.splitlines()
    for start, line in enumerate(lines):
        m = _OPTION_LINE.match(line)
        if m and m.group(1) == "A":
            options, i = [], start
            while (i < len(lines) and len(options) < len(LETTERS) and (m := _OPTION_LINE.match(lines[i]))
                   and m.group(1) == LETTERS[len(options)]):
                options.append(m.group(2))
                i += 1
            if len(options) >= 2:
                return "\n".join(lines[:start]).strip(), options
    head, sep, tail = text.partition("(A)")
    if sep:
        found = _INLINE_OPTION.findall(sep + tail)
        if [x for x, _ in found] == list(LETTERS[: len(found)]) and len(found) >= 2:
            options = [o.strip().splitlines()[0].strip() for _, o in found]
            return head.strip(), options
    raise BadRow("no options found in the question text")


def shuffled(options: list[str], gold: int, key: str) -> tuple[list[str], str]:
    """A fixed (per key) permutation of the options and the gold letter after it.

    Used where the source always lists the correct option first (SAT, WhatsUp)."""
    order = list(range(len(options)))
    random.Random(hashlib.sha256(key.encode()).hexdigest()).shuffle(order)
    return [options[i] for i in order], LETTERS[order.index(gold)]


def example(row: Row, image, question: str, options: list[str], answer: str) -> dict:
    ex = {"id": row.rid}
    if isinstance(image, list):
        if not image:
            raise BadRow("no image")
        if len(image) == 1:
            ex["image"] = image[0]
        else:
            ex["images"] = image
    else:
        ex["image"] = image
    if not question:
        raise BadRow("no question")
    if row.adapter.multiple_choice and not row.spec.free_form and not options:
        raise BadRow("no options for a multiple-choice question")
    ex.update(question=question, options=list(options), answer=str(answer), source=row.adapter.name)
    try:
        check_example(ex)
    except ValueError as e:
        raise BadRow(str(e)) from None
    return ex


# --------------------------------------------------------------------------------------------
# images


_B64 = re.compile(r"^[A-Za-z0-9+/=\s]+$")
_B64_MAGIC = ("iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR", "Qk")  # PNG, JPEG, GIF, WEBP, BMP


def load_image(value: Any, row: Row) -> bytes:
    """The encoded bytes of a row's image, once they are known to decode (rlvlm.data.images)."""
    if _missing(value):
        raise BadRow("no image")
    try:
        return checked(_image_bytes(value, row), row.max_pixels)
    except ImageError as e:
        raise BadRow(str(e)) from None


def _image_bytes(value: Any, row: Row) -> bytes:
    from PIL import Image

    if isinstance(value, Image.Image):
        return encode(value)
    if isinstance(value, dict):  # datasets.Image(decode=False) storage
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return _read(_image_file(value["path"], row))
        raise BadRow("no image")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return _image_source(value.strip(), row)
    raise BadRow(f"no image (unsupported value of type {type(value).__name__})")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise BadRow(f"unreadable image ({type(e).__name__})") from None


def _image_source(text: str, row: Row) -> bytes:
    if text.startswith("data:image"):
        return _b64decode(text.partition(",")[2])
    if text.startswith(("http://", "https://")):
        return _read(_fetch(text, row))
    if text.startswith("file://"):
        return _read(_image_file(text[len("file://"):], row))
    if (len(text) > 256 or text.startswith(_B64_MAGIC)) and _B64.match(text):
        return _b64decode(text)
    return _read(_image_file(text, row))


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        raise BadRow("unreadable image (bad base64)") from None


def _image_file(path: str, row: Row) -> Path:
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else []
    if row.image_root is not None:
        candidates += [row.image_root / path, row.image_root / p.name]
    if not p.is_absolute():
        candidates.append(p)
    for c in candidates:
        if c.is_file():
            return c
    if row.image_root is not None and (found := _find_in_root(str(row.image_root), p.name)):
        return found
    if row.hub_id and not p.is_absolute():
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(row.hub_id, path, repo_type="dataset"))
        except Exception:  # not in the repo, or offline: the row is skipped, the run goes on
            pass
    raise BadRow(f"image file not found: {path}")


@functools.lru_cache(maxsize=8)
def _root_index(root: str) -> dict[str, Path]:
    """File name -> path under an image root (an unpacked archive may nest its images)."""
    index: dict[str, Path] = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            index.setdefault(name, Path(dirpath) / name)
    return index


def _find_in_root(root: str, name: str) -> Path | None:
    direct = Path(root) / name
    return direct if direct.is_file() else _root_index(root).get(name)


def _fetch(url: str, row: Row, sha256: str | None = None) -> Path:
    """The file of an image URL: found by name in `image_root` when one is given, else the cached
    download (fetched in parallel with its set's other URLs by `load_adapted`; one not fetched then is
    fetched now)."""
    name = Path(url.split("?")[0]).name
    if row.image_root is not None:
        found = _find_in_root(str(row.image_root), name)
        if found is None:
            raise BadRow(f"image file not found in image_root: {name}")
        return found
    if url not in row.fetched:
        row.fetched.update(fetch_images({url: sha256}))
    got = row.fetched[url]
    if isinstance(got, ImageError):
        raise BadRow(str(got))
    return got


# --------------------------------------------------------------------------------------------
# training sets


# The SAT generator appended "in the first frame" to some answer choices; the SAT repository's own
# loader (custom_datasets/dataloaders.py) removes it before the choices are shown. Removed here from the
# choices and from the correct answer alike, so that the two still match.
SAT_ARTEFACT = "in the first frame"


def sat_text(text: Any) -> str:
    return " ".join(str(text).replace(SAT_ARTEFACT, "").split())


@register("sat", "array/SAT", split="train",
          card="array/SAT: image_bytes (list of Image: one, or two for questions about motion), question, "
               "answers (list), correct_answer (text), question_type; splits train/static/val/test. "
               "lmms-eval's nv-njb/SAT: the same with correct_answer_idx. Both carry the generator's "
               "'in the first frame' artefact in some answers, removed as the SAT repository does",
          key=None)
def sat(raw: dict, row: Row) -> dict:
    images = raw.get("image_bytes") or raw.get("images") or []
    if not isinstance(images, list):
        images = [images]
    answers = [sat_text(a) for a in (raw.get("answers") or [])]
    if not answers:
        raise BadRow("no options for a multiple-choice question")
    index = raw.get("correct_answer_idx")
    if isinstance(index, int) and not isinstance(index, bool):
        if not 0 <= index < len(answers):
            raise BadRow(f"gold index {index} not among {len(answers)} options")
        gold = index
    else:
        gold = LETTERS.index(gold_letter(answers, sat_text(_text(raw.get("correct_answer"), "gold answer"))))
    # The card asks to randomise the order of `answers` before presenting them as choices.
    options, letter = shuffled(answers, gold, row.shuffle_key())
    return example(row, [row.image(v) for v in images], _text(raw.get("question"), "question"),
                   options, letter)


def _pixmo_urls(raw: dict) -> dict[str, str | None]:
    url = raw.get("image_url")
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return {url: raw.get("image_sha256") or None}
    return {}


@register("pixmo_count", "allenai/pixmo-count", split="train", multiple_choice=False,
          card="allenai/pixmo-count: image_url, image_sha256, count, points (x, y), label; images are URLs, "
               "each checked against its image_sha256",
          image_urls=_pixmo_urls)
def pixmo_count(raw: dict, row: Row) -> dict:
    url = raw.get("image_url")
    if _pixmo_urls(raw):
        image = row.image(_read(_fetch(url, row, sha256=raw.get("image_sha256") or None)))
    else:  # a copy with the images stored
        image = row.image(raw.get("image") if _missing(url) else url)
    count = raw.get("count")
    if _missing(count):
        raise BadRow("no gold answer")
    label = _text(raw.get("label"), "label")
    question = f"How many {label} are there in the image? Answer with a number."
    return example(row, image, question, [], str(int(count)))


@register("geometry3k", "hiyouga/geometry3k", split="train",
          card="hiyouga/geometry3k: images (list of Image), problem (with <image>), answer (the value), id, "
               "choices (always four), ground_truth (letter). Read as multiple choice with letter answers; "
               "free_form: true reads it as EasyR1 trains on it, the problem alone with the value as answer",
          key="id", free_form_ok=True)
def geometry3k(raw: dict, row: Row) -> dict:
    images = raw.get("images")
    if images is None:
        images = raw.get("image")
    images = images if isinstance(images, list) else [images]
    question = _text(raw.get("problem"), "question").replace("<image>", "").strip()
    if row.spec.free_form:
        choices, answer = [], _text(raw.get("answer"), "gold answer")
    else:
        choices = [str(c).strip() for c in (raw.get("choices") or []) if not _missing(c)]
        truth = raw.get("ground_truth")
        answer = gold_letter(choices, truth if not _missing(truth) else raw.get("answer"))
    return example(row, [row.image(v) for v in images], question, choices, answer)


# --------------------------------------------------------------------------------------------
# evaluation sets


def _cv_bench_key(raw: dict, spec) -> Any:
    """`2D-17`: CV-Bench numbers its 2D and 3D questions separately."""
    idx = raw.get("idx")
    return idx if _missing(raw.get("type")) or _missing(idx) else f"{raw['type']}-{idx}"


@register("cv_bench", "nyu-visionx/CV-Bench", split="test",
          card="nyu-visionx/CV-Bench: idx, type (2D/3D), task, image (Image), question, choices (list), "
               "answer ('(A)'), prompt, filename, source, ...; configs default/2D/3D, split test",
          key=_cv_bench_key)
def cv_bench(raw: dict, row: Row) -> dict:
    options = [str(c).strip() for c in (raw.get("choices") or [])]
    answer = gold_letter(options, raw.get("answer"))
    return example(row, row.image(raw.get("image")), _text(raw.get("question"), "question"),
                   options, answer)


def _3dsrbench_urls(raw: dict) -> dict[str, str | None]:
    url = raw.get("image_url")
    if _missing(raw.get("image")) and isinstance(url, str) and url.startswith(("http://", "https://")):
        return {url: None}  # COCO gives no checksum
    return {}


@register("3dsrbench", "ccvl/3DSRBench", config="benchmark", split="test",
          card="ccvl/3DSRBench (config benchmark, its only one): index, question, A, B, C, D, answer "
               "(letter), category, image_source, image_url (COCO, fetched; or give image_root with "
               "coco_images.zip unpacked); lmms-eval's oscarqjh/3DSRBench_lmmseval (config 3dsr) and the "
               "VLMEvalKit TSVs carry the image itself in an `image` column (Image, or base64)",
          key="index", image_urls=_3dsrbench_urls)
def threedsrbench(raw: dict, row: Row) -> dict:
    options = letter_columns(raw)
    answer = gold_letter(options, raw.get("answer"))
    image = raw.get("image")
    if _missing(image):
        image = raw.get("image_url")
    return example(row, row.image(image), _text(raw.get("question"), "question"),
                   options, answer)


@register("mmbench", "lmms-lab/MMBench", config="en", split="dev",
          card="lmms-lab/MMBench (config en; lmms-eval reads the same at lmms-lab-encoder/MMBench since "
               "2026, tried when lmms-lab/MMBench cannot be loaded): index, question, hint, A, B, C, D, "
               "answer (letter), category, image (Image; a base64 string in HuggingFaceM4/MMBench and "
               "VLMEvalKit's TSV), source, L2-category, comment, split; the test split has no answers",
          key="index", mirrors=("lmms-lab-encoder/MMBench",))
def mmbench(raw: dict, row: Row) -> dict:
    options = letter_columns(raw)
    answer = gold_letter(options, raw.get("answer"))
    question = _text(raw.get("question"), "question")
    if not _missing(raw.get("hint")):
        question = f"{str(raw['hint']).strip()}\n{question}"
    return example(row, row.image(raw.get("image")), question, options, answer)


WHATSUP_QUESTION = "Which caption describes the image correctly?"


@register("whatsup", None, split="Controlled_Images_A",
          card="WhatsUp (amitakamath/whatsup_vlms, not on the hub): Controlled_Images_A/B "
               "(controlled_images_dataset.json, controlled_clevr_dataset.json) are lists of {image_path, "
               "caption_options}, the first caption correct; COCO_QA / VG_QA (coco_qa_one_obj.json, "
               "coco_qa_two_obj.json, vg_qa_one_obj.json, vg_qa_two_obj.json) are lists of [image_id, true "
               "caption, false caption], the image found by id in image_root (COCO: val2017/<id as 12 "
               "digits>.jpg, VG: vg_images/<id>.jpg); a copy saved from the release's loader has "
               "image_options (a list of one image) and caption_options",
          list_fields=("image_id", "true_caption", "false_caption"))
def whatsup(raw: dict, row: Row) -> dict:
    if "true_caption" in raw:  # COCO_QA / VG_QA
        captions = [str(raw.get("true_caption") or "").strip(), str(raw.get("false_caption") or "").strip()]
        image = _whatsup_image_by_id(raw.get("image_id"), row)
    else:
        captions = [str(c).strip() for c in (raw.get("caption_options") or [])]
        image = next((raw[k] for k in ("image_options", "image", "image_path") if not _missing(raw.get(k))), None)
        if isinstance(image, list):  # the release's loader returns image_options as [image]
            if len(image) != 1:
                raise BadRow(f"{len(image)} images in image_options (WhatsUp has one per caption set)")
            image = image[0]
    if len([c for c in captions if c]) < 2:
        raise BadRow("no options for a multiple-choice question")
    gold = 0  # the release lists the correct caption first; mirrors may name it
    for key in ("TARGET", "label", "target"):
        if isinstance(raw.get(key), int) and not isinstance(raw.get(key), bool):
            gold = raw[key]
    if not 0 <= gold < len(captions):
        raise BadRow(f"gold index {gold} not among {len(captions)} options")
    options, letter = shuffled(captions, gold, row.shuffle_key())
    return example(row, row.image(image), WHATSUP_QUESTION, options, letter)


def _whatsup_image_by_id(image_id: Any, row: Row) -> bytes:
    if _missing(image_id):
        raise BadRow("no image")
    if row.image_root is None:
        raise BadRow("image file not found: COCO_QA / VG_QA images are found by id under image_root")
    # COCO val2017 names are 12 digits, Visual Genome's the bare id: the two id spaces overlap, so a set
    # named as one of them (its split or file name) looks only for that one's file, never the other's
    named = [row.spec.split, *(os.path.basename(f) for f in local_files(row.spec))]
    coco, vg = (any(n.lower().startswith(k) for n in named) for k in ("coco", "vg"))
    names = [f"{str(image_id).zfill(12)}.jpg"] * (coco or not vg) + [f"{image_id}.jpg"] * (vg or not coco)
    for name in names:
        if found := _find_in_root(str(row.image_root), name):
            return _read(found)
    raise BadRow(f"image file not found: {' or '.join(names)}")


@register("vstar", "lmms-lab/vstar-bench", split="test",
          card="lmms-lab/vstar-bench (lmms-eval reads the same at lmms-lab-encoder/vstar-bench since 2026, "
               "tried when lmms-lab/vstar-bench cannot be loaded): image (Image), text (question with "
               "'(A) ...' options), label (letter), category, question_id; craigwu/vstar_bench: the same in "
               "test_questions.jsonl with image a path in the repo",
          key="question_id", mirrors=("lmms-lab-encoder/vstar-bench",))
def vstar(raw: dict, row: Row) -> dict:
    text = _text(raw.get("text") or raw.get("question"), "question")
    question, options = inline_options(text)
    answer = gold_letter(options, raw.get("label") if not _missing(raw.get("label")) else raw.get("answer"))
    return example(row, row.image(raw.get("image")), question, options, answer)


_MME_OPTIONS = "multi-choice options"


def mme_options(raw: dict) -> list[str]:
    """The options of an MME-RealWorld row, in any copy: a list (the lmms-eval parquet), the same list
    as its Python repr (VLMEvalKit's mme_realworld_lite.tsv, which VLMEvalKit itself `eval`s), a prompt
    text listing them ('The choices are listed below:\n(A) ...'), or A-E columns alone."""
    value = raw.get(_MME_OPTIONS)
    if value is None:
        value = raw.get("options")
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise BadRow(f"options column {_MME_OPTIONS!r} is not a list") from None
        if not isinstance(value, list):
            raise BadRow(f"options column {_MME_OPTIONS!r} is not a list")
    elif isinstance(value, str) and not _missing(value):
        value = inline_options(value.replace("（", "(").replace("）", ")"))[1]
    if isinstance(value, list) and value:
        # "(A) 2", "A. 2", and the full-width "（A）2" that lmms-eval's MME-RealWorld utils turn into
        # "(A)": the prefix of the option's own letter only, as the gold rule reads it
        return [strip_own_letter(str(c).replace("（", "(").replace("）", ")"), i) for i, c in enumerate(value)]
    return letter_columns(raw, LETTERS[:5])


@register("mme_realworld_lite", "yifanzhang114/MME-RealWorld-lite-lmms-eval", split="train",
          card="yifanzhang114/MME-RealWorld-lite-lmms-eval (lmms-eval's copy): index, question, "
               "'multi-choice options' (['(A) ...', ...]), answer (letter), bytes (base64 image), category, "
               "l2-category; VLMEvalKit's mme_realworld_lite.tsv (yifanzhang114/MME-RealWorld-Base64): the "
               "options as the list's Python repr, A-E columns, image (base64)",
          key="index")
def mme_realworld_lite(raw: dict, row: Row) -> dict:
    options = mme_options(raw)
    answer = gold_letter(options, raw.get("answer"))
    image = raw.get("bytes") if not _missing(raw.get("bytes")) else raw.get("image")
    return example(row, row.image(image), _text(raw.get("question"), "question"),
                   options, answer)


@register("spatial_mm_obj", None, split="test",
          card="Spatial-MM (github FatemehShiri/Spatial-MM; no hub card found): spatial_mm_one_obj.json / "
               "spatial_mm_two_obj.json, lists of {image_name, question (options inline 'A. x'), "
               "answer ('B. right'), object1, object2}; images separate (give image_root)")
def spatial_mm_obj(raw: dict, row: Row) -> dict:
    question, options = inline_options(_text(raw.get("question"), "question"))
    answer = gold_letter(options, raw.get("answer"))
    return example(row, row.image(raw.get("image_name") or raw.get("image")),
                   question, options, answer)


@register("spatial_mm_multihop", None, split="test", multiple_choice=False,
          card="Spatial-MM multi-hop (github FatemehShiri/Spatial-MM; no hub card found): "
               "multihop_reasoning_309.json, a list of {image_name, question, answer (free text), "
               "reasoning, hop}; images separate (give image_root)")
def spatial_mm_multihop(raw: dict, row: Row) -> dict:
    question = _text(raw.get("question"), "question")
    try:  # some copies add options to the question
        question, options = inline_options(question)
        answer = gold_letter(options, raw.get("answer"))
    except BadRow:
        options, answer = [], _text(raw.get("answer"), "gold answer")
    return example(row, row.image(raw.get("image_name") or raw.get("image")),
                   question, options, answer)


@register("custom", None, split="train", multiple_choice=False,
          card="any local JSONL/JSON/parquet/CSV/TSV/imagefolder (or hub id); `columns` maps canonical "
               "fields to source columns; options may be a list column or a list of columns; a set without "
               "options says free_form: true",
          key=lambda raw, spec: raw.get(spec.columns.get("id", "id")))
def custom(raw: dict, row: Row) -> dict:
    cols = custom_columns(row.spec)
    source_options = cols["options"]
    if row.spec.free_form:
        options = []
    elif isinstance(source_options, list):  # one column per option, in order
        options = letter_columns({LETTERS[i]: raw.get(c) for i, c in enumerate(source_options)})
    else:
        value = raw.get(source_options)
        if isinstance(value, str) and value.strip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise BadRow(f"options column {source_options!r} is not a list") from None
        if not isinstance(value, list) and _missing(value):
            value = []
        if not isinstance(value, list):
            raise BadRow(f"options column {source_options!r} is not a list")
        options = [str(o).strip() for o in value if not _missing(o)]
    if not row.spec.free_form and not options:
        raise BadRow("no options for a multiple-choice question")
    answer = raw.get(cols["answer"])
    answer = custom_gold(options, answer) if options else _text(answer, "gold answer")
    images = raw.get(cols["images"]) if cols["images"] in raw else None
    image = [row.image(v) for v in images] if isinstance(images, list) else row.image(raw.get(cols["image"]))
    return example(row, image, _text(raw.get(cols["question"]), "question"),
                   options, answer)


def custom_columns(spec: DatasetSpec) -> dict[str, str | list[str]]:
    cols: dict[str, str | list[str]] = {c: c for c in CANONICAL_COLUMNS}
    cols.update(spec.columns)
    return cols


def custom_gold(options: list[str], answer: Any) -> str:
    """The gold letter of a custom row: as `gold_letter` reads it, once the options are known to be
    distinct, and with an answer that reads two ways (an index or a letter that is also another option's
    text) named instead of guessed (`rewards.options.gold_index`'s strict mode)."""
    return gold_letter(options, answer, strict=True)


def check_custom_columns(spec: DatasetSpec, columns: set[str] | list[str], where: str) -> None:
    """A custom set's columns against the recipe's `columns` mapping: a missing one is named (a file-level
    problem, so an error whatever on_bad_row says), and a set without options must say free_form: true."""
    columns = set(columns)
    cols = custom_columns(spec)
    missing = [f"{field} ({cols[field]!r})" for field in ("question", "answer") if cols[field] not in columns]
    if cols["image"] not in columns and cols["images"] not in columns:
        missing.append(f"image ({cols['image']!r}) or images ({cols['images']!r})")
    if "id" in spec.columns and cols["id"] not in columns:
        missing.append(f"id ({cols['id']!r})")
    options = cols["options"]
    if spec.free_form:
        if isinstance(options, list) or options in columns:
            raise DataError(f"Dataset 'custom': {where} has options ({options!r}) but the spec says free_form: true; "
                            "remove one of them.")
    elif isinstance(options, list):
        if absent := [c for c in options if c not in columns]:
            missing.append(f"options ({', '.join(map(repr, absent))})")
    elif options not in columns:
        missing.append(f"options ({options!r}; a set whose answers are free text says free_form: true)")
    if missing:
        raise DataError(f"Dataset 'custom': {where} has no column for {'; '.join(missing)}. "
                        f"Its columns: {sorted(columns)}; map yours with 'columns'.")


# JSON and JSON Lines files of a custom set are read here rather than by `datasets`, so that a problem
# names its file and line: an empty file, a line that is not JSON, a missing column, a row that cannot
# be used. (The `datasets` JSON reader says "StopIteration" or "JSON parse error" with no line.)


@dataclass(frozen=True)
class JsonRows:
    rows: list[dict]
    where: list[str]  # "FILE line N" (or "FILE item N" in a JSON array) of each row
    columns: frozenset[str]

    def __len__(self) -> int:
        return len(self.rows)


def is_custom_json(spec: DatasetSpec) -> bool:
    """Whether the spec's files are JSON read here rather than by `datasets`: a custom set's, and those of
    an adapter whose JSON copies may hold lists (`Adapter.list_fields`), which `datasets` cannot read."""
    if spec.path is None or not (spec.name == "custom" or ADAPTERS[spec.name].list_fields):
        return False
    files = local_files(spec)
    return bool(files) and all(os.path.isfile(f) and Path(f).suffix.lower() in (".json", ".jsonl") for f in files)


def read_custom_json(spec: DatasetSpec) -> JsonRows:
    files = local_files(spec)
    rows, where = [], []
    for f in files:
        stat = os.stat(f)
        r, w = _read_json_file(f, stat.st_mtime_ns, stat.st_size, spec.name, ADAPTERS[spec.name].list_fields)
        rows += r
        where += w
    columns = frozenset(k for row in rows for k in row)
    return JsonRows(rows, where, columns)


@functools.lru_cache(maxsize=4)  # check_spec reads the file before the model is built; loading reuses it
def _read_json_file(path: str, mtime_ns: int, size: int, name: str = "custom",
                    list_fields: tuple[str, ...] | None = None) -> tuple[list[dict], list[str]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"Dataset '{name}': cannot read {path}: {e}.") from None
    if not text.strip():
        raise DataError(f"Dataset '{name}': {path} is empty.")
    if Path(path).suffix.lower() == ".json":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # "Extra data": several documents, i.e. JSON Lines in a .json file
                raise DataError(f"Dataset '{name}': {path} line {e.lineno} is not valid JSON "
                                f"({e.msg}, column {e.colno}).") from None
        else:
            if isinstance(whole, dict) and isinstance(whole.get("data"), list):
                whole = whole["data"]
            items = whole if isinstance(whole, list) else [whole]
            for i, item in enumerate(items):
                if isinstance(item, list) and list_fields and len(item) == len(list_fields):
                    items[i] = dict(zip(list_fields, item))
                elif not isinstance(item, dict):
                    raise DataError(f"Dataset '{name}': {path} item {i + 1} is not a JSON object "
                                    f"(a {type(item).__name__}).")
            if not items:
                raise DataError(f"Dataset '{name}': {path} is empty.")
            return items, [f"{path} item {i + 1}" for i in range(len(items))]
    rows, where = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"Dataset '{name}': {path} line {n} is not valid JSON ({e.msg}, column {e.colno}).") from None
        if isinstance(row, list) and list_fields and len(row) == len(list_fields):
            row = dict(zip(list_fields, row))
        elif not isinstance(row, dict):
            raise DataError(f"Dataset '{name}': {path} line {n} is not a JSON object (a {type(row).__name__}).")
        rows.append(row)
        where.append(f"{path} line {n}")
    return rows, where


# --------------------------------------------------------------------------------------------
# opening a dataset


_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv",
             ".arrow": "arrow"}


def local_files(spec: DatasetSpec) -> list[str]:
    """The files (or the one directory) a spec's `path` names, globs expanded; [] when none exist."""
    paths = [spec.path] if isinstance(spec.path, str) else list(spec.path or [])
    found = []
    for p in paths:
        if p.startswith(("hf://", "http://", "https://")):  # remote files, read by `datasets` itself
            found.append(p)
            continue
        p = os.path.expanduser(p)
        found += sorted(glob.glob(p)) if glob.has_magic(p) else ([p] if os.path.exists(p) else [])
    return found


def check_spec(spec: DatasetSpec) -> None:
    """Recipe-level checks, before anything is loaded."""
    adapter = ADAPTERS[spec.name]
    if spec.columns and spec.name != "custom":
        raise RecipeError(f"Dataset '{spec.name}': 'columns' applies to name: custom only.")
    if spec.free_form and not (spec.name == "custom" or adapter.free_form_ok):
        free = sorted(a.name for a in ADAPTERS.values() if a.free_form_ok)
        raise RecipeError(f"Dataset '{spec.name}': 'free_form' applies to name: custom only, and to "
                          f"{', '.join(free)} (read free-form); any other registered dataset knows whether it "
                          "has options.")
    unknown = set(spec.columns) - set(CANONICAL_COLUMNS)
    if unknown:
        raise RecipeError(f"Dataset '{spec.name}': unknown 'columns' key(s) {sorted(unknown)}; "
                          f"valid: {list(CANONICAL_COLUMNS)}.")
    if spec.path is not None:
        files = local_files(spec)
        if not files:
            raise RecipeError(f"Dataset '{spec.name}': path {spec.path!r} does not exist.")
        if len(files) > 1 and any(os.path.isdir(f) for f in files):
            raise RecipeError(f"Dataset '{spec.name}': path names a directory; give it alone.")
        for f in files:
            if os.path.isfile(f) and Path(f).suffix.lower() not in _BUILDERS:
                raise RecipeError(f"Dataset '{spec.name}': cannot read '{f}'; expected one of "
                                  f"{sorted(_BUILDERS)} or a directory (imagefolder / save_to_disk).")
    elif not (spec.hub_id or adapter.hub_id):
        raise RecipeError(f"Dataset '{spec.name}' is not on the hub: give 'path' to a local copy "
                          f"({adapter.card}) or 'hub_id' of a mirror.")
    if spec.image_root is not None and not Path(spec.image_root).expanduser().is_dir():
        raise RecipeError(f"Dataset '{spec.name}': image_root '{spec.image_root}' is not a directory.")
    if spec.name == "custom" and spec.path is not None:
        for f in local_files(spec):
            if os.path.isfile(f) and os.path.getsize(f) == 0:
                raise DataError(f"Dataset 'custom': {f} is empty.")
        if is_custom_json(spec):  # file-level problems (not JSON, no such column) before any model is built
            data = read_custom_json(spec)
            check_custom_columns(spec, data.columns, ", ".join(local_files(spec)))


def hub_ids(spec: DatasetSpec, adapter: Adapter) -> list[str]:
    """The hub copies tried in turn: the recipe's `hub_id` alone, else the adapter's and its mirrors."""
    if spec.hub_id:
        return [spec.hub_id]
    return [adapter.hub_id, *adapter.mirrors] if adapter.hub_id else []


def open_hub(spec: DatasetSpec, adapter: Adapter):
    """(the split, the hub id it came from): the first of `hub_ids` that loads; a DataError naming every
    id tried, with its cause, when none does."""
    from datasets import load_dataset

    failures = []
    for hub_id in hub_ids(spec, adapter):
        try:
            return load_dataset(hub_id, spec.config or adapter.config, split=spec.split), hub_id
        except Exception as e:  # network, gone, missing split: the next copy, then one message
            failures.append(f"'{hub_id}': {type(e).__name__}: {e}")
    raise DataError(f"Dataset '{spec.name}': cannot load split '{spec.split}' from the hub "
                    f"({'; '.join(failures)})")


def open_dataset(spec: DatasetSpec, adapter: Adapter):
    from datasets import load_dataset, load_from_disk

    if spec.path is None:
        return open_hub(spec, adapter)[0]
    try:
        files = local_files(spec)
        if os.path.isdir(files[0]):
            root = Path(files[0])
            if (root / "dataset_info.json").is_file() or (root / "dataset_dict.json").is_file():
                return _pick_split(load_from_disk(str(root)), spec)
            return _pick_split(load_dataset("imagefolder", data_dir=str(root)), spec)
        suffix = Path(files[0]).suffix.lower()
        kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
        if suffix == ".json" and _json_has_key(files[0]):
            kwargs["field"] = "data"
        return load_dataset(_BUILDERS[suffix], data_files={spec.split: files}, split=spec.split, **kwargs)
    except DataError:
        raise
    except Exception as e:  # missing split, bad file: one clear message with the cause
        raise DataError(f"Dataset '{spec.name}': cannot load split '{spec.split}' from {spec.path}: "
                        f"{type(e).__name__}: {e}") from None


def _json_has_key(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    return head.startswith(b"{") and b'"data"' in head


def _pick_split(data, spec: DatasetSpec):
    from datasets import DatasetDict

    if not isinstance(data, DatasetDict):
        return data
    if spec.split in data:
        return data[spec.split]
    if len(data) == 1:
        return next(iter(data.values()))
    raise DataError(f"Dataset '{spec.name}': no split '{spec.split}' in {spec.path}; it has {sorted(data)}.")


def _raw_rows(ds):
    """Rows as stored (an image as its {bytes, path} struct, undecoded), without rewriting the data:
    a broken image then skips its row instead of failing the run."""
    table = ds.with_format("arrow")
    return lambda index: table[index].to_pylist()[0]


# --------------------------------------------------------------------------------------------
# the entry point


PREFETCH_MARGIN = 0.25  # image URLs fetched up front: those of n x (1 + margin) rows, for the skipped ones


def load_adapted(spec: DatasetSpec, max_pixels: int | None = None) -> list[dict]:
    """Up to `spec.n` canonical examples, from a seeded permutation of the split's rows; images larger
    than `max_pixels` are downscaled (rlvlm.data.images.cap_pixels)."""
    adapter = ADAPTERS[spec.name]
    check_spec(spec)
    image_root = Path(spec.image_root).expanduser() if spec.image_root else None
    where: list[str] | None = None
    hub_id = None
    # The local main process opens the split (the hub download) and fetches the images first; the
    # others then find both in the machine's caches. One such block per dataset on every process.
    with main_process_first():
        if is_custom_json(spec):
            ds = read_custom_json(spec)
            raw_row, where = ds.rows.__getitem__, ds.where
        else:
            if spec.path is None:
                ds, hub_id = open_hub(spec, adapter)
            else:
                ds = open_dataset(spec, adapter)
            if spec.name == "custom":
                source = spec.path if spec.path is not None else f"the hub ('{spec.hub_id}')"
                check_custom_columns(spec, ds.column_names, str(source))
            raw_row = _raw_rows(ds)
        order = list(range(len(ds)))
        random.Random(spec.seed).shuffle(order)
        fetched: dict = {}
        if adapter.image_urls is not None and image_root is None:
            ahead = order[: math.ceil(spec.n * (1 + PREFETCH_MARGIN))]
            fetched = fetch_images({u: sha for i in ahead for u, sha in adapter.image_urls(raw_row(i)).items()})

    examples: list[dict] = []
    skipped: Counter[str] = Counter()
    skipped_ids: list[str] = []
    read = 0
    for index in order:
        if len(examples) >= spec.n:
            break
        read += 1
        raw = raw_row(index)
        key = adapter.row_key(raw, spec)
        rid = f"{adapter.name}-{index if _missing(key) else key}"
        row = Row(spec, adapter, index, image_root, hub_id, rid, max_pixels, fetched)
        try:
            examples.append(adapter.convert(raw, row))
        except BadRow as e:
            at = f"{rid} ({where[index]})" if where else rid
            if spec.on_bad_row == "stop":
                raise DataError(f"Dataset '{spec.name}' (split '{spec.split}'): row {at} cannot be used: {e}. "
                                "Fix the data, or set on_bad_row: skip to skip such rows.") from None
            skipped[_reason(str(e))] += 1
            if len(skipped_ids) < MAX_LOGGED_IDS:
                skipped_ids.append(at)

    if skipped:
        reasons = ", ".join(f"{r}: {c}" for r, c in skipped.most_common())
        log.warning("%s/%s: skipped %d of %d rows read (%s); first skipped: %s", spec.name, spec.split,
                    sum(skipped.values()), read, reasons, ", ".join(skipped_ids))
    log.info("%s/%s: %d examples from %d rows read (split has %d)", spec.name, spec.split, len(examples),
             read, len(ds))
    if not examples:
        raise DataError(f"Dataset '{spec.name}' (split '{spec.split}') has no usable row"
                        + (f" ({', '.join(skipped)})." if skipped else "."))
    return examples


def _reason(message: str) -> str:
    """Group messages by kind for the summary: 'gold 'X' not among options' -> 'gold not among options'."""
    for kind in ("not among options", "disagrees with option", "duplicate option", "is ambiguous", "no options", "unreadable image",
                 "image file not found", "image download failed", "does not match its sha256", "no image",
                 "not contiguous"):
        if kind in message:
            return {"not among options": "gold not among options", "is ambiguous": "gold reads two ways",
                    "disagrees with option": "gold letter and text disagree"}.get(kind, kind)
    return message
