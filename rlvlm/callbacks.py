"""The robustness evaluator inside training, as `transformers.TrainerCallback`s.

`EvalCallback` (`evaluation.mode: inline`):
- `on_train_begin`: evaluates the current step (0 before any update; on a resumed run, the resumed
  checkpoint's step when the trace lacks it) unless `evaluation.at_start` is false for step 0.
- `on_save`: evaluates the saved checkpoint when `evaluation.every` selects it (the last one always).
When the trainer generates with vLLM, evaluation generates with the same engine after pushing the
current weights to it; option probabilities come from one teacher-forced pass on the trainer's model.

Steps already in `RUN_DIR/eval/trace.jsonl` are skipped, so a resumed run never duplicates a row.
Scalars go to the trainer's own loggers (wandb, tensorboard, ...) as `eval/<dataset>/<condition>/<metric>`
at the training step; with an active wandb run, a Table of sample responses per condition too.
An evaluator error is logged (and recorded in `eval/errors.jsonl`) and training goes on, or, with
`evaluation.on_error: stop`, the run stops with `EvaluationError`; either way on every process alike.
A failure inside a pass that is itself a collective (ZeRO-3, FSDP) cannot be recovered: the process ends
(`EvaluationAborted`) whatever `on_error` says, and the launcher ends the others.

`RewardWatch` stops training with a checkpoint when a reward gate's judge stays down.

`WandbRunRecorder` writes `RUN_DIR/wandb_run.json` (the run's id, project, entity, mode) once wandb is
up, so that a follower (`rlvlm eval --follow`) logs into the same wandb run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import traceback
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import DefaultFlowCallback, PrinterCallback, ProgressCallback

from rlvlm.evaluation import trace
from rlvlm.evaluation.distributed import broadcast, sync_error
from rlvlm.evaluation.evaluator import Evaluator
from rlvlm.evaluation.generation import EvaluationError, TrainerEngine
from rlvlm.evaluation.follow import WANDB_RUN
from rlvlm.evaluation.results import EvalResult, format_rows, sample_tables
from rlvlm.evaluation.schedule import is_evaluated

log = logging.getLogger("rlvlm.eval")



class EvalCallback(TrainerCallback):
    """Evaluates the recipe's eval sets under its conditions at step 0 and at the saves `every` selects."""

    def __init__(self, recipe, run_dir: str | Path | None = None, conditions=None):
        self.recipe = recipe
        self.section = recipe.evaluation
        self.conditions = conditions
        self.eval_dir = Path(run_dir or recipe.grpo["output_dir"]) / "eval"
        self.trainer = None
        self.evaluator: Evaluator | None = None
        self.history: list[dict] = []  # {"step", "seconds", "rows"} or {"step", "error"}, this process's view

    def attach(self, trainer) -> "EvalCallback":
        """Register on `trainer` (the trainer's accelerator, wrapped model, vLLM engine and loggers are then used)."""
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    # ------------------------------------------------------------------ events

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0 or self.section.at_start:
            self._evaluate(args, state, control, kwargs)

    def on_save(self, args, state, control, **kwargs):
        if is_evaluated(state.global_step, state.save_steps, self.section.every, state.max_steps):
            self._evaluate(args, state, control, kwargs)

    # ------------------------------------------------------------------ work

    @contextlib.contextmanager
    def _model(self, model):
        """The trainer's model, unwrapped for generation (ZeRO-3 parameters gathered) as TRL does it.

        TRL 1.16's `unwrap_model_for_generation` restores nothing when its body raises (no try/finally):
        the ZeRO-3 forward hooks it removed and the gradient checkpointing it turned off would stay so for
        the rest of training. The body's exception is therefore held here, TRL's context is left normally
        (hooks back, checkpointing re-enabled), and the exception raised after it. Checkpointing is
        re-enabled with the trainer's own `gradient_checkpointing_kwargs`, as TRL's generation does: with
        None, transformers re-enables it with use_reentrant=False, undoing the use_reentrant=True TRL forces
        for LoRA under ZeRO-3."""
        trainer = self.trainer
        if trainer is None or getattr(trainer, "accelerator", None) is None:
            yield model
            return
        from trl.models import unwrap_model_for_generation

        failure = None
        with unwrap_model_for_generation(
            trainer.model_wrapped,
            trainer.accelerator,
            gather_deepspeed3_params=getattr(trainer.args, "ds3_gather_for_generation", True),
            gradient_checkpointing_kwargs=getattr(trainer.args, "gradient_checkpointing_kwargs", None),
        ) as unwrapped:
            try:
                yield unwrapped
            except BaseException as e:  # noqa: BLE001 - raised again once TRL has restored the model
                failure = e
        if failure is not None:
            raise failure

    def engine(self) -> TrainerEngine | None:
        """The trainer's vLLM engine when it generates with one and `evaluation.engine` allows it."""
        if self.section.engine == "transformers" or self.trainer is None:
            return None
        vllm_generation = getattr(self.trainer, "vllm_generation", None)
        if not getattr(self.trainer.args, "use_vllm", False) or vllm_generation is None:
            return None
        return TrainerEngine(vllm_generation)

    def _evaluator(self, processor) -> Evaluator:
        if self.evaluator is None:
            self.evaluator = Evaluator.from_recipe(self.recipe, processor, self.conditions)
        return self.evaluator

    def _evaluate(self, args, state, control, kwargs) -> None:
        """Every step that can fail on one process alone ends in `sync_error` (or raises alike on every
        process, as `Evaluator.run` does), so all processes take the same branch: skip, log the error and
        train on, stop, or log the result. `EvaluationAborted` (a failure inside a collective pass, see
        rlvlm.evaluation.evaluator) is not caught: the process ends and the launcher ends the others."""
        step = int(state.global_step)
        main = state.is_world_process_zero
        processor = kwargs.get("processing_class")
        if processor is None:
            processor = getattr(self.trainer, "processing_class", None)
        model = kwargs.get("model")
        if model is None:
            model = getattr(self.trainer, "model", None)
        result, error, tb, todo, bases = None, None, "", None, []
        try:  # local work only: building the evaluator, reading the trace
            evaluator = self._evaluator(processor)
            if main:
                todo = trace.todo(self.eval_dir, step, evaluator.keys())
                bases = trace.base_records(self.eval_dir, step)
        except Exception as e:  # noqa: BLE001 - shared with every process below
            error, tb = f"{type(e).__name__}: {e}", traceback.format_exc()
        error = sync_error(error)
        if error is not None:
            self._fail(step, error, tb, main)
            return
        pending = broadcast(todo)
        if not pending:
            log.info("eval step %d: already in %s; skipped", step, self.eval_dir / trace.TRACE)
            return
        try:
            engine = self.engine()
            if engine is not None:
                engine.sync()  # the engine holds the weights of the last generation, not this checkpoint's
            with self._model(model) as unwrapped:
                result = evaluator.run(unwrapped, step, only=pending, base_records=bases, engine=engine)
        except Exception as e:  # noqa: BLE001 - raised alike on every process (see Evaluator.run)
            error = f"{type(e).__name__}: {e}"
            tb = traceback.format_exc()
        if error is None and main:
            try:
                trace.write_result(self.eval_dir, result)
            except Exception as e:  # noqa: BLE001
                error, tb = f"writing results: {type(e).__name__}: {e}", traceback.format_exc()
        error = sync_error(error)
        if error is not None:
            self._fail(step, error, tb, main)
            return
        self.history.append({"step": step, "seconds": result.seconds, "rows": len(result.trace)})
        if main:
            log.info("eval step %d: %d rows in %.1fs\n%s", step, len(result.trace), result.seconds, format_rows(result.trace))
        self._log(args, state, control, result, kwargs)

    def _fail(self, step: int, error: str, tb: str, main: bool) -> None:
        """The same decision on every process: `error` comes from `sync_error` and `on_error` from the
        recipe every process loaded."""
        self.history.append({"step": step, "error": error})
        if self.section.on_error == "stop":
            raise EvaluationError(f"evaluation at step {step} failed (evaluation.on_error: stop): {error}")
        log.error("evaluation at step %d failed; training goes on (evaluation.on_error: log): %s\n%s", step, error, tb)
        if main:
            with contextlib.suppress(Exception):
                trace.record_error(self.eval_dir, step, error, time.time())

    # ------------------------------------------------------------------ loggers

    def _log(self, args, state, control, result: EvalResult, kwargs) -> None:
        """Scalars through the trainer's integration callbacks; keys `eval_<dataset>/<condition>/<metric>`,
        which they rename to `eval/<dataset>/<condition>/<metric>` and log at `state.global_step`."""
        logs = {f"eval_{k}": v for k, v in result.log_dict().items()}
        skip = (EvalCallback, DefaultFlowCallback, ProgressCallback, PrinterCallback)
        callbacks = self.trainer.callback_handler.callbacks if self.trainer is not None else []
        for cb in callbacks:
            if isinstance(cb, skip) or type(cb).__name__.endswith(("ProgressCallback", "PrinterCallback")):
                continue  # the console gets the compact table above instead of ~100 keys
            try:
                cb.on_log(args, state, control, logs=dict(logs), model=kwargs.get("model"))
            except Exception:  # noqa: BLE001 - a logger problem never stops training
                log.exception("logging evaluation metrics to %s failed", type(cb).__name__)
        if state.is_world_process_zero:
            self._log_wandb_tables(state, result)

    def _log_wandb_tables(self, state, result: EvalResult) -> None:
        wandb = sys.modules.get("wandb")  # never imported here: only an active run is used
        run = getattr(wandb, "run", None) if wandb is not None else None
        n = self.section.n_samples_table
        if run is None or n <= 0:
            return
        tables = sample_tables(result.records, state.global_step, n)
        payload = {key: wandb.Table(columns=columns, data=rows) for key, (columns, rows) in tables.items()}
        try:
            run.log({**payload, "train/global_step": state.global_step})
        except Exception:  # noqa: BLE001
            log.exception("logging the wandb sample tables failed")


