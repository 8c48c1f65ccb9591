"""`Evaluator`: the prompts of one run's evaluation, built once, run on a model at a step.

One evaluation: the items' batches are planned globally by token count and dealt round-robin to the
processes (every process runs the same number of forward passes); each batch is generated greedily
(transformers `generate`, or the process's whole share in one call to a vLLM engine); the option
probabilities are read from the generation where the response wrote its own `<answer>` (transformers)
and from one teacher-forced pass otherwise; each process scores the records of its own items and the
main process aggregates the gathered records, so the rows equal those of a one-process run (a scorer
that runs the model, `bind`, scores everything on the main process).

Errors (docs/evaluation.md, "When the evaluator fails"): every round of batches ends, on every process,
in one small collective that exchanges each process's error or None, so that after a failed batch all
processes stop at the same round boundary and raise `EvaluationError` with the same message; scoring
errors travel the same way through the gather of the records. What cannot be recovered: where the passes
themselves are collectives (several processes under DeepSpeed ZeRO-3 or FSDP, where transformers
generates with `synced_gpus` and a forward without gathered parameters all-gathers them, or a vLLM
engine shared by the processes), an exception inside a pass leaves the other processes inside that
pass's collective, where no later collective reaches them. There the failing process raises
`EvaluationAborted`, which no `except Exception` (nor `evaluation.on_error: log`) catches: the process
ends and the launcher (torchrun, accelerate, deepspeed) tears the job down at once instead of every
process waiting for the process group's timeout (the trainer's `ddp_timeout`, 30 minutes by default).
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

from rlvlm.evaluation.distributed import all_gather, broadcast, passes_are_collective, process_state, sync_error
from rlvlm.evaluation.generation import EvaluationError, generate_transformers, option_probabilities
from rlvlm.evaluation.items import load_eval_sets, plan_batches, prepare_items, prompt_lengths, resolve_conditions
from rlvlm.evaluation.results import EvalResult, aggregate
from rlvlm.evaluation.scoring import load_scorer, score

log = logging.getLogger("rlvlm.evaluation")

# Prompts per vLLM call: enough for the engine's continuous batching, few enough that their processed
# images stay small in host memory and that a server answers one call well inside the process group's
# timeout while the other processes wait for it.
ENGINE_CHUNK = 256


class EvaluationAborted(BaseException):
    """An evaluator pass failed where the passes are collectives (ZeRO-3, FSDP, a shared vLLM engine with
    several processes): the other processes wait inside that pass's collective and no later collective
    reaches them, so this process must end (a BaseException: `except Exception`, and with it
    `evaluation.on_error: log`, lets it through) and the launcher end the others."""


class Evaluator:
    """Prompts built once (per processor); `run(model, step)` evaluates them."""

    def __init__(self, processor, eval_sets: dict[str, list[dict]], section, conditions=None):
        from rlvlm.prefill import ensure_prefill

        ensure_prefill(processor)  # *_think conditions continue an open <think>
        self.processor = processor
        self.section = section
        self.conditions = resolve_conditions(conditions if conditions is not None else section.conditions)
        self.items = prepare_items(eval_sets, self.conditions, seed=section.seed)
        texts = processor.apply_chat_template(
            [it["prompt"] for it in self.items], add_generation_prompt=True, tokenize=False
        )
        for it, text in zip(self.items, texts):
            it["_text"] = text
        self.lengths = prompt_lengths(processor, self.items)
        self.datasets = list(eval_sets)
        self.scorer = load_scorer(section)
        self._letter_ids: dict = {}

    @classmethod
    def from_recipe(cls, recipe, processor, conditions=None) -> "Evaluator":
        return cls(processor, load_eval_sets(recipe), recipe.evaluation, conditions)

    def keys(self) -> set[tuple[str, str]]:
        return {(it["dataset"], it["condition"]) for it in self.items}

    def batches(self, indices: list[int]) -> list[list[int]]:
        """The global batches (positions in `indices`) of those items."""
        s = self.section
        groups = [(self.items[i]["condition"], self.items[i]["dataset"]) for i in indices]
        return plan_batches([self.lengths[i] for i in indices], s.batch_size, s.max_batch_tokens, s.max_new_tokens, groups)

    def _forward(self, model, indices: list[int], engine=None) -> list[tuple]:
        """(completion, option probabilities) per item of `indices`, gathered on every process."""
        by_index = dict(all_gather(self._forward_local(model, indices, engine)))
        return [by_index[i] for i in range(len(indices))]

    def _forward_local(self, model, indices: list[int], engine=None, on_batch=None) -> list[tuple[int, tuple]]:
        """(position in `indices`, (completion, option probabilities)) for this process's items. Every
        process takes its round-robin share of the global batches (padded with repeats so that all run
        the same number of forward passes); with an `engine`, its whole share is generated in one engine
        call first. `on_batch(positions, completions, probs)` is called with each of this process's batches
        as soon as it is generated. Each round ends in `sync_error` on every process, so an error on any process raises
        `EvaluationError` (same message) on all of them at the same round; see the module docstring for
        the failures inside collective passes (`EvaluationAborted`)."""
        state = process_state()
        collective = passes_are_collective(state, model)
        items = [self.items[i] for i in indices]
        batches = self.batches(indices)
        mine = batches[state.process_index :: state.num_processes]
        per_process = math.ceil(len(batches) / state.num_processes)
        max_new = self.section.max_new_tokens
        results, generated, error = [], {}, None
        if engine is not None and items:
            try:
                # Every process calls the engine once, with a share of the same length: TRL's server mode
                # and colocated tensor parallelism gather the processes' prompts and hand back equal slices.
                share = [i for batch in mine for i in batch]
                longest = max(sum(map(len, batches[r :: state.num_processes])) for r in range(state.num_processes))
                padded = share + [share[-1] if share else 0] * (longest - len(share))
                completions = []
                for k in range(0, longest, ENGINE_CHUNK):  # the same number of calls on every process
                    completions += engine.generate(self.processor, [items[i] for i in padded[k : k + ENGINE_CHUNK]], max_new)
                generated = dict(zip(share, completions[: len(share)]))
            except Exception as e:  # noqa: BLE001 - reported on every process below
                error = self._failed(state, e, "vLLM generation", collective=state.num_processes > 1)
            self._sync(error)
        for j in range(per_process):
            try:
                batch = mine[j] if j < len(mine) else (mine[-1] if mine else batches[-1])
                batch_items = [items[i] for i in batch]
                if engine is None:
                    completions, probs = generate_transformers(model, self.processor, batch_items, max_new, self._letter_ids)
                else:
                    completions, probs = [generated.get(i, "") for i in batch], [None] * len(batch)
                # The teacher-forced pass reads the rows whose generation did not give their letter's
                # probabilities. Every process runs it once per batch (on one row when none needs it):
                # under ZeRO-3 a forward pass is a collective.
                rows = [k for k, p in enumerate(probs) if p is None]
                if rows or state.num_processes > 1:
                    forced = option_probabilities(model, self.processor, [batch_items[k] for k in rows or [0]],
                                                  [completions[k] for k in rows or [0]], self._letter_ids)
                    for k, p in zip(rows, forced):
                        probs[k] = p
                if j < len(mine):
                    results.extend(zip(batch, zip(completions, probs)))
                    if on_batch is not None:
                        on_batch(batch, completions, probs)
            except Exception as e:  # noqa: BLE001 - reported on every process below
                error = self._failed(state, e, f"batch round {j + 1}/{per_process}", collective)
            self._sync(error)  # the round boundary: every process stops here after a failed batch
        return results

    @staticmethod
    def _failed(state, e: Exception, where: str, collective: bool) -> str:
        """The message of a failed pass; `EvaluationAborted` where the pass was a collective."""
        message = f"process {state.process_index}: {type(e).__name__}: {e}"
        if collective:
            log.critical("evaluator %s failed on process %d inside a collective pass; the other processes "
                         "wait in it and cannot be reached, so this process ends", where, state.process_index,
                         exc_info=True)
            raise EvaluationAborted(f"{message} ({where}, inside a collective pass: the job must end)") from e
        log.exception("evaluator %s failed on process %d", where, state.process_index)
        return message

    @staticmethod
    def _sync(error: str | None) -> None:
        """Every process's error (or None) on every process; the first one raised alike on all."""
        error = sync_error(error)
        if error:
            raise EvaluationError(error)

    def run(self, model, step: int, only: set | None = None, base_records: list[dict] | None = None,
            engine=None) -> EvalResult:
        """Evaluate `model` (eval mode, no grad; its train/eval mode is restored) at `step`, on the
        (dataset, condition) pairs in `only` (all when None), generating with `engine` when given (a
        vLLM engine already holding this model's weights). Raises EvaluationError on every process."""
        import torch

        start = time.perf_counter()
        indices = [i for i, it in enumerate(self.items) if only is None or (it["dataset"], it["condition"]) in only]
        items = [self.items[i] for i in indices]
        was_training = model.training
        model.eval()
        state = process_state()
        result, error = None, None
        try:
            with torch.no_grad():
                if hasattr(self.scorer, "bind"):
                    # A policy-based scorer (counterfactual) runs this model: on the main process only, on
                    # every output (a collective=False forward; the others wait in the broadcast below).
                    outputs = self._forward(model, indices, engine)
                    if state.is_main_process:
                        try:
                            self.scorer.bind(model, self.processor, collective=False)
                            records = score(items, [o[0] for o in outputs], [o[1] for o in outputs], self.scorer)
                            result = aggregate(step, records, base_records)
                        except Exception as e:  # noqa: BLE001 - reported on every process below
                            log.exception("evaluator scoring failed")
                            error = f"scoring: {type(e).__name__}: {e}"
                else:
                    # Each process scores its own batches while it generates the next ones: judge requests
                    # (network-bound) overlap generation instead of following it.
                    pool, scoring = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlvlm-score"), []

                    def on_batch(positions, completions, probs):
                        batch_items = [items[p] for p in positions]
                        scoring.append((positions, pool.submit(score, batch_items, completions, probs, self.scorer)))

                    try:
                        self._forward_local(model, indices, engine, on_batch)
                        result, error = self._score_sharded(step, len(items), scoring, base_records, state)
                    finally:
                        pool.shutdown(wait=True, cancel_futures=True)
        finally:
            model.train(was_training)
        error = broadcast(error)
        if error:
            raise EvaluationError(error)
        if result is None:  # not the main process: it only took part in the forward passes
            result = EvalResult(step=step)
        result.seconds = time.perf_counter() - start
        return result

    def _score_sharded(self, step, n_items, scoring, base_records, state) -> tuple[EvalResult | None, str | None]:
        """Collects this process's scored batches (`scoring`: (positions, future of their records)), gathers
        the records of every process in the items' order and aggregates them on the main process: (result
        or None, error or None). A scoring error on any process raises `EvaluationError` (same message) on
        all of them."""
        error, records = None, []
        try:
            for positions, future in scoring:
                records += zip(positions, future.result())
        except Exception as e:  # noqa: BLE001 - reported on every process below
            log.exception("evaluator scoring failed on process %d", state.process_index)
            error = f"scoring on process {state.process_index}: {type(e).__name__}: {e}"
        gathered = all_gather([("error", error)] if error else records)
        errors = [x[1] for x in gathered if x[0] == "error"]
        if errors:
            raise EvaluationError(errors[0])
        if not state.is_main_process:
            return None, None
        try:
            by_position = dict(gathered)
            return aggregate(step, [by_position[p] for p in range(n_items)], base_records), None
        except Exception as e:  # noqa: BLE001 - broadcast to every process by run()
            log.exception("evaluator aggregation failed")
            return None, f"aggregation: {type(e).__name__}: {e}"
