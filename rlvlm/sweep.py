"""`rlvlm sweep SWEEP.yaml --output_dir DIR [--key value ...]`: every (configuration, seed) of a sweep
as an ordinary run, then the ablation across configurations.

A sweep recipe:

    name: paper-ablation-tiny
    base: tiny-shapes.yaml              # a recipe, relative to this file
    seeds: [0, 1, 2]
    overrides: {max_steps: 100}         # optional: every run
    configs:                            # ordered: name -> recipe overrides, in the recipe's nested form
      baseline: {}
      augment:
        augmentation: {probs: {wrong_caption: 0.1, wrong_think: 0.1}}

Run (config, seed) is the base recipe with, in increasing precedence: the common `overrides`, the
config's, `seed` and `output_dir: DIR/<config>/seed<seed>`, and the command line's `--key value`. The
two YAML layers are laid over the base by `rlvlm.recipe.merge`, the rule a recipe's `base:` follows
too: mappings merge key by key into the base recipe's sections (an empty mapping clears one);
anything else, lists included (`rewards`, `data.eval`), replaces. Every run's recipe is validated
before the first one trains.

Re-running the sweep: a finished run — its final `trainer_state.json` (written when `train()`
returns) at the recipe's last step, and the trace holding every (dataset, condition) at that step —
is skipped; an unfinished run with a checkpoint is resumed from its last complete one; an unfinished
run without any is moved aside to `seed<N>.incomplete-<k>` (nothing is deleted) and started again.

Then, over the finished runs:

- `DIR/ablation.json`: `{"runs": [{"config", "seed", "run_dir", "final": {condition: {metric: value}}}],
  "summary": {config: {condition: {metric: {"mean", "std"}}}}, "findings": [effect, ...]}`. `final` holds the trace rows of the
  run's last evaluated step, metrics `accuracy`, `consistency`, `consistent_accuracy`,
  `option_entropy`, `p_correct`; with one eval dataset a condition is keyed by its name, with several
  by `"<dataset>/<condition>"`. `std` is the sample standard deviation over seeds (0.0 with one).
- `DIR/ablation.md`: mean ± std over seeds per configuration and condition, and (in ablation.json's
  `findings` too) the paper's four findings as measured effects with a verdict (FINDINGS, `verdict`).
- per eval dataset, from the seed means: `tradeoff_<dataset>.png` (base accuracy against
  consistency over steps, a line per configuration), `robustness_<dataset>.png` (accuracy under
  wrong_caption and wrong_think over steps, mean ± std band) and `conditions_<dataset>.png`;
- `DIR/report/`: `rlvlm report` over every run.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import re
import statistics
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rlvlm import report
from rlvlm.recipe import Recipe, RecipeError, base_path, format_validation, load_recipe, read_yaml_mapping, unknown_key
from rlvlm.train import TRAINER_STATE, last_checkpoint

log = logging.getLogger("rlvlm.sweep")

METRICS = ("accuracy", "consistency", "consistent_accuracy", "option_entropy", "p_correct")
TABLE_METRICS = {"accuracy": "accuracy", "consistency": "consistency",
                 "consistent_accuracy": "consistent accuracy", "option_entropy": "option entropy"}
ROBUSTNESS_CONDITIONS = ("wrong_caption", "wrong_think")
# Set by the sweep for each run; a sweep-wide value would make the runs collide.
PER_RUN_KEYS = {"seed": "the sweep's `seeds`", "output_dir": "the sweep's --output_dir",
                "resume_from_checkpoint": "the sweep itself (it resumes unfinished runs)"}


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    base: str  # a recipe path, relative to the sweep file
    seeds: list[int] = Field(min_length=1)
    configs: dict[str, dict[str, Any]] = Field(min_length=1)
    overrides: dict[str, Any] = {}

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value):
        if len(set(value)) != len(value):
            raise ValueError(f"seeds must be distinct, got {value}")
        return value

    @field_validator("configs", mode="before")
    @classmethod
    def _empty_config(cls, value):
        # `baseline:` with nothing after it is YAML null: the base recipe unchanged.
        return {k: ({} if v is None else v) for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("configs")
    @classmethod
    def _dir_names(cls, value):
        bad = [k for k in value if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", k)]
        if bad:
            raise ValueError(f"configuration names become directory names; use letters, digits, '.', '_', '-': {bad}")
        return value


@dataclasses.dataclass
class SweepRun:
    config: str
    seed: int
    recipe: Recipe
    state: str = "new"  # new | finished | resume | restart
    checkpoint: Path | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.recipe.grpo["output_dir"])

    @property
    def label(self) -> str:
        return f"{self.config}/seed{self.seed}"


# ============================================================================ the sweep recipe


def load_sweep(path: str | Path) -> SweepSpec:
    path = Path(path)
    raw = read_yaml_mapping(path, kind="Sweep")
    for key in raw:
        if key not in SweepSpec.model_fields:
            raise unknown_key(key, list(SweepSpec.model_fields), f"the sweep '{path}'")
    try:
        return SweepSpec.model_validate({"name": path.stem, **raw})
    except ValidationError as e:
        raise RecipeError(f"Invalid sweep '{path}': {format_validation('sweep', e)}.") from None


def _check_per_run_keys(overrides: dict[str, Any], where: str) -> None:
    for key in overrides:
        if key in PER_RUN_KEYS:
            raise RecipeError(f"'{key}' in {where} cannot be set: it is set for each run by {PER_RUN_KEYS[key]}.")


def expand(spec: SweepSpec, sweep_path: Path, out_dir: Path, cli: dict[str, Any]) -> list[SweepRun]:
    """Every (config, seed) as a loaded recipe, in the sweep's order (configs, then seeds)."""
    base = base_path(Path(sweep_path), spec.base, kind="sweep")
    _check_per_run_keys(spec.overrides, "the sweep's overrides")
    _check_per_run_keys(cli, "the command line")
    runs = []
    for config, own in spec.configs.items():
        _check_per_run_keys(own, f"configuration '{config}'")
        for seed in spec.seeds:
            per_run = {"seed": seed, "output_dir": str(out_dir / config / f"seed{seed}")}
            try:
                recipe = load_recipe(base, {**per_run, **cli}, layers=[spec.overrides, own])
            except RecipeError as e:
                raise RecipeError(f"Sweep '{sweep_path}', configuration '{config}': {e}") from None
            runs.append(SweepRun(config, seed, recipe))
    return runs


