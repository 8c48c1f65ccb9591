"""One evaluation's results: trace, AUROC and signal rows aggregated from per-example records, the
flat scalars loggers receive, and the compact console table."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from rlvlm.metrics import robustness_auroc, shortcut_signals, trace_row

log = logging.getLogger("rlvlm.evaluation")

SIGNAL_METRICS = ("think_words", "distinct_2", "identical_share", "empty_think_share", "format", "answered")
LOG_METRICS = ("accuracy", "consistency", "consistent_accuracy", "option_entropy", "p_correct", "reasoning_validity")
TABLE_COLUMNS = ["step", "id", "gold", "target", "pred", "correct", "consistent", "p_correct", "response"]


@dataclass
class EvalResult:
    step: int
    trace: list[dict] = field(default_factory=list)
    auroc: list[dict] = field(default_factory=list)
    signals: list[dict] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def log_dict(self) -> dict[str, float]:
        """Flat scalars `<dataset>/<condition>/<metric>` (the trainer's loggers add the `eval/` prefix)."""
        out = {}
        for row in self.trace:
            key = f"{row['dataset']}/{row['condition']}"
            for m in LOG_METRICS:
                if row[m] is not None:  # consistency is None when the scorer judged nothing
                    out[f"{key}/{m}"] = row[m]
            for cat, v in row["categories"].items():
                out[f"{key}/{cat}"] = v / row["n"] if row["n"] else 0.0
        for row in self.signals:
            key = f"{row['dataset']}/{row['condition']}"
            for m in SIGNAL_METRICS:
                if row.get(m) is not None:
                    out[f"{key}/{m}"] = row[m]
        if self.trace:
            out["runtime"] = self.seconds
        for row in self.auroc:
            key = f"{row['dataset']}/{row['condition']}"
            for m in ("auroc", "auroc_entropy"):
                if row.get(m) is not None:
                    out[f"{key}/{m}"] = row[m]
        return out


def aggregate(step: int, records: list[dict], base_records: list[dict] | None = None) -> EvalResult:
    """Trace, AUROC and signal rows from per-example records (in the items' order).

    `base_records`: base-condition records of this step evaluated earlier, used for the AUROC of
    perturbations evaluated now when base itself is not re-evaluated."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["condition"]), []).append(r)
    result = EvalResult(step=step, records=records)
    for (ds, cond), recs in groups.items():
        result.trace.append(trace_row(step, ds, cond, recs))
        signals = shortcut_signals([r["own_think"] for r in recs])
        signals["format"] = sum(r["format"] for r in recs) / len(recs)
        signals["answered"] = sum(r["pred"] is not None for r in recs) / len(recs)
        result.signals.append({"step": step, "dataset": ds, "condition": cond, "n": len(recs), **signals})
    unscored = sum(row["categories"]["unscored"] for row in result.trace)
    if unscored:
        log.warning("step %d: the faithfulness scorer gave no verdict on %d of %d examples (%.1f%%); they are "
                    "counted as unscored, not as inconsistent (a judge that failed or timed out?)",
                    step, unscored, len(records), 100 * unscored / len(records))
    bases = {ds: recs for (ds, cond), recs in groups.items() if cond == "base"}
    for r in base_records or []:
        if (r["dataset"], "base") not in groups:
            bases.setdefault(r["dataset"], []).append(r)
    for (ds, cond), recs in groups.items():
        if cond == "base" or ds not in bases:
            continue
        row = {"step": step, "dataset": ds, "condition": cond, **robustness_auroc(bases[ds], recs)}
        if row["note"]:
            log.info("AUROC %s/%s at step %d skipped: %s", ds, cond, step, row["note"])
        result.auroc.append(row)
    return result


def format_rows(rows: list[dict]) -> str:
    """A compact text table of trace rows (for the console); `unsc` counts the examples the faithfulness
    scorer gave no verdict on, and `cons`/`c_acc` are over the others (`-` when none was scored); `valid`:
    the reasoning validity (`-` for a dataset without a reader of its reasoning's facts)."""

    def number(v) -> str:
        return f"{v:>6.3f}" if v is not None else f"{'-':>6}"

    lines = [f"{'step':>6} {'dataset':<12} {'condition':<20} {'n':>5} {'acc':>6} {'cons':>6} {'c_acc':>6} "
             f"{'H':>6} {'p_cor':>6} {'valid':>6} {'unsc':>5}"]
    for r in rows:
        lines.append(
            f"{r['step']:>6} {r['dataset']:<12} {r['condition']:<20} {r['n']:>5} {number(r['accuracy'])} "
            f"{number(r['consistency'])} {number(r['consistent_accuracy'])} {number(r['option_entropy'])} "
            f"{number(r['p_correct'])} {number(r.get('reasoning_validity'))} {r['categories'].get('unscored', 0):>5}"
        )
    return "\n".join(lines)


def sample_tables(records: list[dict], step: int, n: int) -> dict[str, tuple[list[str], list[list]]]:
    """Up to `n` sample responses per (dataset, condition), keyed `eval/<dataset>/<condition>/samples`,
    as (columns, rows) for a wandb Table."""
    tables: dict[str, list[list]] = {}
    for r in records:
        rows = tables.setdefault(f"eval/{r['dataset']}/{r['condition']}/samples", [])
        if len(rows) < n:
            rows.append([step, r["id"], r["gold"], r["target"], r["pred"], r["correct"], r["consistent"], r["p_correct"], r["response"]])
    return {key: (TABLE_COLUMNS, rows) for key, rows in tables.items()}
