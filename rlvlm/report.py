"""`rlvlm report RUN_DIR [RUN_DIR ...]`: plots and tables from evaluation traces, runs side by side.

Reads each run's `eval/trace.jsonl` (or a directory written by `rlvlm eval --out`, holding
`trace.jsonl` itself) plus, when present, `signals.jsonl` and `auroc.jsonl`, and writes per dataset:

- `tradeoff_<dataset>.png`: accuracy against consistency under the base condition, one point per
  checkpoint, one line per run (the accuracy-faithfulness trajectory);
- `conditions_<dataset>.png`: accuracy and consistency per condition over steps (a column per run);
- `uncertainty_<dataset>.png`: option entropy and P(correct) per condition over steps;
- `shortcuts_<dataset>.png`: think length, distinct-2 and identical-think share over steps;

and `report.md` with the tables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from rlvlm.evaluation.trace import AUROC, SIGNALS, TRACE, read_jsonl
from rlvlm.perturb import CONDITIONS

log = logging.getLogger("rlvlm.report")

UNIT_METRICS = {"accuracy", "consistency", "consistent_accuracy", "p_correct", "distinct_2", "identical_share"}


class ReportError(ValueError):
    """A run directory without an evaluation trace."""


@dataclass
class Run:
    label: str
    path: Path
    trace: list[dict]
    signals: list[dict] = field(default_factory=list)
    auroc: list[dict] = field(default_factory=list)

    def datasets(self) -> list[str]:
        return sorted({r["dataset"] for r in self.trace})

    def conditions(self, dataset: str) -> list[str]:
        have = {r["condition"] for r in self.trace if r["dataset"] == dataset}
        return [c for c in CONDITIONS if c in have] + sorted(have - set(CONDITIONS))

    def series(self, dataset: str, condition: str, metric: str, rows: list[dict] | None = None):
        """(steps, values) sorted by step; the last row wins for a repeated step."""
        by_step = {}
        for r in self.trace if rows is None else rows:
            if r["dataset"] == dataset and r["condition"] == condition and r.get(metric) is not None:
                by_step[r["step"]] = r[metric]
        steps = sorted(by_step)
        return steps, [by_step[s] for s in steps]

    def last(self, rows: list[dict], dataset: str) -> dict[str, dict]:
        """condition -> the row of the last evaluated step."""
        out = {}
        for r in sorted(rows, key=lambda r: r["step"]):
            if r["dataset"] == dataset:
                out[r["condition"]] = r
        return out


def eval_dir_of(path: Path) -> Path:
    path = Path(path)
    for candidate in (path / "eval", path):
        if (candidate / TRACE).is_file():
            return candidate
    raise ReportError(f"'{path}' holds no evaluation trace ({path / 'eval' / TRACE} or {path / TRACE}).")


def load_run(path: Path, label: str | None = None) -> Run:
    d = eval_dir_of(path)
    trace = read_jsonl(d / TRACE)
    if not trace:
        raise ReportError(f"The trace {d / TRACE} is empty.")
    return Run(label or Path(path).resolve().name, Path(path), trace, read_jsonl(d / SIGNALS), read_jsonl(d / AUROC))


def _labels(paths: list[Path]) -> list[str]:
    names = [Path(p).resolve().name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{Path(p).resolve().parent.name}/{Path(p).resolve().name}" for p in paths]


# ============================================================================ plots


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed); imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def palette(n: int):
    """`n` line colours, tab10's cycled, in the order runs are plotted."""
    plt = pyplot()
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def slug(text: str) -> str:
    """`text` (a dataset name) as a file-name part: anything but letters, digits, '-_.' becomes '_'."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def plot_tradeoff(runs: list[Run], dataset: str, path: Path, condition: str = "base") -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for run, color in zip(runs, palette(len(runs))):
        acc_steps, accs = run.series(dataset, condition, "accuracy")
        cons_by_step = dict(zip(*run.series(dataset, condition, "consistency")))
        # a checkpoint whose consistency could not be scored (judge down) has no point here
        steps = [s for s in acc_steps if s in cons_by_step]
        acc = [a for s, a in zip(acc_steps, accs) if s in cons_by_step]
        cons = [cons_by_step[s] for s in steps]
        if not steps:
            continue
        ax.plot(cons, acc, "-", color=color, alpha=0.5, lw=1.5)
        ax.scatter(cons, acc, color=color, s=[30 + 60 * i / max(len(steps) - 1, 1) for i in range(len(steps))],
                   zorder=3, label=run.label, edgecolor="black", linewidth=0.5)
        ax.annotate(f"step {steps[0]}", (cons[0], acc[0]), textcoords="offset points", xytext=(6, -10), fontsize=8, color=color)
        if len(steps) > 1:
            ax.annotate(f"step {steps[-1]}", (cons[-1], acc[-1]), textcoords="offset points", xytext=(6, 4), fontsize=8, color=color)
            if (cons[-2], acc[-2]) != (cons[-1], acc[-1]):
                ax.annotate("", xy=(cons[-1], acc[-1]), xytext=(cons[-2], acc[-2]),
                            arrowprops=dict(arrowstyle="->", color=color, lw=1.5))
    ax.set_xlabel("consistency (think conclusion = answer)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
    ax.grid(alpha=0.3)
    ax.set_title(f"Accuracy-consistency trajectory — {dataset} / {condition}\n(one point per checkpoint; larger = later)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _grid(runs: list[Run], dataset: str, metrics: list[tuple[str, str]], path: Path, title: str,
          rows_of=lambda run: None, conditions=None) -> Path:
    """A row per metric, a column per run, a line per condition."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    conds = conditions or list(dict.fromkeys(c for run in runs for c in run.conditions(dataset)))
    colors = dict(zip(conds, palette(len(conds))))
    fig, axes = plt.subplots(len(metrics), len(runs), figsize=(4.6 * len(runs) + 2.0, 3.0 * len(metrics)),
                             squeeze=False, sharey="row", sharex="col")
    for j, run in enumerate(runs):
        for i, (metric, label) in enumerate(metrics):
            ax = axes[i][j]
            for c in conds:
                steps, values = run.series(dataset, c, metric, rows_of(run))
                if steps:
                    style = "-" if c == "base" else "--" if c.startswith("wrong") else "-."
                    ax.plot(steps, values, style, marker="o", ms=3, color=colors[c], lw=2.2 if c == "base" else 1.3, label=c)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if metric in UNIT_METRICS:
                ax.set_ylim(-0.03, 1.03)
            elif metric in ("option_entropy", "think_words"):
                ax.set_ylim(bottom=0)
            if i == 0:
                ax.set_title(run.label, fontsize=10)
            if j == 0:
                ax.set_ylabel(label)
            if i == len(metrics) - 1:
                ax.set_xlabel("training step")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.suptitle(f"{title} — {dataset}")
    fig.tight_layout(rect=(0, 0, 1 - 1.9 / fig.get_figwidth(), 1))
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1 - 1.85 / fig.get_figwidth(), 0.5), fontsize=8, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_conditions(runs: list[Run], dataset: str, path: Path) -> Path:
    return _grid(runs, dataset, [("accuracy", "accuracy"), ("consistency", "consistency")], path,
                 "Accuracy and consistency per condition over training")