def validate_runs(runs: list[SweepRun]) -> None:
    """What train() checks up front, for every run, before the first one starts."""
    from rlvlm.train import validate

    for run in runs:
        if not run.recipe.evaluation.enabled:
            raise RecipeError(f"Configuration '{run.config}' turns evaluation off: a sweep compares evaluation traces.")
        try:
            validate(run.recipe)
        except (RecipeError, ValueError) as e:
            raise RecipeError(f"Configuration '{run.config}' (seed {run.seed}): {e}") from None


# ============================================================================ run states


def expected_keys(recipe: Recipe) -> set[tuple[str, str]]:
    """(dataset, condition) pairs the evaluator writes at every evaluated step."""
    from rlvlm.evaluation.items import dataset_labels, resolve_conditions

    return {(d, c) for d in dataset_labels(recipe.data.eval) for c in resolve_conditions(recipe.evaluation.conditions)}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_finished(run: SweepRun) -> bool:
    from rlvlm.evaluation.trace import TRACE, read_jsonl

    state = _read_json(run.run_dir / TRAINER_STATE)
    if not state or "global_step" not in state:
        return False
    step = state["global_step"]
    target = run.recipe.grpo.get("max_steps", -1)
    if step < (target if target > 0 else state.get("max_steps", step)):
        return False
    evaluated = {(r["dataset"], r["condition"]) for r in read_jsonl(run.run_dir / "eval" / TRACE) if r["step"] == step}
    return expected_keys(run.recipe) <= evaluated


def plan(run: SweepRun) -> SweepRun:
    """Sets the run's state from what its directory holds."""
    if run.run_dir.exists() and not run.run_dir.is_dir():
        raise RecipeError(f"'{run.run_dir}' is a file, not a run directory.")
    if is_finished(run):
        run.state = "finished"
    elif run.run_dir.is_dir() and any(run.run_dir.iterdir()):
        run.checkpoint = last_checkpoint(run.run_dir)
        run.state = "resume" if run.checkpoint else "restart"
    else:
        run.state = "new"
    return run


def describe(run: SweepRun) -> str:
    return {
        "new": "to train",
        "finished": "finished: skipped",
        "resume": f"unfinished: resume from {run.checkpoint.name if run.checkpoint else ''}",
        "restart": "unfinished, no checkpoint: set aside and trained again",
    }[run.state]


# ============================================================================ running


def set_aside(run_dir: Path) -> Path:
    k = 1
    while (aside := run_dir.with_name(f"{run_dir.name}.incomplete-{k}")).exists():
        k += 1
    run_dir.rename(aside)
    return aside


