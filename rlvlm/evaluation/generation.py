"""The evaluator's model passes: greedy generation (transformers `generate`, or a vLLM engine) and the
option probabilities.

Option probabilities (docs/concepts.md, "rlvlm.metrics"; one definition, `rewards.option_probs`, shared with the
counterfactual reward): at the position where the answer letter goes (after the response's first
`<answer>`, forced there when the model wrote none), the logits restricted to the single-token spellings
of the option letters ("B" and " B"), renormalised, summed per letter. With
transformers they are read during generation, from the raw logits of the step after the response's own
`<answer>`; a response without one (or cut right after it), and every response a vLLM engine generated,
gets one teacher-forced pass over prompt + response cut at that position. vLLM returns only the top-k
log-probabilities of the full vocabulary, so letters outside the top k would be lost there.

vLLM engines (`TrainerEngine`, `LocalEngine`) take token ids and images as TRL's GRPOTrainer gives them
to vLLM: the processor's ids with the image placeholders expanded, the PIL images beside them.
"""

from __future__ import annotations

import contextlib
import gc

from rewards import option_probs
from rewards.option_probs import encode_left_padded as encode
from rewards.option_probs import letter_probabilities, tokenizer_of
from rlvlm.evaluation.items import forced_answer_suffix, item_images


class EvaluationError(RuntimeError):
    """The evaluator failed (on any process); raised on every process alike."""


def letter_token_ids(tokenizer, n_options: int) -> list[list[int]]:
    """Per option letter, the single-token spellings of it ("B" and " B") that the tokenizer has
    (`rewards.option_probs.letter_token_ids`; EvaluationError when a letter has none)."""
    try:
        return option_probs.letter_token_ids(tokenizer, n_options)
    except ValueError as e:
        raise EvaluationError(str(e)) from None


def generate_transformers(model, processor, items: list[dict], max_new_tokens: int,
                          letter_ids: dict | None = None) -> tuple[list[str], list[list[float] | None]]:
    """Greedy completions of one batch with transformers' `generate` and, with `letter_ids` (the
    `letter_token_ids` cache), each item's option probabilities read from the generation itself: the raw
    logits at the step that produced the token after the response's own `<answer>` (and `(`), taken
    before any logits processor (a repetition penalty would bias letters the prompt holds). None where
    the response has no such step (no `<answer>`, or cut right after it): the teacher-forced pass reads
    those. Same model, same context, one pass instead of two."""
    import torch

    tok = tokenizer_of(processor)
    enc = encode(processor, [it["_text"] for it in items], [item_images(it) for it in items]).to(model.device)
    n_options = [len(it.get("options") or []) for it in items]
    union = []
    if letter_ids is not None and max(n_options, default=0) > 0:
        n = max(n_options)
        if n not in letter_ids:
            letter_ids[n] = letter_token_ids(tok, n)
        union = [i for g in letter_ids[n] for i in g]
    steps: list = []
    hook = None
    if union:
        index = torch.tensor(union, device=model.device)
        hook = model.get_output_embeddings().register_forward_hook(
            lambda module, args, output: steps.append(output[:, -1, index].float())
        )
    try:
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            temperature=None,
            top_p=None,
            top_k=None,
            repetition_penalty=1.0,  # a model's default penalty (Qwen2.5-VL's 1.05) is not greedy, and vLLM here uses none
            use_cache=True,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        )
    finally:
        if hook is not None:
            hook.remove()
    new_ids = gen[:, enc["input_ids"].shape[1] :]
    completions = processor.batch_decode(new_ids, skip_special_tokens=True)
    probs: list[list[float] | None] = [None] * len(items)
    for b, (it, completion, n) in enumerate(zip(items, completions, n_options)):
        if not union or n == 0:
            probs[b] = [] if n == 0 else None
            continue
        j = answer_step(tok, new_ids[b].tolist(), forced_answer_suffix(it.get("think_prefix"), completion))
        if j is None or j >= len(steps):
            continue
        groups = letter_ids[max(n_options)][:n]
        width = sum(len(g) for g in groups)
        probs[b] = letter_probabilities(steps[j][b, :width], groups)
    return completions, probs


def answer_step(tok, generated: list[int], suffix: str) -> int | None:
    """The generation step whose logits predict the answer letter: the j with decode(generated[:j]) equal
    to `suffix` (the response cut where the letter goes), or None when no prefix of the generated tokens
    spells it (the model wrote no `<answer>`, or tokenised it so that no token boundary falls there)."""
    lo, hi = 0, len(generated)
    while lo < hi:  # the shortest prefix whose text is at least as long as the suffix
        mid = (lo + hi) // 2
        if len(tok.decode(generated[:mid], skip_special_tokens=True)) >= len(suffix):
            hi = mid
        else:
            lo = mid + 1
    if lo < len(generated) and tok.decode(generated[:lo], skip_special_tokens=True) == suffix:
        return lo
    return None


