"""Warm-start of the tiny model: vision pre-training, then TRL's SFTTrainer on templated CoTs.

A randomly initialised model never emits a parsable answer, so GRPO would see no reward signal.
1. The vision tower learns to recognise each cell (colour, shape, row and column, from the scene
   graph) through a linear probe on its merged tokens, which are also pulled toward fixed codes that
   give the four attributes equal weight: a stand-in for the pretrained encoder every real VLM starts
   from; it takes seconds and spares the SFT from discovering features and routing at once.
2. With the vision tower frozen, SFT on `<think>{correct reasoning}</think><answer>{letter}</answer>`
   gives RL a policy that is good but not saturated.
The result is cached next to the tiny model, keyed by the section's values.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import tempfile
from pathlib import Path

from rlvlm.finetune import freeze_vision_tower
from rlvlm.recipe import WarmStartSection, machine_defaults


SELF_CORRECTION = "Wait, let me look again."
SHORT_REASONING = ("I can tell at a glance.", "It is clear from the picture.")


def response_for(example: dict, letter: str, seed: int = 0) -> str:
    from rlvlm.data import shapes

    return f"<think>{shapes.cot_for(example, letter, seed=seed)}</think><answer>{letter}</answer>"


def self_corrected_response(example: dict, wrong: str, seed: int = 0) -> str:
    """Reasoning toward the wrong letter, then SELF_CORRECTION and the gold reasoning and answer."""
    from rlvlm.data import shapes

    gold = example["answer"]
    think = f"{shapes.cot_for(example, wrong, seed=seed)} {SELF_CORRECTION} {shapes.cot_for(example, gold, seed=seed)}"
    return f"<think>{think}</think><answer>{gold}</answer>"


def short_response(example: dict, letter: str, seed: int = 0) -> str:
    """Evidence-free reasoning: one sentence that states nothing about the image, then the conclusion."""
    from rlvlm.data import shapes

    opener = SHORT_REASONING[seed % len(SHORT_REASONING)]
    return f"<think>{opener} {shapes.conclusion(example, letter)}</think><answer>{letter}</answer>"


def sft_source(section: WarmStartSection) -> tuple[str, int, int]:
    """(split, seed, n): the SFT fits shapes examples 0..n-1 of that split and seed."""
    return "train", section.seed, section.n_examples


def teacher_letter(example: dict, section: WarmStartSection, rng: random.Random) -> str:
    """The letter the warm-start's teacher answers: gold, unless the teacher confuses the gold option of
    the example's family (section.teacher_confusions) and the draw falls within teacher_error_rate."""
    from rlvlm.data.shapes import LETTERS

    gold, options = example["answer"], example["options"]
    confused = section.teacher_confusions.get(example["family"], {}).get(options[LETTERS.index(gold)])
    if confused in options and rng.random() < section.teacher_error_rate:
        return LETTERS[options.index(confused)]
    return gold


def teacher_response(example: dict, section: WarmStartSection, rng: random.Random, seed: int) -> str:
    """The teacher's response to an uncaptioned prompt: a self-correction, an evidence-free short
    reasoning, or (the rest) the reasoning and answer of teacher_letter, its answer sometimes filtered
    back to gold (teacher_answer_kept)."""
    from rlvlm.data.shapes import LETTERS

    gold = example["answer"]
    draw = rng.random()
    if draw < section.self_correction:
        wrong = [x for x in LETTERS[:len(example["options"])] if x != gold]
        return self_corrected_response(example, rng.choice(wrong), seed=seed)
    letter = teacher_letter(example, section, rng)
    if draw < section.self_correction + section.short_reasoning:
        return short_response(example, letter, seed=seed)
    response = response_for(example, letter, seed=seed)
    if letter != gold and rng.random() < section.teacher_answer_kept:
        # the answer survived the filter, the reasoning toward the confused option did not get checked
        response = response.replace(f"<answer>{letter}</answer>", f"<answer>{gold}</answer>")
    return response