def execute(run: SweepRun, progress: bool) -> None:
    from accelerate import PartialState

    from rlvlm.train import train

    recipe = run.recipe
    if run.state == "restart":
        state = PartialState()  # under `accelerate launch`, one process moves the directory
        if state.is_main_process:
            log.warning("%s: no checkpoint to resume from; the partial run is kept in %s", run.label, set_aside(run.run_dir))
        state.wait_for_everyone()
    if run.state == "resume":
        recipe = dataclasses.replace(recipe, grpo={**recipe.grpo, "resume_from_checkpoint": str(run.checkpoint)})
    train(recipe, progress=progress)


def run_all(runs: list[SweepRun], progress: bool, jobs: int = 1) -> None:
    """Trains every unfinished run, in turn in this process, or `jobs` at a time as `rlvlm train`
    subprocesses; a run that fails is logged and the others go on."""
    todo = [r for r in runs if r.state != "finished"]
    if jobs > 1:
        return run_concurrently(todo, jobs)
    for i, run in enumerate(todo, 1):
        log.info("sweep [%d/%d] %s: %s", i, len(todo), run.label, describe(run))
        try:
            execute(run, progress)
        except Exception:  # noqa: BLE001 - one broken run does not cost the others
            log.exception("sweep: run %s failed; going on with the others", run.label)
        gc.collect()  # the finished trainer's model and optimizer before the next run's


def job_env(slot: int, jobs: int, cpus: int, gpus: list[str]) -> dict[str, str]:
    """The environment of the job in `slot` (0..jobs-1): an equal share of the CPU threads (torch's
    intra-op pool spins on its cores, so jobs that together ask for more threads than there are cores
    slow each other down), and one GPU each when there are at least as many GPUs as jobs (several
    otherwise, split evenly)."""
    env = {"OMP_NUM_THREADS": str(max(1, cpus // jobs))}
    if gpus:
        share = gpus[slot::jobs] if len(gpus) >= jobs else [gpus[slot % len(gpus)]]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(share)
    return env


def run_concurrently(todo: list[SweepRun], jobs: int) -> None:
    """`rlvlm train` on each run's resolved recipe, `jobs` at a time; each run's output goes to
    DIR/<config>/seed<N>.log. Runs sharing a warm-start wait for the first one to build it (its cache
    lock)."""
    import os
    import queue
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import yaml
    from accelerate import PartialState

    if PartialState().num_processes > 1:
        raise RecipeError("rlvlm sweep --jobs runs its own processes; start it without accelerate launch")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range(_cuda_count())]
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(jobs):
        slots.put(slot)

    def one(i: int, run: SweepRun) -> None:
        slot = slots.get()
        try:
            if run.state == "restart":
                log.warning("%s: no checkpoint to resume from; the partial run is kept in %s", run.label, set_aside(run.run_dir))
            recipe_file = run.run_dir.with_name(f"{run.run_dir.name}.recipe.yaml")
            recipe_file.parent.mkdir(parents=True, exist_ok=True)
            recipe_file.write_text(yaml.safe_dump(run.recipe.resolved(), sort_keys=False))
            command = [sys.executable, "-m", "rlvlm", "train", str(recipe_file), "--quiet"]
            if run.state == "resume":
                command += ["--resume_from_checkpoint", str(run.checkpoint)]
            log.info("sweep [%d/%d] %s: %s (job %d)", i, len(todo), run.label, describe(run), slot)
            with open(run.run_dir.with_name(f"{run.run_dir.name}.log"), "a") as out:
                code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT,
                                       env={**os.environ, **job_env(slot, jobs, os.cpu_count() or 1, gpus)})
            if code != 0:
                log.error("sweep: run %s failed (exit %d, see %s.log); going on with the others", run.label, code, run.run_dir)
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, range(1, len(todo) + 1), todo))


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# ============================================================================ ablation


