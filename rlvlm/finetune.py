"""What a run trains: LoRA adapters from the recipe's `peft:` section, and the vision tower frozen
when `model.freeze_vision` is set. TRL wraps the model with the `peft.LoraConfig` itself
(`GRPOTrainer(peft_config=...)`); freezing happens on the trainer's model before the optimizer
exists, so frozen parameters never reach it.
"""

from __future__ import annotations

from rlvlm.recipe import ModelSection, PeftSection, RecipeError

# Parameter-name components of the vision encoder in transformers' VLMs (Qwen2/2.5-VL: `visual`;
# LLaVA-style, Gemma 3, Idefics, SmolVLM: `vision_tower` / `vision_model`).
VISION_COMPONENTS = ("visual", "vision_tower", "vision_model")
VISION_REGEX = r".*\b(" + "|".join(VISION_COMPONENTS) + r")\b.*"


def peft_config(section: PeftSection, model: ModelSection):
    """A `peft.LoraConfig` for the recipe, or None when the `peft:` section is off."""
    if not section.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=section.target_modules,
        exclude_modules=VISION_REGEX if model.freeze_vision else None,
        task_type="CAUSAL_LM",
    )


def is_vision_parameter(name: str) -> bool:
    return any(part in VISION_COMPONENTS for part in name.split("."))


def freeze_vision_tower(model) -> int:
    """Stop gradients to every vision-encoder parameter; returns how many tensors were frozen."""
    frozen = 0
    for name, param in model.named_parameters():
        if is_vision_parameter(name):
            param.requires_grad_(False)
            frozen += 1
    if not frozen:
        raise RecipeError(
            f"model.freeze_vision: no vision tower found in {type(model).__name__} "
            f"(looked for parameters under {', '.join(VISION_COMPONENTS)})."
        )
    return frozen
