"""`rlvlm sweep`: expansion of a sweep recipe, validation before any training, skip and resume on a
re-run, and the ablation files."""

import json
import statistics
from pathlib import Path

import pytest
import yaml

from rlvlm.evaluation.trace import read_jsonl, replace_jsonl
from rlvlm.metrics import trace_row
from rlvlm.recipe import RecipeError
from rlvlm.sweep import METRICS, expand, load_sweep, plan, prepare, set_aside

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny-shapes.yaml"
PAPER = ROOT / "recipes" / "paper-ablation-tiny.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The smallest run of the embedded default that trains, saves and evaluates.
TINY = {
    "warm_start": {"enabled": False},
    "data": {"train": {"name": "shapes", "n": 16}, "eval": [{"name": "shapes", "split": "eval", "n": 4}]},
    "evaluation": {"conditions": ["base", "wrong_caption"], "max_new_tokens": 8, "batch_size": 8},
    "num_generations": 2,
    "per_device_train_batch_size": 4,
    "max_completion_length": 8,
    "logging_steps": 1,
    "report_to": "none",
}
FAITHFUL = [{"name": "accuracy", "weight": 1.0, "gate": ["consistency"]}, {"name": "format", "weight": 0.1}]
AUGMENT = {"probs": {"wrong_caption": 0.1, "correct_caption": 0.1, "wrong_think": 0.1, "correct_think": 0.1}}


def write_sweep(path: Path, configs: dict, seeds=(0, 1), overrides=None, **extra) -> Path:
    sweep = {"name": "tiny-sweep", "base": str(RECIPE), "seeds": list(seeds), "overrides": overrides or TINY,
             "configs": configs, **extra}
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*")) if p.is_file()}


# ============================================================================ the sweep recipe


def test_paper_ablation_expands_to_twelve_runs(tmp_path):
    spec, out, runs = prepare(PAPER, tmp_path / "out", {})
    assert spec.name == "paper-ablation-tiny" and spec.seeds == [0, 1, 2]
    assert [r.label for r in runs] == [f"{c}/seed{s}" for c in ("baseline", "augment", "faithful", "augment_faithful")
                                       for s in (0, 1, 2)]
    for run in runs:
        recipe = run.recipe
        assert recipe.grpo["seed"] == run.seed and run.state == "new"
        assert run.run_dir == tmp_path / "out" / run.config / f"seed{run.seed}"
        assert recipe.model.name == "tiny" and recipe.warm_start.enabled  # the base recipe, shared warm-start
        rewards = [(r.name, r.weight, [g.name for g in r.gate]) for r in recipe.rewards]
        gate = ["consistency"] if "faithful" in run.config else []
        assert rewards == [("accuracy", 1.0, gate), ("format", 0.1, [])]
        assert recipe.augmentation.probs == (AUGMENT["probs"] if "augment" in run.config else {})
    assert len({r.recipe.warm_start.model_dump_json() for r in runs}) == 1
    assert not (tmp_path / "out").exists()


def test_overrides_merge_into_sections_and_the_command_line_wins(tmp_path):
    sweep = write_sweep(tmp_path / "s.yaml", {
        "a": {"evaluation": {"max_new_tokens": 16}, "learning_rate": 1e-4},
        "b": {"augmentation": AUGMENT},
        "c": {"augmentation": {}},  # an empty mapping clears the section
    }, seeds=[3], overrides={**TINY, "augmentation": {"probs": {"wrong_think": 0.5}}})
    spec = load_sweep(sweep)
    a, b, c = expand(spec, sweep, tmp_path / "out", {"evaluation.batch_size": 2, "max_steps": 7})
    # common < config < per run < command line; sections merge key by key
    assert a.recipe.evaluation.max_new_tokens == 16 and a.recipe.evaluation.conditions == ["base", "wrong_caption"]
    assert a.recipe.evaluation.batch_size == 2 and b.recipe.evaluation.max_new_tokens == 8
    base_learning_rate = yaml.safe_load(RECIPE.read_text())["learning_rate"]
    assert a.recipe.grpo["learning_rate"] == 1e-4 and b.recipe.grpo["learning_rate"] == base_learning_rate
    assert a.recipe.augmentation.probs == {"wrong_think": 0.5}
    assert b.recipe.augmentation.probs == {"wrong_think": 0.5, **AUGMENT["probs"]}
    assert c.recipe.augmentation.probs == {}
    assert {r.recipe.grpo["max_steps"] for r in (a, b, c)} == {7}
    assert a.recipe.grpo["seed"] == 3 and a.recipe.grpo["output_dir"] == str(tmp_path / "out" / "a" / "seed3")
    with pytest.raises(RecipeError, match="'seed'.*sweep's `seeds`"):
        expand(spec, sweep, tmp_path / "out", {"seed": 1})