def mean_std(values: list[float | None]) -> dict[str, float | None]:
    """Mean and standard deviation over the seeds that have a value (a consistency the judge could not
    score is None); both None when none has."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def _key(row: dict, several_datasets: bool) -> str:
    return f"{row['dataset']}/{row['condition']}" if several_datasets else row["condition"]


def final_rows(trace: list[dict], several_datasets: bool) -> dict[str, dict[str, float]]:
    last = max(r["step"] for r in trace)
    return {_key(r, several_datasets): {m: r[m] for m in METRICS} for r in trace if r["step"] == last}


def ablation(runs: list[SweepRun], traces: dict[str, list[dict]], signals: dict[str, list[dict]] | None = None) -> dict:
    several = len({r["dataset"] for trace in traces.values() for r in trace}) > 1
    entries = [{"config": run.config, "seed": run.seed, "run_dir": str(run.run_dir),
                "final": final_rows(traces[run.label], several)} for run in runs]
    summary = {}
    for config in dict.fromkeys(run.config for run in runs):
        finals = [e["final"] for e in entries if e["config"] == config]
        conditions = list(dict.fromkeys(c for final in finals for c in final))
        summary[config] = {
            c: {m: mean_std([f[c][m] for f in finals if c in f]) for m in METRICS} for c in conditions
        }
    joined = {(run.config, run.seed): joined_rows(traces[run.label], (signals or {}).get(run.label, [])) for run in runs}
    return {"runs": entries, "summary": summary, "findings": findings(joined)}


def joined_rows(trace: list[dict], signals: list[dict]) -> list[dict]:
    """Trace rows with the same (step, dataset, condition)'s shortcut signals merged in."""
    by_key = {(r["step"], r["dataset"], r["condition"]): r for r in signals}
    return [{**by_key.get((r["step"], r["dataset"], r["condition"]), {}), **r} for r in trace]


# ---------------------------------------------------------------------------- the paper's findings
#
# Each finding of the paper is a few measured effects, each on one condition's metric of the first eval
# dataset: a `change` is a configuration's value at its last evaluated step minus its step 0, per seed; a
# `difference` is configuration A minus configuration B at the last step, paired by seed. `expect` is the
# paper's direction (+1 up, -1 down, 0 "barely" / "does not"). A sweep whose configurations carry the
# paper-ablation-tiny names gets these; an effect whose configurations are absent is left out.


@dataclasses.dataclass(frozen=True)
class Effect:
    finding: int
    claim: str
    kind: str  # "change" or "difference"
    configs: tuple[str, ...]  # (config,) for a change, (A, B) for a difference
    condition: str
    metric: str  # a trace metric, or a shortcut signal (think_words, identical_share, ...)
    expect: int


FINDINGS = (
    Effect(1, "RL raises accuracy", "change", ("baseline",), "base", "accuracy", +1),
    Effect(1, "RL lowers option entropy", "change", ("baseline",), "base", "option_entropy", -1),
    Effect(1, "while consistency falls", "change", ("baseline",), "base", "consistency", -1),
    Effect(2, "augmentation restores wrong-caption accuracy", "difference", ("augment", "baseline"), "wrong_caption", "accuracy", +1),
    Effect(2, "but barely helps under a wrong think", "difference", ("augment", "baseline"), "wrong_think", "accuracy", 0),
    Effect(2, "and does not stop the drift", "difference", ("augment", "baseline"), "base", "consistency", 0),
    Effect(3, "the faithfulness reward pulls consistency back up", "difference", ("faithful", "baseline"), "base", "consistency", +1),
    Effect(4, "with augmentation too, CoTs grow shorter", "difference", ("augment_faithful", "faithful"), "base", "think_words", -1),
    Effect(4, "and more templated", "difference", ("augment_faithful", "faithful"), "base", "identical_share", +1),
)
SPREAD = 2.0  # an effect is beyond the seed spread when |mean| > SPREAD x its standard deviation over seeds


def verdict(expect: int, mean: float, std: float, n: int) -> str:
    """`reproduced`, `not reproduced` or `opposite`: a directional effect is reproduced when its mean has
    the expected sign and exceeds SPREAD standard deviations (over at least two seeds), opposite when it
    does so with the other sign; an expected non-effect ("barely") is reproduced when it stays within
    the spread. One seed has no spread: `not judged`."""
    if n < 2:
        return "not judged"
    beyond = abs(mean) > SPREAD * std
    if expect == 0:
        return "not reproduced" if beyond else "reproduced"
    if not beyond:
        return "not reproduced"
    return "reproduced" if (mean > 0) == (expect > 0) else "opposite"


def step_values(rows: list[dict], condition: str, metric: str) -> dict[int, float]:
    """{step: value} of one condition's metric (None values left out) on the rows' first dataset."""
    dataset = rows[0]["dataset"] if rows else None
    return {r["step"]: r[metric] for r in rows
            if r["dataset"] == dataset and r["condition"] == condition and r.get(metric) is not None}


