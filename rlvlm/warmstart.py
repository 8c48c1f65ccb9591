"""Supervised warm-start of the tiny model: TRL's SFTTrainer on templated CoT responses.

A randomly initialised model never emits a parsable answer, so GRPO would see no reward signal.
A short SFT on `<think>{correct reasoning}</think><answer>{letter}</answer>` gives RL a policy that is
good but not saturated. The result is cached next to the tiny model, keyed by the section's values.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from rlvlm.recipe import WarmStartSection, bf16_available


def response_for(example: dict, letter: str, seed: int = 0) -> str:
    from rlvlm.data import shapes

    return f"<think>{shapes.cot_for(example, letter, seed=seed)}</think><answer>{letter}</answer>"


def sft_rows(section: WarmStartSection) -> list[dict]:
    from rlvlm.data import shapes
    from rlvlm.perturb import perturb

    rows = []
    for i, ex in enumerate(shapes.generate_examples("train", section.n_examples, seed=section.seed)):
        prompt = perturb(ex, "base", seed=section.seed + i)["prompt"]
        completion = [{"role": "assistant", "content": response_for(ex, ex["answer"], seed=i // 16)}]  # phrasing independent of family and gold letter
        rows.append({"prompt": prompt, "completion": completion, "images": [ex["image"]]})
    return rows


def warm_start_dir(base: Path, section: WarmStartSection) -> Path:
    key = json.dumps({"base": base.name, **section.model_dump()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return base.parent / f"{base.name}-sft-{digest}"


def warm_start(base: str | Path, section: WarmStartSection, progress: bool = True) -> Path:
    base = Path(base)
    out = warm_start_dir(base, section)
    if (out / "rlvlm_warm_start.json").exists():
        return out

    from datasets import Dataset
    from transformers import AutoProcessor
    from trl import SFTConfig, SFTTrainer

    processor = AutoProcessor.from_pretrained(base)
    dataset = Dataset.from_list(sft_rows(section))
    tmp = Path(tempfile.mkdtemp(dir=base.parent, prefix=out.name + ".tmp"))
    args = SFTConfig(
        output_dir=str(tmp),
        num_train_epochs=section.epochs,
        per_device_train_batch_size=section.batch_size,
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
        bf16=bf16_available(),
    )
    trainer = SFTTrainer(model=str(base), args=args, train_dataset=dataset, processing_class=processor)
    trainer.train()
    trainer.save_model(str(tmp))
    processor.save_pretrained(tmp)
    (tmp / "rlvlm_warm_start.json").write_text(json.dumps({"base": str(base), **section.model_dump()}))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