@pytest.mark.parametrize(
    "configs, extra, needle",
    [
        ({"a": {}}, {"seed": [0]}, "Unknown key 'seed' in the sweep"),
        ({"a": {}, "b": {}, "c": {}, "d": {"evaluation": {"max_new_tokenz": 8}}}, {},
         "configuration 'd': Unknown key 'evaluation.max_new_tokenz'"),
        ({"a": {}}, {"base": "no-such-recipe.yaml"}, "base recipe 'no-such-recipe.yaml'"),
        ({"a": {"rewards": [{"name": "nope"}]}}, {}, "Unknown reward 'nope'"),
        ({"a": {}, "b": {"augmentation": {"probs": {"wrong": 0.1}}}}, {}, "unknown augmentation condition(s) ['wrong']"),
    ],
)
def test_malformed_sweep_exits_2_before_any_model_is_built(tmp_path, configs, extra, needle, rlvlm_cli, monkeypatch):
    sweep = write_sweep(tmp_path / "sweep.yaml", configs, **extra)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("RLVLM_CACHE", str(cache))
    code, _, err = rlvlm_cli("sweep", sweep, "--output_dir", tmp_path / "out")
    assert code == 2, err[-2000:]
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not any(cache.iterdir())


def test_sweep_help(rlvlm_cli):
    code, out, _ = rlvlm_cli("sweep", "--help")
    assert code == 0 and "ablation.json" in out


# ============================================================================ run states and the ablation


def fake_run(run_dir: Path, datasets: list[str], conditions: list[str], quality: float, steps=(0, 5, 10)) -> None:
    """A finished run without training: a trace written through the real trace_row, and the final
    trainer_state.json that train() leaves."""
    rows = []
    for k, step in enumerate(steps):
        for d in datasets:
            for c in conditions:
                right = round(4 * min(1.0, quality + 0.1 * k))
                records = [{"correct": i < right, "consistent": i % 2 == 0, "option_probs": [0.7, 0.1, 0.1, 0.1],
                            "p_correct": 0.7 if i < right else 0.1} for i in range(4)]
                rows.append(trace_row(step, d, c, records))
    replace_jsonl(run_dir / "eval" / "trace.jsonl", rows)
    (run_dir / "trainer_state.json").write_text(json.dumps({"global_step": steps[-1], "max_steps": steps[-1]}))


