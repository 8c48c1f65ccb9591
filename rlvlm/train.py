"""`rlvlm train`: recipe -> dataset -> TRL GRPOTrainer with rewards -> checkpoints."""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

from rlvlm.recipe import Recipe, RecipeError

log = logging.getLogger("rlvlm")


def _as_blocks(prompt: list[dict]) -> list[dict]:
    """String contents as text blocks: Arrow needs one type per column, and the pre-fill turn is a string."""
    return [
        {**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m["content"], str) else m
        for m in prompt
    ]


def grpo_rows(examples: list[dict], seed: int, probs: dict[str, float] | None = None, epoch: int = 0) -> list[dict]:
    """Canonical examples -> GRPOTrainer rows: a conversational prompt, the image, and reward columns.

    With `probs`, each example is perturbed under a condition drawn deterministically from
    (seed, example id, epoch) — the paper's adversarial augmentation; otherwise every row is "base"."""
    from rlvlm.perturb import augment, perturb

    # TRL reads one image per row from `image`, several from `images`; Arrow wants one column for all rows,
    # so a set holding any multi-image example (SAT) gives every row an `images` list.
    multi = any(ex.get("images") is not None for ex in examples)
    rows = []
    for i, ex in enumerate(examples):
        p = augment(ex, probs, seed=seed, epoch=epoch) if probs else perturb(ex, "base", seed=seed + i)
        if multi:
            pictures = {"images": list(p["images"]) if p.get("images") is not None else
                        [p["image"]] if p.get("image") is not None else []}
        else:
            pictures = {"image": p["image"]}
        rows.append(
            {
                "id": p["id"],
                "prompt": _as_blocks(p["prompt"]),
                **pictures,
                "answer": p["answer"],
                "options": p["options"],
                "think_prefix": p["think_prefix"],
                "condition": p["condition"],
            }
        )
    return rows


def epochs_needed(config, n_examples: int) -> int:
    """How many passes over the data a run makes (each pass gets its own augmentation draw)."""
    if config.max_steps and config.max_steps > 0:
        # generation_batch_size is already global (all processes) and spans one optimizer step
        prompts = config.max_steps * config.generation_batch_size // config.num_generations
        return max(1, math.ceil(prompts / max(1, n_examples)))
    return max(1, math.ceil(config.num_train_epochs))


def training_rows(recipe: Recipe, examples: list[dict], config) -> list[dict]:
    """Rows for the whole run: one augmentation draw per epoch, with the realised mix logged and saved."""
    probs = recipe.augmentation.probs
    epochs = epochs_needed(config, len(examples)) if probs else 1
    rows = [row for epoch in range(epochs) for row in grpo_rows(examples, config.seed, probs, epoch)]
    if probs:
        mix = Counter(row["condition"] for row in rows)
        realised = {c: round(k / len(rows), 4) for c, k in sorted(mix.items())}
        log.info("augmentation over %d epochs x %d examples, realised mix: %s", epochs, len(examples), realised)
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "augmentation_mix.json").write_text(
            json.dumps({"requested": probs, "realised": realised, "counts": dict(mix), "epochs": epochs}, indent=1)
        )
    return rows


# the files `train` writes into the run directory before the model is built
BEFORE_MODEL_FILES = frozenset({"recipe.yaml", "augmentation_mix.json", "preflight_error.txt"})


TRAINER_STATE = "trainer_state.json"


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path, dict]]:
    """(step, directory, trainer state) of every complete checkpoint in `run_dir`, by step: the one rule
    for resuming (`rlvlm train`, `rlvlm sweep`) and for evaluating (`rlvlm eval --follow`). Complete: a
    `checkpoint-N` directory whose trainer_state.json, which Trainer writes after the weights, optimizer
    and RNG states, can be read; a checkpoint cut off while being saved has none (or half of one)."""
    found = []
    for path in Path(run_dir).glob("checkpoint-*"):
        state_file = path / TRAINER_STATE
        if not (path.is_dir() and path.name.split("-", 1)[1].isdigit() and state_file.is_file()):
            continue
        try:
            state = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # being written
        found.append((int(path.name.split("-", 1)[1]), path, state))
    return sorted(found, key=lambda c: c[0])