class WandbRunRecorder(TrainerCallback):
    """Writes RUN_DIR/wandb_run.json once the trainer's wandb run exists (main process)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / WANDB_RUN

    def on_train_begin(self, args, state, control, **kwargs):
        wandb = sys.modules.get("wandb")
        run = getattr(wandb, "run", None) if wandb is not None else None
        if run is None or not state.is_world_process_zero:
            return
        info = {"id": run.id, "project": run.project, "entity": run.entity,
                "mode": "offline" if run.settings.mode in ("offline", "dryrun") else "online"}
        with contextlib.suppress(OSError):
            self.path.write_text(json.dumps(info) + "\n")


class RewardWatch(TrainerCallback):
    """Stops training, with a checkpoint, when a reward asks to (`composition.Reward.stop_reason`: a gate
    whose judge scored nothing for `max_failed_batches` batches in a row). The reason is shared by every
    process each step, so all stop at the same step; `rlvlm train` then reports it and exits 1."""

    def __init__(self, reward_funcs):
        self.reward_funcs = list(reward_funcs)
        self.stop_reason: str | None = None

    def on_step_end(self, args, state, control, **kwargs):
        own = next((r.stop_reason for r in self.reward_funcs if getattr(r, "stop_reason", None)), None)
        reason = sync_error(own)  # a collective: every process calls it every step
        if reason and self.stop_reason is None:
            self.stop_reason = reason
            control.should_training_stop = True
            control.should_save = True
        return control


def attach_evaluator(trainer, recipe) -> EvalCallback | None:
    """Attach the evaluator callback to a trainer when `evaluation.enabled` and `mode: inline`; with
    `mode: follow`, only the wandb-run record that the follower reads."""
    trainer.add_callback(WandbRunRecorder(recipe.grpo["output_dir"]))
    if not recipe.evaluation.enabled or recipe.evaluation.mode == "follow":
        return None
    return EvalCallback(recipe).attach(trainer)