def effect_values(effect: Effect, rows: dict[tuple[str, int], list[dict]]) -> list[float]:
    """Per-seed values of an effect; rows: (config, seed) -> that run's trace rows joined with its signals."""
    seeds = sorted({seed for config, seed in rows if config == effect.configs[0]})
    values = []
    for seed in seeds:
        series = [step_values(rows.get((config, seed), []), effect.condition, effect.metric) for config in effect.configs]
        if not all(series):
            continue
        if effect.kind == "change":
            (one,) = series
            values.append(one[max(one)] - one[min(one)])
        else:
            a, b = series
            values.append(a[max(a)] - b[max(b)])
    return values


def findings(rows: dict[tuple[str, int], list[dict]]) -> list[dict]:
    """Every effect of FINDINGS that the sweep's configurations can measure, with mean ± std over seeds
    and its verdict."""
    out = []
    for effect in FINDINGS:
        values = effect_values(effect, rows)
        if not values:
            continue
        stats = mean_std(values)
        out.append({**dataclasses.asdict(effect), "configs": list(effect.configs), "seeds": len(values),
                    "values": values, **stats, "verdict": verdict(effect.expect, stats["mean"], stats["std"], len(values))})
    return out


def findings_table(result: list[dict]) -> str:
    def measured(e: dict) -> str:
        what = f"{e['configs'][0]}: last − step 0" if e["kind"] == "change" else f"{e['configs'][0]} − {e['configs'][1]}, last step"
        return f"{e['condition']} {e['metric'].replace('_', ' ')} ({what})"

    rows = [[e["finding"], e["claim"], measured(e), f"{e['mean']:+.3f} ± {e['std']:.3f}", e["seeds"], e["verdict"]]
            for e in result]
    return report.markdown_table(["finding", "the paper", "measured", "effect (mean ± std)", "seeds", "verdict"], rows)


def mean_trace(traces: list[list[dict]]) -> list[dict]:
    """Trace rows averaged over seeds per (step, dataset, condition); `<metric>_std` beside each mean."""
    groups: dict[tuple, list[dict]] = {}
    for trace in traces:
        for r in trace:
            groups.setdefault((r["step"], r["dataset"], r["condition"]), []).append(r)
    rows = []
    for (step, dataset, condition), group in groups.items():
        row = {"step": step, "dataset": dataset, "condition": condition, "n_seeds": len(group)}
        for m in METRICS:
            stats = mean_std([r[m] for r in group])
            row[m], row[f"{m}_std"] = stats["mean"], stats["std"]
        rows.append(row)
    return rows