def last_checkpoint(output_dir: Path) -> Path | None:
    """The highest complete checkpoint (`complete_checkpoints`) in `output_dir`, or None."""
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def check_run_dir(recipe: Recipe) -> bool | str:
    """An existing run is resumed only when asked; it is never silently overwritten.

    Returns the value to pass as `resume_from_checkpoint` to `Trainer.train`."""
    output_dir = Path(recipe.grpo["output_dir"])
    resume = recipe.grpo.get("resume_from_checkpoint")
    # What an attempt stopped before its model was built leaves (e.g. by a failing reward's preflight)
    # is no run to protect: the same command runs again once the cause is fixed.
    has_content = output_dir.is_dir() and any(p.name not in BEFORE_MODEL_FILES for p in output_dir.iterdir())
    if resume:
        if resume in ("true", "True", "last"):  # a YAML `true` arrives as "true" (see recipe.build_recipe)
            ckpt = last_checkpoint(output_dir)
            if ckpt is None:
                raise RecipeError(f"Cannot resume: '{output_dir}' holds no complete checkpoint-* directory "
                                  "(one with its trainer_state.json).")
            return str(ckpt)
        if not Path(resume).is_dir():
            raise RecipeError(f"Cannot resume: checkpoint '{resume}' does not exist.")
        return str(resume)
    if has_content:
        raise RecipeError(
            f"Run directory '{output_dir}' already exists and is not empty. Resume it with "
            "'--resume_from_checkpoint true', or choose another '--output_dir'."
        )
    return False


def validate(recipe: Recipe) -> None:
    """Every check that can fail on user input, before anything heavy is built."""
    from rlvlm.composition import load_rewards
    from rlvlm.data.load import check_dataset
    from rlvlm.models import check_model_name

    check_model_name(recipe.model)
    check_dataset(recipe.data.train)
    for spec in recipe.data.eval:
        check_dataset(spec)
    load_rewards(recipe.rewards)
    warn_if_warm_start_prompts(recipe)
    try:
        config = recipe.grpo_config()
    except (ValueError, TypeError) as e:
        raise RecipeError(f"Invalid GRPO settings: {e}") from None
    section = recipe.evaluation
    if section.enabled and section.mode == "inline" and section.engine == "vllm" and not config.use_vllm:
        raise RecipeError("evaluation.engine: vllm evaluates inline through the trainer's own vLLM engine, and "
                          "this recipe trains without one (use_vllm: false). Set use_vllm: true, "
                          "evaluation.engine: auto, or evaluation.mode: follow.")


def warm_start_overlap(recipe: Recipe) -> int:
    """How many GRPO training examples the tiny model's warm-start was fine-tuned on."""
    from rlvlm.models import is_tiny
    from rlvlm.warmstart import sft_source

    if not (is_tiny(recipe.model) and recipe.warm_start.enabled):
        return 0
    split, seed, n = sft_source(recipe.warm_start)
    specs = recipe.data.train if isinstance(recipe.data.train, list) else [recipe.data.train]
    return sum(min(spec.n, n) for spec in specs if (spec.name, spec.split, spec.seed) == ("shapes", split, seed))


def warn_if_warm_start_prompts(recipe: Recipe) -> None:
    # The warm-started model has memorised its SFT examples (sampled reward ~0.92 on them against ~0.75
    # on new ones), so GRPO on them learns about sampling noise, not about what it gets wrong.
    overlap = warm_start_overlap(recipe)
    if overlap:
        log.warning(
            "%d GRPO training examples are ones the warm-start was fine-tuned on (shapes, seed %d); "
            "give data.train another seed for prompts it has not seen.", overlap, recipe.warm_start.seed,
        )


