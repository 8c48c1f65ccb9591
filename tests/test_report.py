"""`rlvlm report`: plots and the Markdown report from traces, several runs side by side."""

import random

from rlvlm.evaluation.trace import append_jsonl, replace_jsonl
from rlvlm.metrics import trace_row
from rlvlm.perturb import CONDITIONS
from rlvlm.report import make_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(run_dir, seed, drift, layout="run"):
    """A run directory with a synthetic trace (via the real trace_row), signals and AUROC rows."""
    rng = random.Random(seed)
    d = run_dir / "eval" if layout == "run" else run_dir
    trace, signals, aurocs = [], [], []
    for k, step in enumerate([0, 40, 80, 120]):
        for c in CONDITIONS:
            p_ok = min(0.95, 0.4 + 0.1 * k - (0.2 if c.startswith("wrong") else 0.0))
            p_cons = max(0.05, 0.9 - drift * k)
            records = []
            for i in range(16):
                q = min(0.99, max(0.01, p_ok + rng.uniform(-0.1, 0.1)))
                records.append({"correct": rng.random() < p_ok, "consistent": rng.random() < p_cons,
                                "option_probs": [q, (1 - q) / 3, (1 - q) / 3, (1 - q) / 3], "p_correct": q})
            trace.append(trace_row(step, "shapes", c, records))
            signals.append({"step": step, "dataset": "shapes", "condition": c, "n": 16, "think_words": 30.0 - 4 * k,
                            "distinct_2": 0.8 - 0.1 * k, "identical_share": 0.05 * k, "empty_think_share": 0.0,
                            "format": 0.9, "answered": 1.0, "unjudged": 0})
            if c != "base":
                aurocs.append({"step": step, "dataset": "shapes", "condition": c, "n": 8, "n_stay_correct": 5,
                               "auroc": 0.7, "auroc_entropy": 0.6, "note": None})
    append_jsonl(d / "trace.jsonl", trace)
    replace_jsonl(d / "signals.jsonl", signals)
    replace_jsonl(d / "auroc.jsonl", aurocs)
    return run_dir


def test_report_two_runs_side_by_side(tmp_path):
    a = fake_run(tmp_path / "accuracy-only", 0, 0.05)
    b = fake_run(tmp_path / "faithful", 1, 0.2, layout="eval-out")  # a directory written by `rlvlm eval --out`
    report = make_report([a, b], tmp_path / "report")
    out = report.parent
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["conditions_shapes.png", "shortcuts_shapes.png", "tradeoff_shapes.png", "uncertainty_shapes.png"]
    for name in pngs:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    text = report.read_text()
    assert "accuracy-only" in text and "faithful" in text
    for heading in ("Last checkpoint, per condition", "Base condition over training", "Robustness AUROC", "Shortcut signals"):
        assert heading in text
    for name in pngs:
        assert f"]({name})" in text
    assert text.count("| faithful | 120 |") >= len(CONDITIONS)


def test_report_cli_and_errors(tmp_path, capsys):
    from rlvlm.cli import main

    run = fake_run(tmp_path / "run", 0, 0.1)
    assert main(["report", str(run)]) == 0
    assert (run / "report" / "report.md").stat().st_size > 0
    assert (run / "report" / "tradeoff_shapes.png").stat().st_size > 0
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    assert "no evaluation trace" in capsys.readouterr().err
    assert main(["report", str(run), "--bogus", "1"]) == 2


def test_report_without_signals_or_auroc(tmp_path):
    run = tmp_path / "bare"
    fake_run(run, 0, 0.1)
    (run / "eval" / "signals.jsonl").unlink()
    (run / "eval" / "auroc.jsonl").unlink()
    report = make_report([run])
    assert not (report.parent / "shortcuts_shapes.png").exists()
    assert "no AUROC rows" in report.read_text()


def test_report_single_checkpoint(tmp_path):
    rows = [trace_row(0, "shapes", "base", [{"correct": True, "consistent": False, "option_probs": [0.6, 0.4], "p_correct": 0.6}])]
    append_jsonl(tmp_path / "r" / "eval" / "trace.jsonl", rows)
    report = make_report([tmp_path / "r"])
    assert (report.parent / "tradeoff_shapes.png").stat().st_size > 0
