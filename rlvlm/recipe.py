"""Recipes: one YAML file per run.

Top-level keys are either rlvlm's own sections (`model`, `warm_start`, `data`, `rewards`,
`augmentation`, `evaluation`) or `trl.GRPOConfig` fields, which pass straight through to TRL.
A recipe may start from another: `base: PATH` (relative to the file that names it) reads that recipe
first and lays this one over it by `merge`'s rule (a section's mappings merge key by key, anything else
replaces); a base may have a base of its own, and a cycle is an error naming the files. Command-line
overrides `--key value` (dotted for sections: `--model.name ID`) are applied on top. Every problem is
reported as a `RecipeError` before any model is built.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator


class RecipeError(ValueError):
    """A recipe or override that cannot be used. The CLI prints it and exits with status 2."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelSection(Section):
    name: str = "tiny"  # "tiny" (the embedded Qwen2.5-VL), a hub id, or a local path
    seed: int = 0  # seeds the tiny model's weights and tokenizer corpus
    # The weights' dtype, passed to from_pretrained (through GRPOConfig.model_init_kwargs in training: TRL
    # loads a model named by a string in float32 unless told otherwise). auto: the checkpoint's own.
    dtype: typing.Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # auto: flash_attention_2 where flash-attn is importable, a GPU is there and the weights are 16-bit;
    # sdpa otherwise (rlvlm.models.attn_implementation)
    attn_implementation: typing.Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    freeze_vision: bool = False
    # Images of real datasets larger than this many pixels are downscaled when loaded, before the
    # transformers processor or vLLM sees them, so both make the same image tokens (rlvlm.data.images).
    # None: as the dataset stores them, within the processor's own limit.
    max_pixels: int | None = Field(None, gt=0)


