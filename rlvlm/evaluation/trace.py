"""The evaluation trace on disk: where an evaluation's rows live and how they are written and read.

    RUN_DIR/eval/trace.jsonl            one row per (step, dataset, condition); the commit point
    RUN_DIR/eval/records/step_N.jsonl   every response of step N, parsed and scored
    RUN_DIR/eval/auroc.jsonl            base P(correct) -> stays correct under each perturbation
    RUN_DIR/eval/signals.jsonl          shortcut-CoT signals per condition
    RUN_DIR/eval/errors.jsonl           evaluations that failed (and training went on)

The report, the sweep and the follower read a run through this module alone.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("rlvlm.evaluation")

TRACE = "trace.jsonl"
AUROC = "auroc.jsonl"
SIGNALS = "signals.jsonl"
ERRORS = "errors.jsonl"
RECORDS = "records"


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file ([] when absent); an unreadable line (a torn write) is skipped with a warning."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s:%d is not valid JSON; skipped", path, n)
    return rows


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append whole lines in one write and fsync, so a killed run never leaves half an evaluation."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_jsonl(path: Path, rows: list[dict]) -> None:
    """Rewrite a JSONL file atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _merge(path: Path, rows: list[dict], key) -> None:
    new = {key(r) for r in rows}
    replace_jsonl(path, [r for r in read_jsonl(path) if key(r) not in new] + rows)


def _step_key(row: dict) -> tuple[int, str, str]:
    return row["step"], row["dataset"], row["condition"]


def records_path(eval_dir: Path, step: int) -> Path:
    return Path(eval_dir) / RECORDS / f"step_{step:06d}.jsonl"


def trace_rows(eval_dir: Path) -> list[dict]:
    return read_jsonl(Path(eval_dir) / TRACE)


def evaluated(eval_dir: Path) -> set[tuple[int, str, str]]:
    """(step, dataset, condition) keys already in the trace."""
    return {_step_key(r) for r in trace_rows(eval_dir)}


def todo(eval_dir: Path, step: int, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (dataset, condition) pairs of `keys` that the trace does not hold at `step`."""
    done = evaluated(eval_dir)
    return {k for k in keys if (step, *k) not in done}


def base_records(eval_dir: Path, step: int) -> list[dict]:
    return [r for r in read_jsonl(records_path(eval_dir, step)) if r.get("condition") == "base"]


def write_result(eval_dir: Path, result) -> None:
    """Records, AUROC and signals of one evaluation (`rlvlm.evaluation.results.EvalResult`) first, each
    replaced atomically, the trace last in one append: the trace is the commit point, so a crash in
    between leaves the step to be evaluated again, and a row already in the trace is never added twice."""
    eval_dir = Path(eval_dir)
    _merge(records_path(eval_dir, result.step), result.records, lambda r: (r["dataset"], r["condition"]))
    if result.auroc:
        _merge(eval_dir / AUROC, result.auroc, _step_key)
    _merge(eval_dir / SIGNALS, result.signals, _step_key)
    done = evaluated(eval_dir)
    append_jsonl(eval_dir / TRACE, [r for r in result.trace if _step_key(r) not in done])


def record_error(eval_dir: Path, step: int, error: str, when: float) -> None:
    append_jsonl(Path(eval_dir) / ERRORS, [{"step": step, "error": error, "time": when}])