def sft_rows(section: WarmStartSection) -> list[dict]:
    from rlvlm.data import shapes
    from rlvlm.perturb import augment

    split, seed, n = sft_source(section)
    rng = random.Random(f"teacher|{section.seed}")
    rows = []
    for i, ex in enumerate(shapes.generate_examples(split, n, seed=seed)):
        shown = augment(ex, section.captions, seed=section.seed, epoch=0)
        if shown["caption"] is not None:
            # the teacher reads the caption and never contradicts it
            response = response_for(ex, shown["target"], seed=i // 16)
        else:
            response = teacher_response(ex, section, rng, seed=i // 16)
        completion = [{"role": "assistant", "content": response}]
        rows.append({"prompt": shown["prompt"], "completion": completion, "images": [ex["image"]]})
    return rows


PROBE_TARGETS = ("colour", "shape", "row", "column")  # per merged token; colour and shape include "empty"


def pretrain_vision(model, processor, section: WarmStartSection, progress: bool = True):
    """Per-cell recognition (colour, shape, row, column) through a linear probe on the vision tower's
    merged tokens; returns the probe (logits for PROBE_TARGETS, concatenated).

    A plain torch loop: no library trains a vision tower against per-token labels, and this is a few
    seconds on a CPU. The warm-start throws the probe away; only the vision tower keeps what it learned."""
    import random

    import torch
    from tqdm.auto import trange

    from rlvlm.data import shapes

    colours = {c: i for i, c in enumerate(shapes.COLORS)}
    kinds = {k: i for i, k in enumerate(shapes.SHAPES)}
    empty_colour, empty_shape = len(colours), len(kinds)

    def labels(example):
        grid = example["scene"]["grid"]
        colour, shape = [empty_colour] * grid * grid, [empty_shape] * grid * grid
        for obj in example["scene"]["objects"]:
            cell = obj["row"] * grid + obj["col"]
            colour[cell], shape[cell] = colours[obj["color"]], kinds[obj["shape"]]
        return colour, shape

    examples = shapes.generate_examples("train", min(section.n_examples, 4096), seed=section.seed)
    vision = model.model.visual
    grid = shapes.GRID
    # Each merged token is also asked for its cell's row and column: position questions need the
    # decoder to read where an object is, and rotary position codes alone do not put that in the tokens.
    sizes = [empty_colour + 1, empty_shape + 1, grid, grid]
    width = model.config.vision_config.out_hidden_size
    probe = torch.nn.Linear(width, sum(sizes))
    # Fixed random codes, one per value of each target, of equal norm: each token is also pulled toward
    # the sum of its cell's four codes, so colour, shape, row and column each carry a quarter of its
    # variance. Left to the probe alone, colour (raw pixel values) takes ~93% of it and the decoder,
    # which learns the loudest directions first, never learns to read shape or place.
    generator = torch.Generator().manual_seed(section.seed)
    codes = [torch.nn.functional.normalize(torch.randn(n, width, generator=generator), dim=-1) * (width**0.5 / 2)
             for n in sizes]
    rows_cols = torch.tensor([[cell // grid, cell % grid] for cell in range(grid * grid)])
    optimizer = torch.optim.AdamW([*vision.parameters(), *probe.parameters()], lr=section.learning_rate)
    rng = random.Random(section.seed)
    torch.manual_seed(section.seed)
    vision.train()
    for _ in trange(section.vision_steps, desc="warm-start: vision", disable=not progress):
        batch = rng.sample(examples, 32)
        pixels = processor.image_processor(images=[ex["image"] for ex in batch], return_tensors="pt")
        tokens = vision(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"]).pooler_output
        colour, shape = (torch.tensor(sum(cols, [])) for cols in zip(*(labels(ex) for ex in batch)))
        where = rows_cols.repeat(len(batch), 1)
        targets = (colour, shape, where[:, 0], where[:, 1])
        loss = sum(torch.nn.functional.cross_entropy(logit, target)
                   for logit, target in zip(probe(tokens).split(sizes, dim=-1), targets))
        loss = loss + torch.nn.functional.mse_loss(tokens, sum(c[t] for c, t in zip(codes, targets)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe


WARM_START_VERSION = 6  # bump when the SFT data or the vision pre-training change: the cache key includes it


def warm_start_dir(base: Path, section: WarmStartSection) -> Path:
    key = json.dumps({"base": base.name, "version": WARM_START_VERSION, **section.model_dump()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return base.parent / f"{base.name}-sft-{digest}"


@contextlib.contextmanager
def _cache_lock(out: Path, state):
    """Held while the warm-start at `out` is checked and, if absent, built: concurrent runs sharing the
    cache (a sweep, two jobs) wait for the first one and reuse its result, as `build_tiny` does, with the
    same lock file next to the directory. Within one `accelerate launch` every rank takes part in the
    SFT, so only rank 0 takes the file lock and the other ranks wait for it at a barrier."""
    from filelock import FileLock

    lock = FileLock(str(out) + ".lock") if state.is_main_process else contextlib.nullcontext()
    with lock:
        state.wait_for_everyone()  # every rank now sees the cache as the lock holder does
        yield
        state.wait_for_everyone()  # rank 0 has renamed the result into place before the lock is released


# Warm-starts shipped with rlvlm, one directory per cache key (named as warm_start_dir names it). The
# same code and key build different weights on different CPUs (float rounding over 2,400 SFT steps: 0.830,
# 0.790 and 0.797 on three machines); a shipped copy gives every machine the weights behind the
# documented numbers, and the main job skips the SFT. `python -m rlvlm.warmstart RECIPE` rebuilds one.
SHIPPED = Path(__file__).resolve().parent / "warm_starts"
SHIPPED_FILES = ("config.json", "generation_config.json", "model.safetensors", "chat_template.jinja",
                 "processor_config.json", "tokenizer.json", "tokenizer_config.json", "rlvlm_warm_start.json")


def shipped_warm_start(out: Path) -> Path | None:
    """The shipped copy of the warm-start that would be built at `out`, or None when none ships."""
    shipped = SHIPPED / out.name
    return shipped if (shipped / "rlvlm_warm_start.json").exists() else None


def warm_start(base: str | Path, section: WarmStartSection, progress: bool = True) -> Path:
    from accelerate import PartialState

    base = Path(base)
    out = warm_start_dir(base, section)
    # Under `accelerate launch` every rank takes part (the SFT runs data-parallel, split so the global
    # batch is the recipe's whatever the world size); rank 0 writes the cache and the others wait for it.
    state = PartialState()
    with _cache_lock(out, state):
        if not (out / "rlvlm_warm_start.json").exists():
            if (shipped := shipped_warm_start(out)) is not None:
                if state.is_main_process:
                    _install(shipped, out)
            else:
                _build(base, out, section, state, progress)
    return out


def _install(shipped: Path, out: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=out.name + ".tmp"))
    for name in SHIPPED_FILES:
        shutil.copy2(shipped / name, tmp / name)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def ship(recipe_path: str, dest: Path = SHIPPED, progress: bool = True) -> Path:
    """Build the warm-start of a recipe from scratch (never from a cache or a shipped copy) and write it
    to `dest`/<its cache key>, the files SHIPPED_FILES; shipped copies of other keys are removed."""
    from accelerate import PartialState

    from rlvlm.recipe import load_recipe
    from rlvlm.tiny import build_tiny, tiny_model_dir

    recipe = load_recipe(recipe_path)
    seed = recipe.model.seed
    with tempfile.TemporaryDirectory() as work:
        base = build_tiny(seed=seed, path=Path(work) / tiny_model_dir(seed).name, progress=progress)
        out = warm_start_dir(base, recipe.warm_start)
        _build(base, out, recipe.warm_start, PartialState(), progress)
        target = Path(dest) / out.name
        for old in Path(dest).glob("*") if Path(dest).exists() else []:
            if old.is_dir() and old.name != out.name:
                shutil.rmtree(old)
        target.mkdir(parents=True, exist_ok=True)
        for name in SHIPPED_FILES:
            shutil.copy2(out / name, target / name)
        info = json.loads((target / "rlvlm_warm_start.json").read_text())
        (target / "rlvlm_warm_start.json").write_text(json.dumps({**info, "base": base.name}))  # not this machine's path
    return target


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Rebuild the warm-start of a recipe and ship it with rlvlm.")
    parser.add_argument("recipe")
    parser.add_argument("--dest", type=Path, default=SHIPPED)
    args = parser.parse_args()
    print(ship(args.recipe, args.dest))


def _build(base: Path, out: Path, section: WarmStartSection, state, progress: bool) -> None:
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    processor = AutoProcessor.from_pretrained(base)
    model = AutoModelForImageTextToText.from_pretrained(base)
    if section.vision_steps:
        pretrain_vision(model, processor, section, progress=progress)
        # SFT at the warm-start's learning rate re-tunes the vision tower toward what the decoder reads
        # first, colour, and wipes out shape (a fresh probe on its tokens: 100% -> 76%); kept frozen,
        # it stays the pretrained encoder that real VLM fine-tuning usually freezes too.
        freeze_vision_tower(model)
    dataset = Dataset.from_list(sft_rows(section))
    tmp = Path(tempfile.mkdtemp(dir=base.parent, prefix=out.name + ".tmp"))
    args = SFTConfig(
        output_dir=str(tmp),
        num_train_epochs=section.epochs,
        per_device_train_batch_size=max(1, section.batch_size // state.num_processes),
        learning_rate=section.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.0,
        logging_steps=20,
        save_strategy="no",
        report_to="none",
        seed=section.seed,
        max_length=None,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        # TRL turns activation checkpointing on by default; the tiny model's activations are a few MB,
        # so recomputing them would only cost time (~14% of the SFT on a CPU).
        gradient_checkpointing=False,
        **machine_defaults(),
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    try:
        trainer.train()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a killed warm-start leaves no half-written cache
        raise
    trainer.save_model(str(tmp))
    if state.is_main_process:
        processor.save_pretrained(tmp)
        (tmp / "rlvlm_warm_start.json").write_text(json.dumps({"base": str(base), **section.model_dump()}))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