class WarmStartSection(Section):
    """Supervised warm-start (TRL SFTTrainer on templated CoTs) of the tiny model; cached."""

    enabled: bool = True
    vision_steps: int = Field(200, ge=0)  # per-cell recognition pre-training of the vision tower first
    n_examples: int = Field(12800, gt=0)
    epochs: float = Field(3.0, gt=0)
    learning_rate: float = Field(7e-4, gt=0)  # vision pre-training and SFT; see docs/experiments.md
    batch_size: int = Field(16, gt=0)
    seed: int = 0
    # Share of SFT prompts that carry a caption, by condition: real instruction data often comes with
    # captions that can be trusted, so the warm-started model learns to lean on them, the habit the
    # wrong_caption condition measures. A caption row's target reasons toward the caption's option (the
    # teacher, shown the caption, never contradicts it): with only true captions, that is the gold one.
    captions: dict[str, float] = {"correct_caption": 0.3}
    # An imperfect teacher: {family: {gold option: option the teacher gives instead}}. An SFT example of
    # that family whose gold option is a key is, with probability teacher_error_rate, written toward the
    # confused option, with reasoning that states the false facts implying it. Cold-start data distilled
    # from a real model carries such blind spots; a verifiable reward is what corrects them.
    teacher_confusions: dict[str, dict[str, str]] = {}
    teacher_error_rate: float = Field(0.0, ge=0, le=1)
    # Answers filtered right, reasoning not: distilled cold-start data is usually filtered on the final
    # answer, so it holds right answers reached through wrong reasoning. Of the confused rows, this share
    # keeps the gold answer after the reasoning that argues the confused option: the model gets an
    # image-to-answer path besides copying its own conclusion, so that outcome-only RL can raise
    # accuracy while the reasoning stays wrong (consistency falls), which a faithfulness gate can pull back.
    teacher_answer_kept: float = Field(0.0, ge=0, le=1)
    # Self-correction: this share of rows first reasons toward a wrong option, then "Wait, let me look
    # again." and the gold reasoning and answer. Real long-CoT data holds such turns; they make a
    # pre-filled wrong think escapable (some sampled answers under wrong_think are right), which gives
    # wrong_think augmentation a reward gradient.
    self_correction: float = Field(0.0, ge=0, le=1)
    # Evidence-free reasoning: this share of rows reasons in one sentence that states no fact of the
    # image ("I can tell at a glance. So the answer is (B) green."). Real cold-start data holds such
    # short CoTs; the model can then collapse onto them if the rewards push toward short responses.
    short_reasoning: float = Field(0.0, ge=0, le=1)

    @field_validator("teacher_confusions")
    @classmethod
    def _confusions_by_family(cls, confusions: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        from rlvlm.conditions import FAMILIES, FAMILY_OPTIONS

        if unknown := sorted(set(confusions) - set(FAMILIES)):
            raise ValueError(f"warm_start.teacher_confusions is keyed by shapes family ({', '.join(FAMILIES)}); "
                             f"got {', '.join(unknown)}")
        for family, pairs in confusions.items():
            options = FAMILY_OPTIONS[family]
            if bad := sorted({o for pair in pairs.items() for o in pair} - set(options)):
                raise ValueError(f"warm_start.teacher_confusions.{family}: {', '.join(bad)} is not an option of "
                                 f"{family} questions ({', '.join(options)})")
        return confusions

    @field_validator("captions")
    @classmethod
    def _caption_conditions(cls, probs: dict[str, float]) -> dict[str, float]:
        from rlvlm.conditions import check_probs

        allowed = ("correct_caption", "wrong_caption", "wrong_caption_hedge")
        if any(k not in allowed for k in probs):
            raise ValueError(f"warm_start.captions takes {', '.join(allowed)}; got {sorted(probs)}")
        check_probs(probs)
        return probs


class DatasetSpec(Section):
    """One dataset: `shapes` (generated), a registered adapter (rlvlm.data.adapters), or `custom`.

    `n` examples are taken from a `seed`ed permutation of the split's usable rows. Real datasets load
    from the hub (`hub_id` overrides the adapter's, e.g. a mirror) or from files in the same schema
    (`path`: a file, glob or list of .parquet/.jsonl/.json/.csv/.tsv files, `hf://` files included, or
    an imagefolder / save_to_disk directory)."""

    name: str = "shapes"
    split: str = "train"
    n: int = Field(2000, gt=0)
    seed: int = 0
    hub_id: str | None = None
    config: str | None = None  # the hub dataset's config (subset) name
    path: str | list[str] | None = None
    image_root: str | None = None  # where relative image paths and image URLs' files are found
    columns: dict[str, str | list[str]] = {}  # custom only: canonical field -> source column(s)
    # custom only: the set has no options (answers are free text). Without it a custom set must have an
    # options column, so that a missing or misnamed one is an error rather than a silently free-form set.
    free_form: bool = False
    on_bad_row: typing.Literal["skip", "stop"] = "skip"  # an unusable row: skip (counted, logged) or stop


class DataSection(Section):
    train: DatasetSpec | list[DatasetSpec] = DatasetSpec()  # a list: the datasets' examples, concatenated
    eval: list[DatasetSpec] = [DatasetSpec(split="eval", n=200)]

    @field_validator("train", mode="before")
    @classmethod
    def _one_or_several(cls, value):
        # Validated here so that an error names the spec's key, not both branches of the union.
        if isinstance(value, list):
            if not value:
                raise ValueError("an empty list trains on nothing; give one dataset or several")
            return [DatasetSpec.model_validate(v) if isinstance(v, dict) else v for v in value]
        return DatasetSpec.model_validate(value) if isinstance(value, dict) else value


class GateSpec(Section):
    """A reward whose value multiplies another's: `consistency`, `judge`, `counterfactual`, or any reward.

    A gate can fail to score a completion (a judge that timed out returns None). `on_failure` says what
    the gated entry is then worth: `ungated` (default) the entry's own value, so a correct answer is never
    punished for the judge's failure; `zero` nothing. `max_failed_batches`: after that many generation
    batches in a row in which the gate scored nothing (the judge is down), training stops cleanly with a
    checkpoint; 0 never stops.
    """

    name: str  # a registered name, `module:function`, or `path/to/file.py:function`
    kwargs: dict[str, Any] = {}
    on_failure: typing.Literal["ungated", "zero"] = "ungated"
    max_failed_batches: int = Field(default=10, ge=0)


class RewardSpec(Section):
    """One recipe reward entry; TRL weights and sums the entries.

    `gate` multiplies the reward by each gate's value (None when any of them is None), so the paper's
    faithfulness-aware reward is one entry: `{name: accuracy, gate: [consistency], weight: 1.0}`.
    A gate is a name or `{name, kwargs}`, e.g. `gate: [{name: judge, kwargs: {base_url: ...}}]`.
    """

    name: str  # a registered name, `module:function`, or `path/to/file.py:function`
    weight: float = 1.0
    kwargs: dict[str, Any] = {}
    gate: list[GateSpec] = []

    @field_validator("gate", mode="before")
    @classmethod
    def _gate_names(cls, value):
        if value is None:
            return []
        if isinstance(value, (str, dict)):
            value = [value]
        if isinstance(value, (list, tuple)):
            return [{"name": g} if isinstance(g, str) else g for g in value]
        return value


class AugmentationSection(Section):
    probs: dict[str, float] = {}

    @field_validator("probs")
    @classmethod
    def _known_conditions(cls, probs: dict[str, float]) -> dict[str, float]:
        from rlvlm.conditions import check_probs

        check_probs(probs)
        return probs


class PeftSection(Section):
    """LoRA adapters (PEFT) instead of full fine-tuning. Writing the section turns it on
    (`enabled: false` turns it off); with `model.freeze_vision` the vision tower gets no adapters."""

    enabled: bool = False
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str = "all-linear"  # PEFT's names, or "all-linear"

    @model_validator(mode="after")
    def _on_when_written(self):
        if self.model_fields_set and "enabled" not in self.model_fields_set:
            self.enabled = True
        return self


class EvaluationSection(Section):
    """The robustness evaluator run at step 0 and at saved checkpoints (and by `rlvlm eval`)."""

    enabled: bool = True
    # inline: the trainer evaluates step 0 and the checkpoints itself; follow: training evaluates nothing
    # and `rlvlm eval --follow RUN_DIR` evaluates them (other GPUs, another node, or afterwards)
    mode: typing.Literal["inline", "follow"] = "inline"
    every: int = Field(1, gt=0)  # evaluate every K-th saved checkpoint (the last one always)
    conditions: list[str] | None = None  # None: all eight of rlvlm.conditions.CONDITIONS
    max_new_tokens: int = Field(64, gt=0)
    batch_size: int = Field(64, gt=0)  # the most rows in a generation / teacher-forced batch, per process
    # the most tokens in a batch, counted padded: rows x (longest prompt, image tokens included, + max_new_tokens)
    max_batch_tokens: int = Field(65536, gt=0)
    # auto: generate with vLLM when the trainer does (its engine, after a weight sync) or, in the follower,
    # when vllm is installed and a GPU is there; transformers: always `generate`
    engine: typing.Literal["auto", "transformers", "vllm"] = "auto"
    vllm_gpu_memory_utilization: float = Field(0.5, gt=0, le=1)  # the follower's own engine only
    at_start: bool = True  # evaluate step 0, before any update
    on_error: typing.Literal["log", "stop"] = "log"  # an evaluator error: log it and train on, or stop the run
    n_samples_table: int = Field(4, ge=0)  # sample responses per condition in the wandb Table
    seed: int = 0  # perturbation seed (wrong targets, templates)
    faithfulness: str = "rule"  # consistency scorer: rule | judge | a registered reward | module:function
    faithfulness_kwargs: dict[str, Any] = {}

    @field_validator("conditions")
    @classmethod
    def _known_conditions(cls, value):
        from rlvlm.conditions import CONDITIONS, check_conditions

        if value is not None and not value:
            raise ValueError(f"an empty list evaluates nothing; leave it unset for all of {', '.join(CONDITIONS)}")
        check_conditions(value)
        return value


SECTIONS: dict[str, type[Section]] = {
    "model": ModelSection,
    "warm_start": WarmStartSection,
    "data": DataSection,
    "augmentation": AugmentationSection,
    "evaluation": EvaluationSection,
    "peft": PeftSection,
}
LIST_SECTIONS: dict[str, type[Section]] = {"rewards": RewardSpec}
DEFAULT_REWARDS = [RewardSpec(name="accuracy", weight=1.0), RewardSpec(name="format", weight=0.1)]


@dataclasses.dataclass
class Recipe:
    name: str
    model: ModelSection
    warm_start: WarmStartSection
    data: DataSection
    rewards: list[RewardSpec]
    augmentation: AugmentationSection
    evaluation: EvaluationSection
    grpo: dict[str, Any]  # validated GRPOConfig keyword arguments
    path: Path | None = None
    peft: PeftSection = dataclasses.field(default_factory=PeftSection)

    def grpo_config(self):
        from trl import GRPOConfig

        return GRPOConfig(**self.grpo_kwargs())

    def resolved(self) -> dict[str, Any]:
        """The recipe as a YAML-ready mapping with every default written out; `build_recipe` of it gives
        this recipe back (a resume request is left out: it belongs to one invocation)."""
        from pydantic_core import to_jsonable_python

        raw: dict[str, Any] = {"name": self.name}
        for key in SECTIONS:
            raw[key] = getattr(self, key).model_dump(mode="json")
        raw["rewards"] = [r.model_dump(mode="json") for r in self.rewards]
        raw.update({k: to_jsonable_python(v) for k, v in self.grpo.items() if k != "resume_from_checkpoint"})
        return raw

    def grpo_kwargs(self) -> dict[str, Any]:
        """The recipe's GRPOConfig keys plus the defaults this machine needs, and the model section's
        dtype and attention in `model_init_kwargs` (TRL loads the policy from its name with them)."""
        from rlvlm.models import model_init_kwargs

        kwargs = {**machine_defaults(), **self.grpo}
        kwargs["model_init_kwargs"] = {**model_init_kwargs(self.model), **_init_kwargs(self.grpo)}
        return kwargs


def machine_defaults() -> dict[str, Any]:
    """TrainingArguments defaults for this machine, shared by the GRPO run and the warm-start SFT."""
    # TRL defaults to bf16, which a CPU cannot run: fall back to fp32 unless the recipe insists.
    defaults: dict[str, Any] = {"bf16": bf16_available()}
    # Several processes without a GPU (launch/accelerate/multi_cpu.yaml): tell accelerate they are
    # CPU processes, so that they join one gloo process group instead of running alone.
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not gpu_available():
        defaults["use_cpu"] = True
    return defaults


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def bf16_available() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _grpo_fields() -> dict[str, Any]:
    from trl import GRPOConfig

    hints = typing.get_type_hints(GRPOConfig)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(GRPOConfig) if f.init}