def option_probabilities(model, processor, items: list[dict], completions: list[str], letter_ids: dict) -> list[list[float]]:
    """One teacher-forced forward of prompt + completion cut at the answer letter, per batch; per item
    the probabilities of its option letters ([] for a free-form item). `letter_ids` caches
    `letter_token_ids` by option count. The pass is `rewards.option_probs.forced_option_probabilities`,
    the counterfactual reward's."""
    texts = [it["_text"] + forced_answer_suffix(it.get("think_prefix"), c) for it, c in zip(items, completions)]
    n_options = [len(it.get("options") or []) for it in items]
    tok = tokenizer_of(processor)
    for n in set(n_options) - {0} - set(letter_ids):
        letter_ids[n] = letter_token_ids(tok, n)  # EvaluationError for a letter without a single token
    return option_probs.forced_option_probabilities(model, processor, texts, [item_images(it) for it in items],
                                                    n_options, letter_ids)


# ============================================================================ vLLM


def vllm_inputs(processor, items: list[dict]) -> tuple[list[list[int]], list[list] | None]:
    """Prompt token ids (image placeholders expanded, no padding) and images per item, as TRL hands
    prompts to vLLM."""
    images = [item_images(it) for it in items]
    kwargs = {"images": images} if any(images) else {}
    ids = processor(text=[it["_text"] for it in items], **kwargs)["input_ids"]
    return [[int(t) for t in row] for row in ids], ([imgs or None for imgs in images] if any(images) else None)


@contextlib.contextmanager
def greedy(vllm_generation, max_tokens: int):
    """TRL's VLLMGeneration reads its sampling settings from attributes fixed when the trainer built it
    (the recipe's temperature, top_p, ..., max_completion_length) and has no per-call override.
    Evaluation decodes greedily, to its own length, through the same engine, so those attributes are
    set for the call and restored after it, whatever happens."""
    settings = {
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "max_completion_length": max_tokens,
        "logprobs": 0,
        "structured_outputs_regex": None,
        "generation_kwargs": {},
    }
    saved = {k: getattr(vllm_generation, k) for k in settings}
    try:
        for k, v in settings.items():
            setattr(vllm_generation, k, v)
        yield vllm_generation
    finally:
        for k, v in saved.items():
            setattr(vllm_generation, k, v)


class TrainerEngine:
    """The GRPO trainer's own vLLM engine (TRL's `trainer.vllm_generation`, colocated or a server
    client). `sync` pushes the trainer's current weights to it (a collective: every process calls it);
    `generate` is one greedy call per process with that process's whole share (vLLM batches
    continuously; in server mode TRL gathers every process's prompts and the main process asks)."""

    name = "vllm (the trainer's engine)"

    def __init__(self, vllm_generation):
        self.vllm_generation = vllm_generation

    def sync(self) -> None:
        self.vllm_generation.sync_weights()

    def generate(self, processor, items: list[dict], max_new_tokens: int) -> list[str]:
        ids, images = vllm_inputs(processor, items)
        with greedy(self.vllm_generation, max_new_tokens) as engine:
            _, completion_ids, _, _ = engine.generate(prompts=ids, images=images, num_generations=1)
        return processor.batch_decode(completion_ids, skip_special_tokens=True)


class LocalEngine:
    """A vLLM engine of its own on one checkpoint (the follower): `vllm.LLM` with the recipe's tensor
    parallelism, greedy `SamplingParams`. `close` frees it before the next checkpoint's engine."""

    name = "vllm"

    def __init__(self, model_dir: str, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.5,
                 max_model_len: int | None = None):
        import vllm

        self.llm = vllm.LLM(
            model=str(model_dir),
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
        )

    def sync(self) -> None:  # the engine was built on the checkpoint itself
        pass

    def generate(self, processor, items: list[dict], max_new_tokens: int) -> list[str]:
        from vllm import SamplingParams

        ids, images = vllm_inputs(processor, items)
        prompts = []
        for i, prompt_ids in enumerate(ids):
            row = {"prompt_token_ids": prompt_ids}
            if images is not None and images[i]:
                row["multi_modal_data"] = {"image": images[i] if len(images[i]) > 1 else images[i][0]}
            prompts.append(row)
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        return processor.batch_decode([list(o.outputs[0].token_ids) for o in outputs], skip_special_tokens=True)

    def close(self) -> None:
        self.llm = None
        gc.collect()
        with contextlib.suppress(Exception):
            import torch

            torch.cuda.empty_cache()