def plot_robustness(mean_runs: list[report.Run], dataset: str, path: Path) -> Path | None:
    """Accuracy under wrong_caption and wrong_think over steps, mean ± std over seeds, per configuration."""
    conditions = [c for c in ROBUSTNESS_CONDITIONS if any(run.series(dataset, c, "accuracy")[0] for run in mean_runs)]
    if not conditions:
        return None
    plt = report.pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(conditions), figsize=(5.6 * len(conditions), 4.4), squeeze=False, sharey=True)
    for ax, condition in zip(axes[0], conditions):
        for run, color in zip(mean_runs, report.palette(len(mean_runs))):
            steps, mean = run.series(dataset, condition, "accuracy")
            _, std = run.series(dataset, condition, "accuracy_std")
            if not steps:
                continue
            ax.plot(steps, mean, "-", marker="o", ms=3, color=color, label=run.label)
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=color, alpha=0.15, lw=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"accuracy under {condition}")
        ax.set_xlabel("training step")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (mean ± std over seeds)")
    axes[0][-1].legend(loc="best", fontsize=8)
    fig.suptitle(f"Robustness to misleading text over training — {dataset}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots(mean_runs: list[report.Run], out: Path) -> list[Path]:
    written = []
    for dataset in sorted({d for run in mean_runs for d in run.datasets()}):
        have = [run for run in mean_runs if dataset in run.datasets()]
        slug = report.slug(dataset)
        condition = "base" if any(run.series(dataset, "base", "accuracy")[0] for run in have) else have[0].conditions(dataset)[0]
        written.append(report.plot_tradeoff(have, dataset, out / f"tradeoff_{slug}.png", condition))
        robustness = plot_robustness(have, dataset, out / f"robustness_{slug}.png")
        if robustness is not None:
            written.append(robustness)
        written.append(report.plot_conditions(have, dataset, out / f"conditions_{slug}.png"))
    return written


def markdown(spec: SweepSpec, result: dict, runs: list[SweepRun], images: list[Path], out: Path) -> str:
    steps = sorted({r.recipe.grpo.get("max_steps", -1) for r in runs})
    parts = [f"# Sweep `{spec.name}`", "",
             f"{len(result['summary'])} configurations × seeds {spec.seeds} on `{spec.base}` "
             f"({len(runs)} finished runs, max_steps {', '.join(map(str, steps))}). Values at each run's last "
             "evaluated step: mean ± sample standard deviation over seeds. Per-run details: "
             "[report/report.md](report/report.md).", ""]
    parts += [f"![{img.stem}]({img.relative_to(out).as_posix()})" for img in images]
    if result.get("findings"):
        parts += ["", "## The paper's findings", "",
                  f"Each effect per seed, then mean ± sample std over seeds; **reproduced** when the mean has the "
                  f"paper's sign and exceeds {SPREAD:g} std (an expected non-effect: stays within it), **opposite** "
                  "when it exceeds it with the other sign.", "", findings_table(result["findings"])]
    conditions = list(dict.fromkeys(c for per_config in result["summary"].values() for c in per_config))
    for condition in conditions:
        parts += ["", f"## {condition}", ""]
        rows = []
        for config, per_config in result["summary"].items():
            if condition in per_config:
                seeds = sum(1 for e in result["runs"] if e["config"] == config and condition in e["final"])
                stats = per_config[condition]
                rows.append([config, seeds, *(f"{stats[m]['mean']:.3f} ± {stats[m]['std']:.3f}" if stats[m]["mean"] is not None else "—"
                                         for m in TABLE_METRICS)])
        parts.append(report.markdown_table(["configuration", "seeds", *TABLE_METRICS.values()], rows))
    return "\n".join(parts) + "\n"


def write_ablation(spec: SweepSpec, runs: list[SweepRun], out: Path) -> dict:
    """ablation.json, ablation.md, the plots and `rlvlm report` over the finished runs."""
    from rlvlm.evaluation.trace import SIGNALS, TRACE, read_jsonl

    traces = {run.label: read_jsonl(run.run_dir / "eval" / TRACE) for run in runs}
    signals = {run.label: read_jsonl(run.run_dir / "eval" / SIGNALS) for run in runs}
    result = ablation(runs, traces, signals)
    (out / "ablation.json").write_text(json.dumps(result, indent=1) + "\n")
    mean_runs = []
    for config in result["summary"]:
        seeds = [run for run in runs if run.config == config]
        label = f"{config} (mean of {len(seeds)} seed{'s' if len(seeds) > 1 else ''})"
        mean_runs.append(report.Run(label, out / config, mean_trace([traces[r.label] for r in seeds])))
    images = plots(mean_runs, out)
    report.make_report([run.run_dir for run in runs], out / "report")
    (out / "ablation.md").write_text(markdown(spec, result, runs, images, out))
    return result


# ============================================================================ entry point


def prepare(sweep_path: str | Path, out_dir: str | Path | None, overrides: dict[str, Any]) -> tuple[SweepSpec, Path, list[SweepRun]]:
    """Load, expand, validate and plan every run; raises RecipeError before anything is trained."""
    spec = load_sweep(sweep_path)
    out = Path(out_dir) if out_dir else Path("runs") / spec.name
    runs = expand(spec, Path(sweep_path), out, overrides)
    validate_runs(runs)
    return spec, out, [plan(run) for run in runs]


def sweep_cli(args, overrides: dict[str, Any]) -> int:
    if args.jobs < 1:
        raise RecipeError(f"--jobs must be at least 1, got {args.jobs}")
    spec, out, runs = prepare(args.recipe, args.output_dir, overrides)
    print(f"rlvlm sweep: {spec.name}, {len(runs)} runs in {out}")
    for run in runs:
        print(f"  {run.label:<32} {describe(run)}")
    from accelerate import PartialState

    run_all(runs, progress=not args.quiet, jobs=args.jobs)
    state = PartialState()
    state.wait_for_everyone()  # the main process writes each run's final trainer_state.json
    finished = [run for run in runs if is_finished(run)]
    if not finished:
        print("rlvlm sweep: no run finished; no ablation written")
        return 1
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_ablation(spec, finished, out)
    print(f"rlvlm sweep: {len(finished)}/{len(runs)} runs finished; {out / 'ablation.json'}, {out / 'ablation.md'}")
    for run in runs:
        if run not in finished:
            print(f"  not finished: {run.label} ({run.run_dir})")
    return 0 if len(finished) == len(runs) else 1
