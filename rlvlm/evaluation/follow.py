"""`rlvlm eval --follow RUN_DIR`: evaluate a run's starting model and its checkpoints as they appear,
into the run's own trace, while (or after) it trains elsewhere (`evaluation.mode: follow`).

It reads the resolved recipe that `rlvlm train` saved in the run directory, evaluates step 0 (the
starting model, when `evaluation.at_start`) and then every complete checkpoint (one whose
`trainer_state.json`, written last, exists) that `evaluation.every` selects, oldest first, and exits 0
once the run's last checkpoint (its `global_step` equals its `max_steps`) is evaluated. The trace is
the commit point, so a follower killed at any moment and started again redoes at most the step it was
on: no row is duplicated or dropped. With vLLM installed and a GPU, checkpoints are generated through a
vLLM engine built on each (tensor parallel size from the recipe's `vllm_tensor_parallel_size`), and
the option probabilities read by one teacher-forced pass on the transformers model; otherwise
transformers does both. Scalars and sample tables go to the training run's wandb run (its id from
`RUN_DIR/wandb_run.json`), at each checkpoint's step.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from pathlib import Path

from rlvlm.evaluation import trace
from rlvlm.evaluation.distributed import broadcast, process_state
from rlvlm.evaluation.evaluator import Evaluator
from rlvlm.evaluation.results import EvalResult, format_rows, sample_tables
from rlvlm.evaluation.schedule import is_evaluated
from rlvlm.recipe import RecipeError
from rlvlm.train import complete_checkpoints

log = logging.getLogger("rlvlm.evaluation")

RESOLVED_RECIPE = "recipe.yaml"
WANDB_RUN = "wandb_run.json"


def use_vllm(section) -> bool:
    if section.engine == "transformers":
        return False
    import torch

    available = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    if section.engine == "vllm" and not available:
        raise RecipeError("evaluation.engine is vllm, but vllm is not installed or no GPU is visible here; "
                          "install rlvlm[vllm] on a GPU machine, or set --evaluation.engine transformers.")
    return available


class WandbLink:
    """The training run's wandb run, opened (resumed by id) once RUN_DIR/wandb_run.json exists; results
    evaluated before that (step 0 can finish before the trainer reaches wandb) are logged when it opens."""

    def __init__(self, run_dir: Path, n_samples: int):
        self.path = Path(run_dir) / WANDB_RUN
        self.n_samples = n_samples
        self.run = None
        self.waiting: list[EvalResult] = []

    def _open(self):
        if not self.path.is_file():
            return None
        import wandb

        info = json.loads(self.path.read_text())
        if info.get("mode") == "offline":
            settings = wandb.Settings(mode="offline")
        else:  # the trainer's run is in shared mode (rlvlm train sets it in follow mode): write beside it
            settings = wandb.Settings(mode="shared", x_primary=False, x_label="rlvlm-eval-follow", x_update_finish_state=False)
        return wandb.init(id=info["id"], project=info.get("project"), entity=info.get("entity"), resume="allow",
                          settings=settings)

    def log(self, result: EvalResult | None) -> None:
        if result is not None:
            self.waiting.append(result)
        try:
            if self.run is None:
                self.run = self._open()
            if self.run is None:
                return
            import wandb

            while self.waiting:
                first = self.waiting[0]
                payload = {f"eval/{k}": v for k, v in first.log_dict().items()}
                for key, (columns, rows) in sample_tables(first.records, first.step, self.n_samples).items():
                    payload[key] = wandb.Table(columns=columns, data=rows)
                self.run.log({**payload, "train/global_step": first.step})
                self.waiting.pop(0)
        except Exception:  # noqa: BLE001 - a logger problem never stops the evaluation
            log.exception("logging the evaluation to wandb failed")

    def close(self) -> None:
        if self.waiting:
            self.log(None)
        if self.run is not None:
            self.run.finish()


class Follower:
    def __init__(self, run_dir: Path, progress: bool = True):
        from rlvlm.evaluation.scoring import load_scorer
        from rlvlm.recipe import load_recipe

        self.run_dir = Path(run_dir)
        recipe_path = self.run_dir / RESOLVED_RECIPE
        if not recipe_path.is_file():
            raise RecipeError(f"'{self.run_dir}' holds no {RESOLVED_RECIPE}; give the directory `rlvlm train` "
                              "writes a run into (it saves the resolved recipe there before training).")
        self.recipe = load_recipe(recipe_path)
        self.section = self.recipe.evaluation
        from rlvlm.preflight import probe_recipe_judges

        load_scorer(self.section)  # a bad faithfulness scorer fails before any model is built
        probe_recipe_judges(self.recipe, training=False)  # and so does a judge that does not answer
        self.eval_dir = self.run_dir / "eval"
        self.progress = progress
        self.vllm = use_vllm(self.section)
        self.evaluator: Evaluator | None = None
        self.wandb = WandbLink(self.run_dir, self.section.n_samples_table)

    def start_model(self) -> str:
        from rlvlm.models import resolve_model, warm_start_model

        base = resolve_model(self.recipe.model, progress=self.progress)
        return warm_start_model(self.recipe.model, base, self.recipe.warm_start, progress=self.progress)

    def pending(self) -> tuple[list[tuple[int, str]], bool]:
        """(step, model) pairs still to evaluate, oldest first, and whether the run has finished. A step
        recorded in errors.jsonl as deleted before it was read is not waited for again."""
        keys = self.evaluator.keys()
        skipped = {r["step"] for r in trace.read_jsonl(self.eval_dir / trace.ERRORS) if "was deleted" in r.get("error", "")}
        work = []
        if self.section.at_start and trace.todo(self.eval_dir, 0, keys):
            work.append((0, None))
        finished = False
        for step, path, state in complete_checkpoints(self.run_dir):
            last = int(state.get("max_steps") or 0)
            finished |= last > 0 and step >= last
            if step > 0 and step not in skipped and is_evaluated(step, int(state.get("save_steps") or 0), self.section.every, last) \
                    and trace.todo(self.eval_dir, step, keys):
                work.append((step, str(path)))
        return work, finished

    def evaluate(self, step: int, model_path: str) -> EvalResult:
        from rlvlm.evaluation.cli import load_model
        from rlvlm.evaluation.generation import LocalEngine

        main = process_state().is_main_process
        pending = broadcast(trace.todo(self.eval_dir, step, self.evaluator.keys()) if main else None)
        bases = trace.base_records(self.eval_dir, step) if main else []
        model, _ = load_model(model_path, self.recipe.model)
        engine = None
        if self.vllm and not (Path(model_path) / "adapter_config.json").exists():  # a LoRA checkpoint: transformers
            grpo = self.recipe.grpo
            engine = LocalEngine(model_path, tensor_parallel_size=grpo.get("vllm_tensor_parallel_size", 1),
                                 gpu_memory_utilization=self.section.vllm_gpu_memory_utilization,
                                 max_model_len=grpo.get("vllm_max_model_length"))
        try:
            return self.evaluator.run(model, step, only=pending, base_records=bases, engine=engine)
        finally:
            if engine is not None:
                engine.close()
            del model

    def run(self, poll_seconds: float = 30.0, max_wait_seconds: float | None = None) -> int:
        from transformers import AutoProcessor

        main = process_state().is_main_process
        start = self.start_model()
        self.evaluator = Evaluator.from_recipe(self.recipe, AutoProcessor.from_pretrained(start))
        waited = 0.0
        try:
            while True:
                work, finished = broadcast(self.pending() if main else None)
                if not work:
                    if finished:
                        if main:
                            print(f"rlvlm eval --follow: the run has finished and every checkpoint is evaluated "
                                  f"({self.eval_dir / trace.TRACE}).")
                        return 0
                    if max_wait_seconds is not None and waited >= max_wait_seconds:
                        raise RecipeError(f"no new checkpoint in '{self.run_dir}' for {waited:.0f}s "
                                          "(--max_wait); the trace holds every step evaluated so far.")
                    time.sleep(poll_seconds)
                    waited += poll_seconds
                    continue
                waited = 0.0
                step, path = work[0]
                try:
                    result = self.evaluate(step, path or start)
                except OSError as e:
                    if path is None or Path(path).exists():
                        raise
                    # deleted while it was read (save_total_limit rotates the oldest): recorded and skipped
                    message = f"checkpoint {path} was deleted before it was evaluated ({type(e).__name__}: {e})"
                    log.warning("rlvlm eval --follow: %s; skipped", message)
                    if main:
                        trace.record_error(self.eval_dir, step, message, time.time())
                    continue
                if main:
                    trace.write_result(self.eval_dir, result)
                    self.wandb.log(result)
                    print(f"rlvlm eval --follow: step {step}: {len(result.trace)} rows in {result.seconds:.1f}s\n"
                          + format_rows(result.trace), flush=True)
        finally:
            if main:
                self.wandb.close()
