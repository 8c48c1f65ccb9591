"""Pre-filled assistant turns (the *_think conditions): the model must continue an open `<think>`.

TRL's GRPOTrainer renders every prompt with `add_generation_prompt=True`, which closes a final
assistant message and opens a new turn. Rather than subclass the trainer, rlvlm gives the processor a
chat template that leaves a final assistant turn open when a generation prompt is requested. This is
the smallest hook that works for training (TRL) and evaluation (our own generate) alike.
"""

from __future__ import annotations

PROBE_PREFIX = "<think>rlvlm-prefill-probe"


def qwen_chat_template(default_system: str | None = None) -> str:
    """Qwen2-VL/Qwen2.5-VL's chat template, plus the open pre-fill rule."""
    system = (
        "{% if messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\n" + default_system + "<|im_end|>\\n' }}{% endif %}"
        if default_system
        else ""
    )
    return (
        "{% set prefill = add_generation_prompt and messages[-1]['role'] == 'assistant' %}"
        + system
        + "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' or 'image' in part %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
        "{% elif part['type'] == 'video' or 'video' in part %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}"
        "{% endif %}{% endfor %}{% endif %}"
        "{% if not (loop.last and prefill) %}{{ '<|im_end|>\\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt and not prefill %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


def supports_prefill(processor) -> bool:
    conversation = [
        {"role": "user", "content": [{"type": "text", "text": "q"}]},
        {"role": "assistant", "content": [{"type": "text", "text": PROBE_PREFIX}]},
    ]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return text.endswith(PROBE_PREFIX)


def ensure_prefill(processor) -> None:
    """Make `processor` render a final assistant turn as an open pre-fill, or say why it cannot."""
    if supports_prefill(processor):
        return
    template = processor.chat_template or ""
    if "<|im_start|>" in template and "<|vision_start|>" in template:
        default_system = "You are a helpful assistant." if "You are a helpful assistant." in template else None
        processor.chat_template = qwen_chat_template(default_system)
        if hasattr(processor, "tokenizer"):
            processor.tokenizer.chat_template = processor.chat_template
        if supports_prefill(processor):
            return
    raise ValueError(
        "This model's chat template closes a final assistant turn, so pre-filled thinks (the *_think "
        "conditions) cannot be continued. rlvlm patches Qwen-VL templates automatically; for other "
        "families give a template with the same rule (see rlvlm.prefill.qwen_chat_template)."
    )