def test_ablation_of_finished_runs_with_two_eval_datasets(tmp_path, capsys):
    from rlvlm.cli import main

    overrides = {**TINY, "data": {"train": {"name": "shapes", "n": 16},
                                  "eval": [{"name": "shapes", "split": "eval", "n": 4}, {"name": "shapes", "split": "test", "n": 4}]}}
    sweep = write_sweep(tmp_path / "sweep.yaml", {"baseline": {}, "faithful": {"rewards": FAITHFUL}},
                        seeds=[0, 1, 2], overrides=overrides)
    out = tmp_path / "out"
    quality = {("baseline", 0): 0.25, ("baseline", 1): 0.5, ("baseline", 2): 0.5,
               ("faithful", 0): 0.0, ("faithful", 1): 0.25, ("faithful", 2): 0.75}
    for (config, seed), q in quality.items():
        fake_run(out / config / f"seed{seed}", ["shapes-eval", "shapes-test"], ["base", "wrong_caption"], q)
    before = snapshot(out)

    assert main(["sweep", str(sweep), "--output_dir", str(out), "--max_steps", "10", "--quiet"]) == 0
    assert capsys.readouterr().out.count("finished: skipped") == 6
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k in before} == before  # the runs are untouched

    result = json.loads((out / "ablation.json").read_text())
    assert set(result) == {"runs", "summary", "findings"}
    # on the first eval dataset: every baseline seed gains 0.25 accuracy; entropy and consistency never move
    effects = {(e["claim"], e["verdict"]): (e["values"], e["mean"], e["std"]) for e in result["findings"]}
    assert effects == {("RL raises accuracy", "reproduced"): ([0.25] * 3, 0.25, 0.0),
                       ("RL lowers option entropy", "not reproduced"): ([0.0] * 3, 0.0, 0.0),
                       ("while consistency falls", "not reproduced"): ([0.0] * 3, 0.0, 0.0),
                       ("the faithfulness reward pulls consistency back up", "not reproduced"): ([0.0] * 3, 0.0, 0.0)}
    keys = ["shapes-eval/base", "shapes-eval/wrong_caption", "shapes-test/base", "shapes-test/wrong_caption"]
    for entry, (config, seed) in zip(result["runs"], quality):
        assert set(entry) == {"config", "seed", "run_dir", "final"}
        assert (entry["config"], entry["seed"], entry["run_dir"]) == (config, seed, str(out / config / f"seed{seed}"))
        assert list(entry["final"]) == keys
        last = [r for r in read_jsonl(out / config / f"seed{seed}" / "eval" / "trace.jsonl") if r["step"] == 10]
        for row in last:
            assert entry["final"][f"{row['dataset']}/{row['condition']}"] == {m: row[m] for m in METRICS}
    assert list(result["summary"]) == ["baseline", "faithful"]
    for config in ("baseline", "faithful"):
        assert list(result["summary"][config]) == keys
        for key in keys:
            for m in METRICS:
                values = [e["final"][key][m] for e in result["runs"] if e["config"] == config]
                assert result["summary"][config][key][m] == pytest.approx(
                    {"mean": statistics.mean(values), "std": statistics.stdev(values)})
    # baseline seeds end at accuracy 0.5, 0.75, 0.75 (quality + 0.2 at the last step, in quarters)
    assert result["summary"]["baseline"]["shapes-eval/base"]["accuracy"]["mean"] == pytest.approx(2 / 3)

    md = (out / "ablation.md").read_text()
    assert "| 1 | RL raises accuracy | base accuracy (baseline: last − step 0) | +0.250 ± 0.000 | 3 | reproduced |" in md
    assert "## shapes-eval/wrong_caption" in md and "| baseline | 3 | 0.667 ± 0.144 |" in md
    for name in ("tradeoff", "robustness", "conditions"):
        for ds in ("shapes-eval", "shapes-test"):
            png = out / f"{name}_{ds}.png"
            assert png.read_bytes().startswith(PNG_MAGIC) and f"]({png.name})" in md
    assert (out / "report" / "report.md").is_file()


def test_run_states_from_what_the_directory_holds(tmp_path):
    sweep = write_sweep(tmp_path / "sweep.yaml", {"a": {}}, seeds=[0, 1, 2, 3])
    new, finished, resume, restart = expand(load_sweep(sweep), sweep, tmp_path / "out", {"max_steps": 10})
    fake_run(finished.run_dir, ["shapes"], ["base", "wrong_caption"], 0.5)
    fake_run(resume.run_dir, ["shapes"], ["base", "wrong_caption"], 0.5, steps=(0, 5))
    for n, complete in ((5, True), (10, False)):  # checkpoint-10 was cut off before its trainer_state.json
        ckpt = resume.run_dir / f"checkpoint-{n}"
        ckpt.mkdir()
        (ckpt / "model.safetensors").write_text("")
        if complete:
            (ckpt / "trainer_state.json").write_text("{}")
    fake_run(restart.run_dir, ["shapes"], ["base"], 0.5)  # a condition missing at the last step
    assert [plan(r).state for r in (new, finished, resume, restart)] == ["new", "finished", "resume", "restart"]
    assert resume.checkpoint == resume.run_dir / "checkpoint-5"

    assert set_aside(restart.run_dir) == tmp_path / "out" / "a" / "seed3.incomplete-1"
    restart.run_dir.mkdir()
    assert set_aside(restart.run_dir).name == "seed3.incomplete-2"
    assert (tmp_path / "out" / "a" / "seed3.incomplete-1" / "eval" / "trace.jsonl").is_file()


