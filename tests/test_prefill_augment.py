"""Pre-filled thinks reach the model open, through TRL's own prompt rendering; training-time augmentation."""

from collections import Counter

import pytest
from transformers import AutoProcessor

from rlvlm.data import shapes
from rlvlm.perturb import DEFAULT_AUGMENTATION
from rlvlm.prefill import ensure_prefill, qwen_chat_template, supports_prefill
from rlvlm.recipe import build_recipe
from rlvlm.train import grpo_rows, training_rows

# Qwen2-VL's released template (abridged to its structure): it always closes a turn.
CLOSING_QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_grpo_trainer_renders_prompt_ids_ending_inside_the_open_think(tiny_model_path):
    from trl import GRPOConfig, GRPOTrainer
    from datasets import Dataset

    processor = AutoProcessor.from_pretrained(tiny_model_path)
    ex = shapes.generate_examples("eval", 1)[0]
    # the rows as rlvlm train hands them to TRL: a wrong_think row (its open think pre-filled) and a base row
    rows = grpo_rows([ex], seed=0, probs={"wrong_think": 1.0}) + grpo_rows([ex], seed=0)
    assert [r["condition"] for r in rows] == ["wrong_think", "base"]
    dataset = Dataset.from_list([{"prompt": r["prompt"], "image": r["image"]} for r in rows])
    args = GRPOConfig(output_dir="/tmp/unused", per_device_train_batch_size=2, num_generations=2, bf16=False,
                      report_to="none", max_completion_length=4)
    trainer = GRPOTrainer(model=str(tiny_model_path), reward_funcs=lambda completions, **k: [0.0] * len(completions),
                          args=args, train_dataset=dataset, processing_class=processor)
    prompts = [[dict(m) for m in r["prompt"]] for r in rows]
    for p, r in zip(prompts, rows):
        for m in p:
            if isinstance(m["content"], list):
                m["content"] = [{**part, "image": r["image"]} if part["type"] == "image" else part for part in m["content"]]
    prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
    tok = processor.tokenizer
    prefill_text = tok.decode(prompt_ids[0], skip_special_tokens=False)
    prefix = rows[0]["think_prefix"]
    assert prefix.startswith("<think>") and "</think>" not in prefix
    assert prefill_text.endswith("<|im_start|>assistant\n" + prefix), prefill_text[-200:]
    assert tok.convert_ids_to_tokens(prompt_ids[0][-len(tok(prefix)["input_ids"]):])[0] == "<think>"
    # A base prompt still opens a fresh assistant turn.
    assert tok.decode(prompt_ids[1]).endswith("<|im_start|>assistant\n")


def test_closing_qwen_template_is_patched_to_leave_the_prefill_open(tiny_model_path):
    processor = AutoProcessor.from_pretrained(tiny_model_path)
    processor.chat_template = CLOSING_QWEN_TEMPLATE
    assert not supports_prefill(processor)
    ensure_prefill(processor)
    assert supports_prefill(processor)
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}]
    text = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")  # system kept
    assert text.endswith("<|im_start|>assistant\n")


def test_unpatchable_template_fails_with_a_clear_message(tiny_model_path):
    processor = AutoProcessor.from_pretrained(tiny_model_path)
    processor.chat_template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}[end]{% endfor %}"
    with pytest.raises(ValueError, match="pre-filled thinks"):
        ensure_prefill(processor)


def test_qwen_template_renders_string_and_block_contents_alike():
    from jinja2 import Template

    t = Template(qwen_chat_template(None))
    a = t.render(messages=[{"role": "user", "content": "hi"}], add_generation_prompt=True)
    b = t.render(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}], add_generation_prompt=True)
    assert a == b == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def _recipe(probs, max_steps=100):
    return build_recipe({"name": "t", "augmentation": {"probs": probs}, "max_steps": max_steps,
                         "num_generations": 8, "per_device_train_batch_size": 32, "output_dir": "/tmp/rlvlm-aug-test"})


def test_realised_augmentation_mix_matches_the_recipe(tmp_path):
    examples = shapes.generate_examples("train", 500)
    recipe = _recipe(DEFAULT_AUGMENTATION, max_steps=1000)  # 4000 prompts -> 8 epochs of 500
    recipe.grpo["output_dir"] = str(tmp_path)
    rows = training_rows(recipe, examples, recipe.grpo_config())
    assert len(rows) == 4000
    mix = Counter(r["condition"] for r in rows)
    for condition, p in DEFAULT_AUGMENTATION.items():
        assert abs(mix[condition] / len(rows) - p) < 0.02, (condition, mix)
    assert abs(mix["base"] / len(rows) - 0.6) < 0.03
    assert (tmp_path / "augmentation_mix.json").exists()
    # Each epoch draws again: the same example gets different conditions across epochs.
    per_id = {}
    for r in rows:
        per_id.setdefault(r["id"], set()).add(r["condition"])
    assert sum(len(v) > 1 for v in per_id.values()) > 0.5 * len(per_id)


def test_augmented_rows_are_deterministic_and_carry_the_prefix():
    examples = shapes.generate_examples("train", 64)
    a = grpo_rows(examples, seed=3, probs={"wrong_think": 0.5}, epoch=1)
    b = grpo_rows(examples, seed=3, probs={"wrong_think": 0.5}, epoch=1)
    assert [(r["condition"], r["think_prefix"]) for r in a] == [(r["condition"], r["think_prefix"]) for r in b]
    thinks = [r for r in a if r["condition"] == "wrong_think"]
    assert thinks and all(r["prompt"][-1]["role"] == "assistant" for r in thinks)
    assert all(r["prompt"][-1]["content"][0]["text"] == r["think_prefix"] for r in thinks)


def test_multi_image_examples_reach_trl_as_an_images_column():
    """A set with a multi-image example (SAT has them) gives every row an `images` list, the column TRL
    reads several images from; the prompt holds one image block per image. Single-image sets keep `image`."""
    from datasets import Dataset

    one, two = shapes.generate_examples("eval", 2)
    two = {**two, "images": [two["image"], two["image"].rotate(90)]}
    del two["image"]
    rows = grpo_rows([one, two], seed=0)
    assert [len(r["images"]) for r in rows] == [1, 2] and all("image" not in r for r in rows)
    assert [sum(b["type"] == "image" for m in r["prompt"] for b in m["content"]) for r in rows] == [1, 2]
    assert len(Dataset.from_list(rows)) == 2  # one Arrow column for both
    assert "image" in grpo_rows([one], seed=0)[0]