def wandb_has_credentials() -> bool:
    """Whether wandb would find a key: WANDB_API_KEY (or an identity token file), or the ~/.netrc entry
    for the W&B host that `wandb login` writes. (wandb has no public call that answers this without
    prompting or reaching the server.)"""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def default_wandb_offline(report_to: list[str]) -> bool:
    """With wandb among the loggers (`report_to` as TrainingArguments normalises it: a list, "all" already
    expanded), no key and no WANDB_MODE of the user's, log offline rather than let wandb.init stop the run
    asking for a key. Returns whether it set WANDB_MODE=offline."""
    if "wandb" not in report_to or "WANDB_MODE" in os.environ or wandb_has_credentials():
        return False
    os.environ["WANDB_MODE"] = "offline"
    log.warning(
        "wandb: no API key (WANDB_API_KEY or `wandb login`), so this run logs offline under %s; "
        "upload it later with `wandb sync`. Set WANDB_MODE to choose otherwise.",
        Path(os.environ.get("WANDB_DIR", ".")) / "wandb",
    )
    return True


def default_wandb_shared(report_to: list[str], recipe: Recipe) -> bool:
    """With `evaluation.mode: follow` the follower writes into this run's wandb run from another process;
    wandb takes a second writer only when the run is in its shared mode, so an online run is started
    in it (the trainer stays the primary writer). A WANDB_MODE of the user's is left alone."""
    if recipe.evaluation.mode != "follow" or "wandb" not in report_to or "WANDB_MODE" in os.environ:
        return False
    os.environ["WANDB_MODE"] = "shared"
    return True


def save_resolved_recipe(recipe: Recipe) -> Path:
    """RUN_DIR/recipe.yaml: the recipe with every override and default written out (main process), which
    the follower and anyone re-running the run read."""
    import yaml
    from accelerate import PartialState

    from rlvlm.evaluation.follow import RESOLVED_RECIPE

    out = Path(recipe.grpo["output_dir"]) / RESOLVED_RECIPE
    if PartialState().is_main_process:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(recipe.resolved(), sort_keys=False))
        tmp.replace(out)
    return out


def build_trainer(recipe: Recipe, progress: bool = True, resume_from: str | None = None):
    from transformers import AutoProcessor
    from trl import GRPOTrainer

    from rlvlm.composition import bind_policy, load_rewards
    from rlvlm.data.images import image_dataset
    from rlvlm.data.load import load_same_items
    from rlvlm.finetune import freeze_vision_tower, peft_config
    from rlvlm.models import resolve_model, warm_start_model
    from rlvlm.prefill import ensure_prefill
    from rlvlm.preflight import check_rewards

    config = recipe.grpo_config()
    if not progress:
        config.disable_tqdm = True
    default_wandb_offline(config.report_to)
    default_wandb_shared(config.report_to, recipe)
    reward_funcs, weights = load_rewards(recipe.rewards)
    config.reward_weights = weights
    # every process trains on the same items, or all stop with the same error
    examples = load_same_items({"data.train": recipe.data.train}, max_pixels=recipe.model.max_pixels)["data.train"]
    rows = training_rows(recipe, examples, config)
    # The data is there and the model is not: a reward that fails on a few of its rows stops the run
    # now (exit 2, traceback in RUN_DIR/preflight_error.txt), not after the model is built.
    check_rewards(reward_funcs, rows, config.output_dir)

    model_path = resolve_model(recipe.model, progress=progress)
    model_path = warm_start_model(recipe.model, model_path, recipe.warm_start, progress=progress)
    if resume_from and not recipe.peft.enabled:
        # The checkpoint holds Qwen2.5-VL's weights under the original key names (`model.layers.*`,
        # `visual.*`: transformers 5 writes them back in that layout), which from_pretrained converts
        # to the model's own (`model.language_model.*`, `model.visual.*`). Building the model from the
        # checkpoint restores them; see skip_trainer_weight_reload for the Trainer's own load.
        model_path = resume_from
    processor = AutoProcessor.from_pretrained(model_path)
    processor.tokenizer.padding_side = "left"
    ensure_prefill(processor)  # pre-filled thinks stay open under TRL's add_generation_prompt=True
    if len(rows) > len(set(r["id"] for r in rows)) and config.max_steps <= 0:
        config.num_train_epochs = 1  # the rows already hold every epoch, each with its own augmentation draw
    train = image_dataset(rows)  # images stay encoded; the trainer's batches decode them
    trainer = GRPOTrainer(
        model=model_path,
        reward_funcs=reward_funcs,
        args=config,
        train_dataset=train,
        processing_class=processor,
        peft_config=peft_config(recipe.peft, recipe.model),
    )
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # with tqdm off, Trainer prints every log dict instead
    if resume_from and not recipe.peft.enabled:
        skip_trainer_weight_reload(trainer, resume_from)
    if recipe.model.freeze_vision:
        freeze_vision_tower(trainer.model)  # before train() builds the optimizer
    # Rewards that score with the current policy (counterfactual) get a weak reference to the trainer
    # and read trainer.model / trainer.processing_class at each call: no callback, no subclass.
    bind_policy(reward_funcs, trainer)
    from rlvlm.callbacks import RewardWatch, attach_evaluator

    trainer.add_callback(RewardWatch(reward_funcs))  # a gate whose judge stays down stops the run with a checkpoint
    attach_evaluator(trainer, recipe)  # inline: evaluates step 0 and the saved checkpoints into RUN_DIR/eval/
    return trainer