def plot_uncertainty(runs: list[Run], dataset: str, path: Path) -> Path:
    return _grid(runs, dataset, [("option_entropy", "option entropy (nats)"), ("p_correct", "P(correct option)")], path,
                 "Option-letter uncertainty over training")


def plot_shortcuts(runs: list[Run], dataset: str, path: Path) -> Path | None:
    if not any(run.signals for run in runs):
        return None
    return _grid(runs, dataset, [("think_words", "think length (words)"), ("distinct_2", "distinct-2"),
                                 ("identical_share", "identical-think share")], path,
                 "Shortcut signals (model-written think)", rows_of=lambda run: run.signals)


# ============================================================================ markdown


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; floats written to three decimals, None as an em dash."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(runs: list[Run], images: dict[str, list[Path]], out: Path) -> str:
    parts = ["# rlvlm evaluation report", ""]
    parts.append(markdown_table(["run", "path", "checkpoints evaluated", "last step", "datasets"],
                                [[r.label, str(r.path), len({x["step"] for x in r.trace}), max(x["step"] for x in r.trace),
                                  ", ".join(r.datasets())] for r in runs]))
    datasets = sorted({d for r in runs for d in r.datasets()})
    for ds in datasets:
        parts += ["", f"## {ds}", ""]
        for img in images.get(ds, []):
            parts.append(f"![{img.stem}]({img.relative_to(out).as_posix()})")
        parts += ["", "### Last checkpoint, per condition", "",
                  "Categories: C/I = consistent/inconsistent (think conclusion vs answer), ✓/✗ = correct/incorrect; "
                  "unscored: no faithfulness verdict (the judge failed), left out of consistency and cons. acc.", ""]
        rows = []
        for run in runs:
            for c, r in run.last(run.trace, ds).items():
                cats = r["categories"]
                rows.append([run.label, r["step"], c, r["n"], r["accuracy"], r["consistency"], r["consistent_accuracy"],
                             r["option_entropy"], r["p_correct"], cats["consistent_correct"], cats["inconsistent_correct"],
                             cats["consistent_incorrect"], cats["inconsistent_incorrect"], cats.get("unscored", 0)])
        parts.append(markdown_table(["run", "step", "condition", "n", "accuracy", "consistency", "cons. acc.", "option H",
                                     "P(correct)", "C+✓", "I+✓", "C+✗", "I+✗", "unscored"], rows))
        parts += ["", "### Base condition over training", ""]
        rows = []
        for run in runs:
            for r in sorted((x for x in run.trace if x["dataset"] == ds and x["condition"] == "base"), key=lambda x: x["step"]):
                rows.append([run.label, r["step"], r["accuracy"], r["consistency"], r["consistent_accuracy"],
                             r["option_entropy"], r["p_correct"]])
        parts.append(markdown_table(["run", "step", "accuracy", "consistency", "cons. acc.", "option H", "P(correct)"], rows)
                     if rows else "_no base condition evaluated_")
        parts += ["", "### Robustness AUROC at the last checkpoint", "",
                  "Base P(correct) (and, for comparison, negative base option entropy) as the score for staying "
                  "correct under each perturbation, over the examples correct under base.", ""]
        rows = []
        for run in runs:
            for c, r in run.last(run.auroc, ds).items():
                rows.append([run.label, r["step"], c, r["n"], r["n_stay_correct"], r["auroc"], r["auroc_entropy"], r.get("note") or ""])
        parts.append(markdown_table(["run", "step", "condition", "base-correct", "stay correct", "AUROC P(correct)",
                                     "AUROC −entropy", "note"], rows) if rows else "_no AUROC rows (base condition not evaluated)_")
        parts += ["", "### Shortcut signals at the last checkpoint", ""]
        rows = []
        for run in runs:
            for c, r in run.last(run.signals, ds).items():
                rows.append([run.label, r["step"], c, r["think_words"], r["distinct_2"], r["identical_share"],
                             r.get("empty_think_share"), r.get("format"), r.get("answered")])
        parts.append(markdown_table(["run", "step", "condition", "think words", "distinct-2", "identical share",
                                     "empty think", "format", "answered"], rows) if rows else "_no signals recorded_")
    return "\n".join(parts) + "\n"


