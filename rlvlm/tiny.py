"""The embedded tiny Qwen2.5-VL: a real `Qwen2_5_VLForConditionalGeneration` built from a config,
a byte-level BPE tokenizer trained locally, a Qwen-style chat template and a real
`Qwen2_5_VLProcessor`. Built deterministically from a seed and cached under `RLVLM_CACHE`."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from rlvlm.prefill import qwen_chat_template

TINY_ALIAS = "rlvlm/tiny-qwen2.5-vl"  # model.name for the tiny model besides "tiny" (rlvlm.models.TINY_NAMES)
TINY_VERSION = 7  # bump when the architecture, tokenizer or corpus changes: the cache key includes it

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Tag tokens are ordinary (non-special) added tokens, so they survive decode(skip_special_tokens=True)
# and the tiny model does not have to learn to spell them.
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

# Qwen2-VL's template without the default system turn (short prompts keep the CPU model fast), with
# rlvlm's open pre-fill rule (see rlvlm.prefill).
CHAT_TEMPLATE = qwen_chat_template(default_system=None)

# rope_theta as in Qwen2.5-VL (1e6), so more of a 32-dim head's rotary frequencies are slow enough for
# text tokens to look image tokens up by content; on its own it moved warm-start accuracy by < 1 point.
TINY_TEXT = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=1024,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]},
)
TINY_VISION = dict(
    depth=2,
    hidden_size=96,
    intermediate_size=192,
    num_heads=4,
    out_hidden_size=128,
    window_size=112,
    fullatt_block_indexes=[1],
)
IMAGE_SIZE = 112  # shapes images; the processor resizes anything else to at most this many pixels


def cache_dir() -> Path:
    return Path(os.environ.get("RLVLM_CACHE", Path.home() / ".cache" / "rlvlm"))


def tiny_model_dir(seed: int = 0) -> Path:
    return cache_dir() / f"tiny-qwen2.5-vl-v{TINY_VERSION}-seed{seed}"


def tokenizer_corpus(seed: int, n: int = 3000) -> list[str]:
    """Text the BPE merges are learned from: shapes prompts, reasoning and answers."""
    from rlvlm.data import shapes
    from rlvlm.perturb import CONDITIONS, perturb

    lines = ["user\n", "assistant\n", "system\n"] * 50
    for i, ex in enumerate(shapes.generate_examples("train", n, seed=seed)):
        condition = CONDITIONS[i % len(CONDITIONS)]
        p = perturb(ex, condition, seed=i)
        user = "".join(part.get("text", "") for part in p["prompt"][0]["content"])
        lines.append(user)
        lines.append(f"<think>{shapes.cot_for(ex, ex['answer'], seed=i // 16)}</think><answer>{ex['answer']}</answer>")
        if p.get("think_prefix"):
            lines.append(p["think_prefix"])
    return lines


def build_tokenizer(seed: int = 0, vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(tokenizer_corpus(seed), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        model_max_length=1024,
        padding_side="left",
    )
    tokenizer.add_tokens(TAG_TOKENS)
    return tokenizer


def build_processor(tokenizer):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    vision = dict(patch_size=14, temporal_patch_size=2, merge_size=2)
    size = {"shortest_edge": 56 * 56, "longest_edge": IMAGE_SIZE * IMAGE_SIZE}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, **vision),
        video_processor=Qwen2VLVideoProcessor(size=size, **vision),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer, seed: int = 0):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            TINY_TEXT,
            vocab_size=len(tokenizer),
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=TINY_VISION,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        # Untied: with tied embeddings the four plural shape words collapsed onto one vector (cosine
        # 0.87-0.96 after the warm-start), and the model could no longer copy them from the question.
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model


def build_tiny(seed: int = 0, path: Path | None = None, progress: bool = True) -> Path:
    """Build (or reuse) the tiny model, tokenizer and processor; return the directory holding them."""
    path = Path(path) if path else tiny_model_dir(seed)
    if (path / "rlvlm_tiny.json").exists():
        return path
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    # Every rank of an `accelerate launch` (and every concurrent job sharing the cache) gets here at once:
    # one builds, the others wait for it and reuse the result.
    with FileLock(str(path) + ".lock"):
        if (path / "rlvlm_tiny.json").exists():
            return path
        from tqdm.auto import tqdm

        steps = tqdm(total=3, desc="build tiny Qwen2.5-VL", disable=not progress)
        tokenizer = build_tokenizer(seed)
        steps.update()
        processor = build_processor(tokenizer)
        model = build_model(tokenizer, seed)
        steps.update()
        # Write to a temporary sibling, then rename: a killed build never leaves a half-written cache.
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".tmp"))
        model.save_pretrained(tmp, is_main_process=True)
        processor.save_pretrained(tmp)
        (tmp / "rlvlm_tiny.json").write_text(json.dumps({"seed": seed, "version": TINY_VERSION}))
        if path.exists():
            shutil.rmtree(path)  # an incomplete directory from a build that was killed mid-write
        tmp.rename(path)
        steps.update()
        steps.close()
    return path