def skip_trainer_weight_reload(trainer, checkpoint: str) -> None:
    """Keep `Trainer.train(resume_from_checkpoint=checkpoint)` from loading the checkpoint's weights a
    second time, into a model already built from that checkpoint by from_pretrained.

    `Trainer._load_from_checkpoint` reads model.safetensors and calls a plain
    `model.load_state_dict(state_dict, strict=False)`, without the key conversion from_pretrained
    applies: none of the checkpoint's keys (`model.layers.*`, `visual.*`) is a key of the model
    (`model.language_model.*`, `model.visual.*`), so it loads nothing and warns "There were missing
    keys in the checkpoint model loaded: [every weight]" on every resume, although the weights are
    restored. Only that weight load is skipped: the Trainer still restores the optimizer, scheduler,
    RNG and step from the checkpoint, and any other call (another checkpoint, FSDP's wrapped-model
    load) goes through unchanged."""
    reload = trainer._load_from_checkpoint
    built_from = Path(checkpoint).resolve()

    def load_from_checkpoint(resume_from_checkpoint, model=None):
        if model is None and Path(resume_from_checkpoint).resolve() == built_from:
            log.info("resume: the model was built from %s; its weights are not loaded again", checkpoint)
            return None
        return reload(resume_from_checkpoint, model)

    trainer._load_from_checkpoint = load_from_checkpoint


def close_judges(reward_funcs) -> None:
    """Close the HTTP clients of the judges among the rewards (JudgeReward.close)."""
    from rlvlm.composition import components

    for _, fn in components(reward_funcs):
        if callable(getattr(fn, "probe", None)) and callable(getattr(fn, "close", None)):
            fn.close()


def train(recipe: Recipe, progress: bool = True) -> Path:
    """Run the recipe; returns the run directory. Raises RunStopped when a reward asked to stop."""
    from rlvlm.callbacks import RewardWatch
    from rlvlm.preflight import probe_recipe_judges

    validate(recipe)
    resume = check_run_dir(recipe)
    # every judge the run uses answers now, or the run stops (exit 2) before anything is built
    probe_recipe_judges(recipe, training=True)
    save_resolved_recipe(recipe)
    trainer = build_trainer(recipe, progress=progress, resume_from=resume or None)
    try:
        trainer.train(resume_from_checkpoint=resume or None)
    finally:
        close_judges(trainer.reward_funcs)
    trainer.save_state()
    watch = next((c for c in trainer.callback_handler.callbacks if isinstance(c, RewardWatch)), None)
    if watch is not None and watch.stop_reason:
        raise RunStopped(f"stopped at step {trainer.state.global_step}: {watch.stop_reason}")
    return Path(recipe.grpo["output_dir"])


class RunStopped(RuntimeError):
    """Training stopped early on purpose, with a checkpoint (a reward gate's judge stayed down)."""