# ============================================================================ entry points


def make_report(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Write the plots and `report.md` for one or more runs; returns the report's path."""
    paths = [Path(p) for p in run_dirs]
    runs = [load_run(p, label) for p, label in zip(paths, _labels(paths))]
    out = Path(out) if out else (paths[0] / "report" if len(paths) == 1 else Path("rlvlm-report"))
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, list[Path]] = {}
    for ds in sorted({d for r in runs for d in r.datasets()}):
        have = [r for r in runs if ds in r.datasets()]
        s = slug(ds)
        cond = "base" if any(r.series(ds, "base", "accuracy")[0] for r in have) else have[0].conditions(ds)[0]
        images[ds] = [
            plot_tradeoff(have, ds, out / f"tradeoff_{s}.png", cond),
            plot_conditions(have, ds, out / f"conditions_{s}.png"),
            plot_uncertainty(have, ds, out / f"uncertainty_{s}.png"),
        ]
        shortcut = plot_shortcuts(have, ds, out / f"shortcuts_{s}.png")
        if shortcut is not None:
            images[ds].append(shortcut)
    report = out / "report.md"
    report.write_text(markdown(runs, images, out))
    return report


def report_cli(args) -> int:
    from rlvlm.recipe import RecipeError

    try:
        report = make_report(args.run_dirs, args.out)
    except ReportError as e:
        raise RecipeError(str(e)) from None
    print(f"rlvlm report: {report}")
    for png in sorted(report.parent.glob("*.png")):
        print(f"  {png}")
    return 0