def unknown_key(key: str, valid: list[str], where: str) -> RecipeError:
    """The error for a key that is not one of `valid`, with the closest valid one as a hint."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return RecipeError(f"Unknown key '{key}' in {where}.{hint}")


def parse_value(text: str) -> Any:
    """Command-line values are read as YAML scalars: 4 -> int, 1e-5 -> float, true -> bool."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _looks_like_float(value):
        return float(value)
    return value


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`--key value` / `--key=value` pairs into a dict (dotted keys kept as they are)."""
    overrides, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise RecipeError(f"Expected an override '--key value', got '{arg}'.")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise RecipeError(f"Override '--{key}' has no value.")
            value = args[i + 1]
            i += 1
        overrides[key] = parse_value(value)
        i += 1
    return overrides


def set_dotted(raw: dict, key: str, value: Any, top: bool = True) -> None:
    """`--data.train.n 16`: `value` replaces whatever is at the key's path (a mapping too). The first part
    names a section, deeper parts nested mappings in it (the section's validation then rejects any key
    it does not know); a missing or null mapping on the way is created."""
    head, _, rest = key.partition(".")
    if not rest:
        raw[head] = value
        return
    if top and head in LIST_SECTIONS:
        raise RecipeError(f"'{head}' is a list; override it as a whole, e.g. --{head} '[{{name: accuracy}}]'.")
    if top and head not in SECTIONS:
        raise unknown_key(head, sorted(SECTIONS), "the recipe's sections")
    section = raw.setdefault(head, {}) or {}
    if not isinstance(section, dict):
        what = f"Section '{head}'" if top else f"'{head}'"
        raise RecipeError(f"{what} must be a mapping to override '{rest}' in it, got {type(section).__name__}.")
    raw[head] = section
    set_dotted(section, rest, value, top=False)


def format_validation(where: str, error: ValidationError) -> str:
    """A pydantic ValidationError as one line naming each bad key by its dotted place under `where`."""
    problems = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"])
        name = f"{where}.{loc}" if loc else where
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown key '{name}'")
        else:
            problems.append(f"'{name}': {item['msg']} (got {item.get('input')!r})")
    return "; ".join(problems)


def merge(raw: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """Lays `layer`, a recipe mapping in its nested YAML form, over `raw` (in place) and returns `raw`.

    The one rule by which recipe layers combine: a recipe over its `base:`, a sweep's common and then
    per-configuration overrides over the sweep's base recipe. A section's mapping
    (`evaluation: {max_new_tokens: 8}`) merges key by key, nested mappings in it too, and an empty
    mapping clears what was there; anything else replaces: a GRPOConfig value (mappings such as
    `gradient_checkpointing_kwargs` included), a list (`rewards`, `data.eval`), null. A dotted key
    (`evaluation.max_new_tokens: 8`) sets that one path, as a command-line override does (`set_dotted`).
    """
    for key, value in layer.items():
        value = copy.deepcopy(value)  # `raw` may be laid over again; it must not share a layer's objects
        if key in SECTIONS and isinstance(value, dict):
            for path, leaf in _leaves(key, value):
                set_dotted(raw, path, leaf)
        else:
            set_dotted(raw, key, value)
    return raw


def _leaves(prefix: str, mapping: dict) -> list[tuple[str, Any]]:
    if not mapping:
        return [(prefix, {})]  # an empty mapping clears what was there
    leaves = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            leaves += _leaves(f"{prefix}.{key}", value)
        else:
            leaves.append((f"{prefix}.{key}", value))
    return leaves


def _validate_section(name: str, cls: type[Section], value: Any) -> Section:
    if value is None:
        return cls()
    if isinstance(value, dict):
        valid = list(cls.model_fields)
        for key in value:
            if key not in valid:
                raise unknown_key(f"{name}.{key}", [f"{name}.{k}" for k in valid], f"section '{name}'")
    try:
        return cls.model_validate(value)
    except ValidationError as e:
        raise RecipeError(f"Invalid recipe section '{name}': {format_validation(name, e)}.") from None


def build_recipe(raw: dict[str, Any], path: Path | None = None) -> Recipe:
    grpo_fields = _grpo_fields()
    own = {"name", *SECTIONS, *LIST_SECTIONS}
    for key in raw:
        if key not in own and key not in grpo_fields:
            raise unknown_key(key, sorted(own | set(grpo_fields)), "the recipe")

    name = raw.get("name") or (path.stem if path else "run")
    if not isinstance(name, str):
        raise RecipeError(f"'name' must be a string, got {name!r}.")
    sections = {key: _validate_section(key, cls, raw.get(key)) for key, cls in SECTIONS.items()}
    rewards_raw = raw.get("rewards")
    if rewards_raw is None:
        rewards = list(DEFAULT_REWARDS)
    elif not isinstance(rewards_raw, list) or not rewards_raw:
        raise RecipeError("'rewards' must be a non-empty list of {name, weight, kwargs} entries.")
    else:
        rewards = [_validate_section(f"rewards[{i}]", RewardSpec, r) for i, r in enumerate(rewards_raw)]

    grpo = {}
    if isinstance(raw.get("resume_from_checkpoint"), bool):  # `--resume_from_checkpoint true`: the last one
        raw = {**raw, "resume_from_checkpoint": "true" if raw["resume_from_checkpoint"] else None}
    for key, value in raw.items():
        if key in grpo_fields:
            try:
                grpo[key] = TypeAdapter(grpo_fields[key]).validate_python(value)
            except ValidationError as e:
                msg = e.errors()[0]["msg"]
                raise RecipeError(f"Invalid value for '{key}': {value!r} ({msg}).") from None
    check_grpo_values(grpo, raw)
    grpo.setdefault("output_dir", str(Path("runs") / name))
    return Recipe(name=name, rewards=rewards, grpo=grpo, path=path, **sections)


# GRPOConfig keys whose out-of-range values TRL / transformers accept and then reinterpret (max_steps -3
# trains by epochs, save_steps 0 never saves, save_total_limit 0 keeps everything) or fail on only once
# training has started. Only keys the recipe or the command line writes are checked: TRL's own defaults
# (max_steps -1: "train num_train_epochs") stay as they are.
_AT_LEAST_ONE = ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "num_iterations",
                 "max_completion_length", "steps_per_generation", "generation_batch_size", "save_total_limit",
                 "vllm_max_model_length")
_INTERVALS = {"save_steps": "save_strategy", "logging_steps": "logging_strategy", "eval_steps": "eval_strategy"}
_INTERVAL_DEFAULTS = {"save_strategy": "steps", "logging_strategy": "steps", "eval_strategy": "no"}
_WHY = {
    "max_steps": "TRL reads a value <= 0 as 'train num_train_epochs epochs'; leave max_steps unset for that",
    "save_total_limit": "transformers reads a value <= 0 as 'keep every checkpoint'; leave it unset (null) for that",
    "num_train_epochs": "this run would train no step",
}


def _init_kwargs(grpo: dict[str, Any]) -> dict[str, Any]:
    """The recipe's own model_init_kwargs (TRL's command line passes them as a JSON string)."""
    value = grpo.get("model_init_kwargs") or {}
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RecipeError(f"Invalid value for 'model_init_kwargs': {value!r} (not a JSON mapping: {e}).") from None
    if not isinstance(value, dict):
        raise RecipeError(f"Invalid value for 'model_init_kwargs': {value!r} (must be a mapping).")
    return value


def check_grpo_values(grpo: dict[str, Any], written: dict[str, Any] | None = None) -> None:
    """Reject GRPOConfig values that TRL would silently reinterpret or fail on late (see _AT_LEAST_ONE);
    `written`: the values as the recipe wrote them, for the message."""

    def bad(key: str, need: str) -> RecipeError:
        why = f"; {_WHY[key]}" if key in _WHY else ""
        return RecipeError(f"Invalid value for '{key}': {(written or grpo).get(key, grpo[key])!r} ({need}{why}).")

    for key in _AT_LEAST_ONE:
        if grpo.get(key) is not None and grpo[key] < 1:
            raise bad(key, "must be at least 1")
    for key, strategy in _INTERVALS.items():
        value = grpo.get(key)
        chosen = grpo.get(strategy, _INTERVAL_DEFAULTS[strategy])
        if value is not None and value <= 0 and getattr(chosen, "value", chosen) == "steps":
            raise bad(key, f"must be > 0 with {strategy} 'steps'; a value < 1 is a fraction of max_steps")
    if "num_train_epochs" in grpo and grpo["num_train_epochs"] <= 0 and grpo.get("max_steps", -1) <= 0:
        raise bad("num_train_epochs", "must be > 0 when max_steps is not set")
    if grpo.get("num_generations") is not None and grpo["num_generations"] < 2:
        raise bad("num_generations", "must be at least 2: GRPO compares the completions of a prompt")
    if "temperature" in grpo and grpo["temperature"] <= 0:
        raise bad("temperature", "must be > 0: TRL divides the logits by it")
    if "learning_rate" in grpo and grpo["learning_rate"] < 0:
        raise bad("learning_rate", "must be >= 0")
    init = _init_kwargs(grpo)
    if (mine := sorted({"dtype", "torch_dtype", "attn_implementation"} & set(init))):
        raise RecipeError(f"model_init_kwargs: {', '.join(mine)} belong(s) in the model section "
                          "(model.dtype, model.attn_implementation), which also sets them for evaluation.")


def read_yaml_mapping(path: Path, kind: str = "Recipe") -> dict[str, Any]:
    """A recipe-like YAML file as a dict, or a RecipeError naming what is wrong with it."""
    if not path.is_file():
        raise RecipeError(f"{kind} file '{path}' does not exist.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{kind} '{path}' is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{kind} '{path}' must be a YAML mapping of keys to values, got {type(raw).__name__}.")
    return raw


def base_path(including: Path, base: Any, kind: str = "recipe") -> Path:
    """Where a `base:` named in the file `including` is: relative paths are relative to that file."""
    if not isinstance(base, str) or not base:
        raise RecipeError(f"'base' in {kind} '{including}' must be a recipe path, got {base!r}.")
    path = Path(including).parent / Path(base).expanduser()
    if not path.is_file():
        raise RecipeError(f"The base recipe '{base}' of {kind} '{including}' does not exist (looked for '{path}').")
    return path


def read_recipe(path: str | Path, _including: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file as a raw mapping, its `base:` chain merged in (`merge`): what `build_recipe` takes."""
    path = Path(path)
    chain = (*_including, path)
    raw = read_yaml_mapping(path)
    if "base" not in raw:
        return raw
    base = base_path(path, raw.pop("base"))
    if any(base.resolve() == p.resolve() for p in chain):
        files = " -> ".join(str(p) for p in (*chain, base))
        raise RecipeError(f"Recipe '{chain[0]}' inherits from itself through 'base': {files}.")
    return merge(read_recipe(base, chain), raw)


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None,
                layers: typing.Iterable[dict[str, Any]] = ()) -> Recipe:
    """The recipe file `path` (its `base:` chain merged), then each of `layers` (nested recipe mappings,
    such as a sweep's overrides) laid over it by `merge`, then the command-line `overrides`: each key,
    dotted for a section's keys, replaces what is at its path (`set_dotted`)."""
    path = Path(path)
    raw = read_recipe(path)
    for layer in layers:
        merge(raw, layer)
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return build_recipe(raw, path)