# ============================================================================ end to end


@pytest.mark.slow
def test_tiny_sweep_trains_skips_and_resumes(tiny_model_path, tmp_path, capsys):
    """2 configurations x 2 seeds of 2 GRPO steps: the ablation matches the traces; a re-run touches
    nothing; a run cut off after checkpoint-1 is resumed from it."""
    from rlvlm.cli import main

    sweep = write_sweep(tmp_path / "sweep.yaml", {"baseline": {}, "augment_faithful": {"rewards": FAITHFUL, "augmentation": AUGMENT}})
    out = tmp_path / "out"
    args = ["sweep", str(sweep), "--output_dir", str(out), "--max_steps", "2", "--save_steps", "1", "--quiet"]
    assert main(args) == 0

    result = json.loads((out / "ablation.json").read_text())
    assert [(e["config"], e["seed"]) for e in result["runs"]] == [("baseline", 0), ("baseline", 1),
                                                                   ("augment_faithful", 0), ("augment_faithful", 1)]
    for entry in result["runs"]:
        trace = read_jsonl(Path(entry["run_dir"]) / "eval" / "trace.jsonl")
        assert sorted((r["step"], r["condition"]) for r in trace) == [(s, c) for s in (0, 1, 2) for c in ("base", "wrong_caption")]
        assert entry["final"] == {r["condition"]: {m: r[m] for m in METRICS} for r in trace if r["step"] == 2}
    for config, per_config in result["summary"].items():
        for condition, stats in per_config.items():
            values = [e["final"][condition]["accuracy"] for e in result["runs"] if e["config"] == config]
            assert stats["accuracy"] == pytest.approx({"mean": statistics.mean(values), "std": statistics.stdev(values)})
    assert (out / "augment_faithful" / "seed0" / "augmentation_mix.json").is_file()
    for name in ("ablation.md", "tradeoff_shapes.png", "robustness_shapes.png", "conditions_shapes.png", "report/report.md"):
        assert (out / name).stat().st_size > 0

    # a re-run skips every finished run
    runs = [out / c / f"seed{s}" for c in ("baseline", "augment_faithful") for s in (0, 1)]
    before = {run: snapshot(run) for run in runs}
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("finished: skipped") == 4
    assert {run: snapshot(run) for run in runs} == before

    # baseline/seed1 as a run killed after checkpoint-1: no final state, no checkpoint-2, no step-2 rows
    cut = out / "baseline" / "seed1"
    (cut / "trainer_state.json").unlink()
    for path in sorted((cut / "checkpoint-2").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (cut / "checkpoint-2").rmdir()
    trace = cut / "eval" / "trace.jsonl"
    replace_jsonl(trace, [r for r in read_jsonl(trace) if r["step"] < 2])
    kept = snapshot(cut / "checkpoint-1")
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "baseline/seed1" in printed and "resume from checkpoint-1" in printed and printed.count("finished: skipped") == 3
    assert snapshot(cut / "checkpoint-1") == kept and (cut / "checkpoint-2" / "trainer_state.json").is_file()
    assert sorted((r["step"], r["condition"]) for r in read_jsonl(trace)) == [(s, c) for s in (0, 1, 2) for c in ("base", "wrong_caption")]
    assert not list(cut.parent.glob("seed1.incomplete-*"))
    for run in runs:
        if run != cut:
            assert snapshot(run) == before[run]


@pytest.mark.slow
def test_sweep_jobs_train_runs_as_concurrent_processes(tiny_model_path, tmp_path, capsys):
    """--jobs 2: each run is an `rlvlm train` process with one thread of the two, its output in
    DIR/<config>/seed<N>.log; the ablation is written over them as over in-process runs."""
    from rlvlm.cli import main

    sweep = write_sweep(tmp_path / "sweep.yaml", {"baseline": {}, "faithful": {"rewards": FAITHFUL}}, seeds=(0,))
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--output_dir", str(out), "--max_steps", "2", "--save_steps", "1", "--quiet", "--jobs", "2"]) == 0
    result = json.loads((out / "ablation.json").read_text())
    assert [(e["config"], e["seed"]) for e in result["runs"]] == [("baseline", 0), ("faithful", 0)]
    for config in ("baseline", "faithful"):
        run = out / config / "seed0"
        trace = read_jsonl(run / "eval" / "trace.jsonl")
        assert sorted((r["step"], r["condition"]) for r in trace) == [(s, c) for s in (0, 1, 2) for c in ("base", "wrong_caption")]
        assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 2
        gates = [g["name"] for g in yaml.safe_load((run / "recipe.yaml").read_text())["rewards"][0]["gate"]]
        assert gates == (["consistency"] if config == "faithful" else [])
        assert (out / config / "seed0.log").is_file()


@pytest.mark.parametrize("expect, mean, std, n, expected", [
    (+1, 0.10, 0.02, 3, "reproduced"),
    (+1, 0.10, 0.06, 3, "not reproduced"),  # within 2 std of nothing
    (+1, -0.10, 0.02, 3, "opposite"),
    (-1, -0.10, 0.02, 3, "reproduced"),
    (0, 0.01, 0.02, 3, "reproduced"),  # "barely": within the spread
    (0, 0.10, 0.02, 3, "not reproduced"),
    (+1, 0.10, 0.0, 1, "not judged"),  # one seed has no spread
])
def test_a_finding_is_reproduced_only_beyond_the_seed_spread(expect, mean, std, n, expected):
    from rlvlm.sweep import verdict

    assert verdict(expect, mean, std, n) == expected


def test_findings_pair_configurations_by_seed_and_read_shortcut_signals():
    from rlvlm.sweep import findings

    def rows(step_values: dict[int, dict]) -> list[dict]:
        return [{"step": step, "dataset": "shapes", "condition": "base", **values} for step, values in step_values.items()]

    runs = {("faithful", seed): rows({0: {"think_words": 30.0}, 10: {"think_words": 30.0 + seed}}) for seed in (0, 1, 2)}
    runs |= {("augment_faithful", seed): rows({0: {"think_words": 30.0}, 10: {"think_words": 10.0 + seed}}) for seed in (0, 1, 2)}
    runs[("augment_faithful", 3)] = rows({0: {"think_words": 30.0}, 10: {"think_words": 5.0}})  # no faithful seed 3: unpaired
    (effect,) = findings(runs)
    assert (effect["finding"], effect["metric"], effect["values"], effect["verdict"]) == (4, "think_words", [-20.0] * 3, "reproduced")


def test_concurrent_jobs_share_the_cores_and_the_gpus():
    from rlvlm.sweep import job_env

    assert [job_env(slot, 2, 2, []) for slot in (0, 1)] == [{"OMP_NUM_THREADS": "1"}] * 2
    assert job_env(0, 3, 16, [])["OMP_NUM_THREADS"] == "5"
    assert job_env(0, 4, 2, [])["OMP_NUM_THREADS"] == "1"  # never zero threads
    gpus = ["0", "1", "2", "3"]
    assert [job_env(slot, 2, 16, gpus)["CUDA_VISIBLE_DEVICES"] for slot in (0, 1)] == ["0,2", "1,3"]
    assert [job_env(slot, 4, 16, gpus)["CUDA_VISIBLE_DEVICES"] for slot in range(4)] == gpus
    assert [job_env(slot, 3, 16, ["0", "1"])["CUDA_VISIBLE_DEVICES"] for slot in range(3)] == ["0", "1", "0"]


def test_jobs_below_one_exit_2(tmp_path, rlvlm_cli):
    sweep = write_sweep(tmp_path / "sweep.yaml", {"baseline": {}})
    code, _, err = rlvlm_cli("sweep", str(sweep), "--jobs", "0", "--output_dir", str(tmp_path / "out"))
    assert code == 2 and "--jobs must be at least 1" in err and not (tmp_path / "out").exists()
