"""The evaluator: prompt mechanics, trace schema, sharding, the training callback, resume, errors,
`rlvlm eval` reproducing the in-training rows. The tiny model is untrained: accuracy is chance, the
mechanics are what is tested."""

import json
import shutil
import sys
import types

import pytest
import yaml

from rlvlm.evaluation import evaluator as evaluator_module
from rlvlm.evaluation import items as items_module
from rlvlm.evaluation import trace
from rlvlm.evaluation.evaluator import Evaluator
from rlvlm.evaluation.generation import EvaluationError
from rlvlm.metrics import CATEGORY_KEYS, TRACE_KEYS
from rlvlm.perturb import STOP_THINK
from rlvlm.recipe import build_recipe

CONDS = ["base", "wrong_think"]

NOISY_REWARD = '''
import zlib

def noisy(completions, **kwargs):
    """Arbitrary but deterministic rewards, so GRPO advantages are non-zero and the weights move."""
    return [(zlib.crc32(str(c).encode()) % 97) / 97.0 for c in completions]
'''


def raw_recipe(output_dir, tmp_path, **extra) -> dict:
    reward = tmp_path / "noisy_reward.py"
    reward.write_text(NOISY_REWARD)
    raw = {
        "name": "t",
        "model": {"name": "tiny", "seed": 0},
        "warm_start": {"enabled": False},
        "data": {"train": {"name": "shapes", "split": "train", "n": 16}, "eval": [{"name": "shapes", "split": "eval", "n": 8}]},
        "rewards": [{"name": f"{reward}:noisy", "weight": 1.0}],
        "evaluation": {"conditions": CONDS, "max_new_tokens": 8, "batch_size": 16},
        "max_steps": 2,
        "save_steps": 1,
        "num_generations": 2,
        "per_device_train_batch_size": 4,
        "max_completion_length": 8,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": 0,
        "output_dir": str(output_dir),
    }
    raw.update(extra)
    return raw


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(tiny_model_path), AutoProcessor.from_pretrained(tiny_model_path)


def small_recipe(**evaluation):
    return build_recipe(
        {"data": {"eval": [{"name": "shapes", "split": "eval", "n": 4}]},
         "evaluation": {"conditions": CONDS, "max_new_tokens": 4, **evaluation}}
    )


def same_row(a: dict, b: dict, tol=1e-5) -> bool:
    """Equal rows, floats within tol."""
    if set(a) != set(b):
        return False
    for k in a:
        if isinstance(a[k], float) or isinstance(b[k], float):
            if abs(a[k] - b[k]) > tol:
                return False
        elif a[k] != b[k]:
            return False
    return True


def check_trace_rows(rows, n):
    for r in rows:
        assert tuple(r) == TRACE_KEYS
        assert isinstance(r["step"], int) and isinstance(r["n"], int) and r["n"] == n
        for k in ("accuracy", "consistency", "consistent_accuracy", "option_entropy", "p_correct"):
            assert isinstance(r[k], float)
        assert set(r["categories"]) == set(CATEGORY_KEYS) and sum(r["categories"].values()) == r["n"]
        assert r["consistent_accuracy"] == r["categories"]["consistent_correct"] / r["n"]


# ------------------------------------------------------------------ pure mechanics


@pytest.mark.parametrize(
    "prefix, completion, expected",
    [
        (None, "<think>x</think><answer>B</answer>", "<think>x</think><answer>"),
        (None, "<think>x</think><answer> (B)</answer>", "<think>x</think><answer> ("),
        (None, "<think>x</think> junk", "<think>x</think><answer>"),
        (None, "rambling", "rambling</think><answer>"),
        (STOP_THINK, "<answer>C</answer>", "<answer>"),
        (STOP_THINK, "junk", "<answer>"),
        ("<think>It is A.", " But no.</think><answer>D</answer>", " But no.</think><answer>"),
        ("<think>It is A.", " still going", " still going</think><answer>"),
    ],
)
def test_forced_answer_suffix(prefix, completion, expected):
    assert items_module.forced_answer_suffix(prefix, completion) == expected


def test_own_think():
    assert items_module.own_think(None, "abc") == "abc"
    assert items_module.own_think("<think>It is A.", "It is A. But B.") == "But B."
    assert items_module.own_think(STOP_THINK, "Okay let's see. This should be the final answer.") == ""
    assert items_module.own_think(None, None) == ""


def test_jsonl_append_is_whole_and_torn_lines_are_skipped(tmp_path):
    path = tmp_path / "eval" / "trace.jsonl"
    trace.append_jsonl(path, [{"a": 1}, {"a": 2}])
    with open(path, "a") as f:
        f.write('{"a": 3')  # a torn write
    assert trace.read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_plan_batches_cuts_by_padded_token_count_whatever_the_process_count():
    lengths = [50, 10, 30, 10, 90, 20, 70]
    # sorted by length: 10 (1), 10 (3), 20 (5), 30 (2), 50 (0), 70 (6), 90 (4); 10 new tokens each
    assert items_module.plan_batches(lengths, max_rows=3, max_tokens=10_000, new_tokens=10) == [[1, 3, 5], [2, 0, 6], [4]]
    # 3 rows of (20 + 10) fit in 100 tokens, a 4th of (30 + 10) would make 160; an item over the budget runs alone
    batches = items_module.plan_batches(lengths, max_rows=8, max_tokens=100, new_tokens=10)
    assert batches == [[1, 3, 5], [2], [0], [6], [4]]
    for batch in batches:
        assert len(batch) == 1 or len(batch) * (max(lengths[i] for i in batch) + 10) <= 100
    # grouped (the evaluator groups by condition, whose responses have similar lengths), then by length
    groups = ["b", "a", "b", "a", "a", "b", "a"]
    assert items_module.plan_batches(lengths, max_rows=4, max_tokens=10_000, new_tokens=10, groups=groups) == [[1, 3, 6, 4], [5, 2, 0]]
    # a group's longest prompt followed by the next group's short ones: the batch is as wide as its longest
    assert items_module.plan_batches([300, 20, 20], max_rows=16, max_tokens=700, new_tokens=10,
                                     groups=["a", "b", "b"]) == [[0, 1], [2]]


def test_prompt_lengths_count_image_tokens(tiny):
    _, processor = tiny
    evaluator = Evaluator.from_recipe(small_recipe(), processor)
    for item, length in zip(evaluator.items, evaluator.lengths):
        images = items_module.item_images(item)
        encoded = processor(text=[item["_text"]], images=[images], return_tensors="pt")
        assert length == encoded["input_ids"].shape[1]


# ------------------------------------------------------------------ one evaluation on the tiny model


def test_scoring_overlaps_the_next_generation(tiny, monkeypatch):
    """A batch is scored while the next one is generated (judge requests do not wait for the whole
    generation): the second generation waits for the first batch's scoring to have started."""
    import threading

    from rewards.faithfulness import consistency_reward

    model, processor = tiny
    evaluator = Evaluator.from_recipe(small_recipe(batch_size=2), processor)
    scored, waited = threading.Event(), []

    def scorer(completions, **kwargs):
        scored.set()
        return consistency_reward(completions, **kwargs)

    real_generate = evaluator_module.generate_transformers

    calls = []

    def generate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # without overlap, nothing is scored before the last batch is generated
            waited.append(scored.wait(timeout=20))
        return real_generate(*args, **kwargs)

    evaluator.scorer = scorer
    monkeypatch.setattr(evaluator_module, "generate_transformers", generate)
    result = evaluator.run(model, step=0)
    assert len(calls) == 4 and waited == [True]  # the first batch was being scored during the second generation
    assert len(result.records) == 8 and [r["id"] for r in result.records] == [it["id"] for it in evaluator.items]


def test_evaluator_schema_records_and_mode_restored(tiny, tmp_path):
    model, processor = tiny
    model.train()
    evaluator = Evaluator.from_recipe(small_recipe(), processor)
    result = evaluator.run(model, step=7)
    assert model.training  # train mode restored
    assert len(result.trace) == 2 and {r["condition"] for r in result.trace} == set(CONDS)
    check_trace_rows(result.trace, n=4)
    assert len(result.records) == 8
    for rec in result.records:
        assert sum(rec["option_probs"]) == pytest.approx(1.0, abs=1e-5) and len(rec["option_probs"]) == 4
        assert rec["response"].startswith(rec["target"] and "<think>" or "")
        for k in ("id", "condition", "response", "think", "answer", "correct", "consistent", "option_probs", "p_correct"):
            assert k in rec
    assert {(r["dataset"], r["condition"]) for r in result.signals} == {("shapes", c) for c in CONDS}
    assert [r["condition"] for r in result.auroc] == ["wrong_think"]

    trace.write_result(tmp_path, result)
    trace.write_result(tmp_path, result)  # a second write of the same step adds no row
    assert len(trace.read_jsonl(tmp_path / "trace.jsonl")) == 2
    assert len(trace.read_jsonl(trace.records_path(tmp_path, 7))) == 8
    assert len(trace.read_jsonl(tmp_path / "signals.jsonl")) == 2
    assert trace.todo(tmp_path, 7, evaluator.keys()) == set()
    assert trace.todo(tmp_path, 8, evaluator.keys()) == evaluator.keys()


def test_letter_probabilities_read_from_the_generation_equal_the_teacher_forced_pass(tiny):
    """Where the response writes its own <answer>, the probabilities come from the generation's raw
    logits at that step (before logits processors); they equal the teacher-forced pass's."""
    from rlvlm.evaluation.generation import generate_transformers, option_probabilities

    model, processor = tiny
    evaluator = Evaluator.from_recipe(small_recipe(), processor)
    answer = processor.tokenizer.encode("<answer>", add_special_tokens=False)
    # an untrained model writes no <answer>: a sequence bias (a logits processor) makes it write it first
    model.generation_config.sequence_bias = {tuple(answer[: k + 1]): 100.0 for k in range(len(answer))}
    try:
        completions, probs = generate_transformers(model, processor, evaluator.items, 4, {})
    finally:
        model.generation_config.sequence_bias = None
    assert all(c.startswith("<answer>") for c in completions)
    assert all(p is not None and len(p) == 4 for p in probs)
    forced = option_probabilities(model, processor, evaluator.items, completions, {})
    for read, teacher in zip(probs, forced):
        assert read == pytest.approx(teacher, abs=1e-4)
    # without <answer> in the response there is no such step: left to the teacher-forced pass
    completions, probs = generate_transformers(model, processor, evaluator.items, 4, {})
    assert all(p is None for c, p in zip(completions, probs) if "<answer>" not in c)


def test_answer_step_finds_the_token_boundary(tiny):
    from rlvlm.evaluation.generation import answer_step

    tok = tiny[1].tokenizer
    ids = tok.encode("<think>x</think><answer>B</answer>", add_special_tokens=False)
    j = answer_step(tok, ids, "<think>x</think><answer>")
    assert tok.decode(ids[:j]) == "<think>x</think><answer>" and tok.decode(ids[j:j + 1]) == "B"
    assert answer_step(tok, ids, "<think>x</think>nothing<answer>") is None
    assert answer_step(tok, ids[:j], "<think>x</think><answer>") is None  # cut before the letter


def test_sharded_run_equals_one_process(tiny, monkeypatch):
    """Two simulated processes: equal numbers of forward passes, gathered outputs identical to one process."""
    model, processor = tiny
    recipe = small_recipe(batch_size=3)  # 8 items -> 3 batches -> 2 per process (one padded)
    evaluator = Evaluator.from_recipe(recipe, processor)
    items = evaluator.items
    single = evaluator._forward(model, list(range(len(items))))

    calls = {0: 0, 1: 0}
    real_generate = evaluator_module.generate_transformers
    shards = {}

    class Gathered(Exception):
        pass

    def gather(rank, obj):
        shards[rank] = obj
        if rank == 1:
            raise Gathered  # process 1's share is collected; process 0 then sees both
        return shards[0] + shards[1]

    def run(rank):
        monkeypatch.setattr(evaluator_module, "process_state", lambda: types.SimpleNamespace(num_processes=2, process_index=rank, is_main_process=rank == 0))

        def counting(*a, **k):
            calls[rank] += 1
            return real_generate(*a, **k)

        monkeypatch.setattr(evaluator_module, "generate_transformers", counting)
        monkeypatch.setattr(evaluator_module, "all_gather", lambda obj: gather(rank, obj))
        return evaluator._forward(model, list(range(len(items))))

    with pytest.raises(Gathered):
        run(1)
    sharded = run(0)
    assert calls[0] == calls[1] == 2
    assert len(shards[0]) == 5 and len(shards[1]) == 3  # batches 0 and 2 / batch 1 (its padded repeat dropped)
    assert sharded == single


def test_cli_eval_missing_model_exits_2(tmp_path, capsys):
    from rlvlm.cli import main

    assert main(["eval", str(tmp_path / "no-such-checkpoint")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "tiny", "--conditions", "base,nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err


# ------------------------------------------------------------------ the callback, driven directly


def _drive(cb, model, processor, step=0):
    from transformers import TrainerControl, TrainerState

    state = TrainerState()
    state.global_step = step
    cb.on_train_begin(None, state, TrainerControl(), model=model, processing_class=processor)


def test_callback_error_is_logged_or_stops(tiny, tmp_path, monkeypatch):
    from rlvlm.callbacks import EvalCallback

    model, processor = tiny

    def boom(*a, **k):
        raise RuntimeError("simulated evaluator failure")

    monkeypatch.setattr(evaluator_module, "generate_transformers", boom)
    recipe = small_recipe()
    cb = EvalCallback(recipe, run_dir=tmp_path / "log")
    _drive(cb, model, processor)  # default on_error: log -> no exception
    assert "simulated evaluator failure" in cb.history[-1]["error"]
    assert not (tmp_path / "log" / "eval" / "trace.jsonl").exists()
    assert trace.read_jsonl(tmp_path / "log" / "eval" / "errors.jsonl")[0]["step"] == 0

    cb = EvalCallback(small_recipe(on_error="stop"), run_dir=tmp_path / "stop")
    with pytest.raises(EvaluationError, match="simulated evaluator failure"):
        _drive(cb, model, processor)


def test_callback_skips_evaluated_steps_and_logs_wandb_table(tiny, tmp_path, monkeypatch):
    from rlvlm.callbacks import EvalCallback

    model, processor = tiny
    logged = []

    class FakeTable:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data

    fake = types.SimpleNamespace(Table=FakeTable, run=types.SimpleNamespace(log=logged.append))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cb = EvalCallback(small_recipe(n_samples_table=2), run_dir=tmp_path)
    _drive(cb, model, processor, step=0)
    _drive(cb, model, processor, step=0)  # already in the trace: skipped
    rows = trace.read_jsonl(tmp_path / "eval" / "trace.jsonl")
    assert len(rows) == 2 and len(cb.history) == 1
    (payload,) = logged
    assert payload["train/global_step"] == 0
    table = payload["eval/shapes/wrong_think/samples"]
    assert len(table.data) == 2 and "response" in table.columns


# ------------------------------------------------------------------ a real GRPO run


class CaptureLogs:
    """Stands in for a logging integration (wandb, tensorboard): records what on_log receives."""

    def __init__(self):
        self.logs = []

    def __getattr__(self, name):  # every other callback event is a no-op
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs or {})))


@pytest.fixture(scope="module")
def trained_run(tiny_model_path, tmp_path_factory):
    """max_steps 2, save_steps 1: evaluations at steps 0, 1, 2 (it trains: only slow tests use it; the
    evaluator and its callback on the untrained tiny model are tested above, in the default run)."""
    from rlvlm.train import build_trainer

    tmp = tmp_path_factory.mktemp("grpo")
    raw = raw_recipe(tmp / "run", tmp)
    trainer = build_trainer(build_recipe(raw), progress=False)
    capture = CaptureLogs()
    trainer.add_callback(capture)
    trainer.train()
    return {"dir": tmp / "run", "raw": raw, "tmp": tmp, "logs": capture.logs}


@pytest.mark.slow
def test_callback_fires_at_step0_and_each_save(trained_run):
    eval_dir = trained_run["dir"] / "eval"
    rows = trace.read_jsonl(eval_dir / "trace.jsonl")
    assert sorted({r["step"] for r in rows}) == [0, 1, 2]
    assert len(rows) == 3 * len(CONDS)
    assert len({(r["step"], r["dataset"], r["condition"]) for r in rows}) == len(rows)
    check_trace_rows(rows, n=8)
    for step in (0, 1, 2):
        assert len(trace.read_jsonl(trace.records_path(eval_dir, step))) == 8 * len(CONDS)
    # the evaluated model is the one being trained: the option distributions move between step 0 and 2
    probs = {s: [r["option_probs"] for r in trace.read_jsonl(trace.records_path(eval_dir, s))] for s in (0, 2)}
    assert probs[0] != probs[2]
    # loggers got eval/<dataset>/<condition>/<metric> (as eval_..., which HF integrations rename) at each step
    eval_logs = {step: logs for step, logs in trained_run["logs"] if any(k.startswith("eval_") for k in logs)}
    assert sorted(eval_logs) == [0, 1, 2]
    for step, logs in eval_logs.items():
        row = next(r for r in rows if r["step"] == step and r["condition"] == "base")
        assert logs["eval_shapes/base/accuracy"] == row["accuracy"]
        assert "eval_shapes/wrong_think/option_entropy" in logs and "eval_shapes/base/think_words" in logs


@pytest.mark.slow
def test_resume_never_duplicates_or_drops(trained_run, tmp_path):
    from rlvlm.train import build_trainer

    run = tmp_path / "run"
    shutil.copytree(trained_run["dir"], run)
    trace_file = run / "eval" / "trace.jsonl"
    original = trace.read_jsonl(trace_file)
    # a crash after checkpoint-2 was saved but before its evaluation was written
    trace.replace_jsonl(trace_file, [r for r in original if r["step"] != 2])
    raw = raw_recipe(run, trained_run["tmp"], max_steps=3)
    trainer = build_trainer(build_recipe(raw), progress=False, resume_from=str(run / "checkpoint-2"))
    trainer.train(resume_from_checkpoint=str(run / "checkpoint-2"))
    rows = trace.read_jsonl(trace_file)
    keys = [(r["step"], r["dataset"], r["condition"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert sorted({r["step"] for r in rows}) == [0, 1, 2, 3]
    assert [r["step"] for r in rows if r["step"] < 2] == [r["step"] for r in original if r["step"] < 2]
    # step 2, re-evaluated from the resumed checkpoint, should give the same rows
    redone = {r["condition"]: r for r in rows if r["step"] == 2}
    for r in original:
        if r["step"] == 2:
            assert same_row(redone[r["condition"]], r), "resume must restore the checkpoint's weights"


@pytest.mark.slow
def test_cli_eval_of_checkpoint_reproduces_training_rows(trained_run, tmp_path):
    from rlvlm.cli import main

    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(trained_run["raw"]))
    out = tmp_path / "out"
    ckpt = trained_run["dir"] / "checkpoint-2"
    assert main(["eval", str(ckpt), "--recipe", str(recipe_path), "--out", str(out), "--quiet"]) == 0
    cli_rows = trace.read_jsonl(out / "trace.jsonl")
    train_rows = [r for r in trace.read_jsonl(trained_run["dir"] / "eval" / "trace.jsonl") if r["step"] == 2]
    assert len(cli_rows) == len(train_rows) == len(CONDS)
    by_cond = {r["condition"]: r for r in train_rows}
    for r in cli_rows:
        assert r["step"] == 2  # from the checkpoint-N name
        assert same_row(r, by_cond[r["condition"]])
    assert len(trace.read_jsonl(trace.records_path(out, 2))) == 8 * len(CONDS)
    # a second call finds the step done and adds nothing
    assert main(["eval", str(ckpt), "--recipe", str(recipe_path), "--out", str(out), "--quiet",
                 "--conditions", "base"]) == 0
    assert len(trace.read_jsonl(out / "trace.jsonl")) == len(CONDS)
    json.dumps(cli_rows)  # plain JSON types only


@pytest.mark.slow
def test_two_processes_write_the_rows_of_one(tiny_model_path, tmp_path):
    """`accelerate launch` (launch/accelerate/multi_cpu.yaml, 2 gloo CPU processes) gives the rows and
    records of a one-process run; only one process writes."""
    import subprocess
    from pathlib import Path

    from rlvlm.cli import main

    root = Path(__file__).resolve().parent.parent
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"eval": [{"name": "shapes", "split": "eval", "n": 6}]},
        "evaluation": {"conditions": ["base", "wrong_caption"], "max_new_tokens": 8, "batch_size": 4},
    }))
    assert main(["eval", str(tiny_model_path), "--recipe", str(recipe), "--out", str(tmp_path / "one"), "--quiet"]) == 0
    import socket

    with socket.socket() as sock:  # a free port: other jobs on the machine may hold accelerate's default
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(root / "launch/accelerate/multi_cpu.yaml"),
           "--main_process_port", str(port),
           "-m", "rlvlm", "eval", str(tiny_model_path), "--recipe", str(recipe), "--out", str(tmp_path / "two"), "--quiet"]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "one" / "trace.jsonl").read_text() == (tmp_path / "two" / "trace.jsonl").read_text()
    assert trace.records_path(tmp_path / "one", 0).read_text() == trace.records_path(tmp_path / "two", 0).read_text()
    assert done.stdout.count("rlvlm eval:") == 1


def test_callback_evaluates_every_kth_save_and_the_last(tiny, tmp_path):
    from transformers import TrainerControl, TrainerState

    from rlvlm.callbacks import EvalCallback

    model, processor = tiny
    cb = EvalCallback(small_recipe(every=2), run_dir=tmp_path)
    for step in (2, 4, 6, 7):  # saves every 2 steps; the run ends at 7
        state = TrainerState(global_step=step, max_steps=7, save_steps=2)
        cb.on_save(None, state, TrainerControl(), model=model, processing_class=processor)
    assert sorted({r["step"] for r in trace.trace_rows(tmp_path / "eval")}) == [4, 7]


def test_evaluator_and_counterfactual_reward_read_the_same_option_probabilities(tiny):
    """One definition of the option probabilities (rewards.option_probs): for the same prompt and
    response, the evaluator's teacher-forced pass and the counterfactual scorer's forced answer agree."""
    from rewards.counterfactual import forced_option_probs, make_counterfactual_reward
    from rlvlm.evaluation.generation import option_probabilities
    from rlvlm.evaluation.items import forced_answer_suffix

    model, processor = tiny
    evaluator = Evaluator.from_recipe(small_recipe(), processor)
    items = [it for it in evaluator.items if it["condition"] == "base"]
    completions = [f"<think>It is ({'ABCD'[k % 4]}).</think><answer>{'ABCD'[k % 4]}</answer>" for k in range(len(items))]
    ours = option_probabilities(model, processor, items, completions, {})
    # the scorer's text: the rendered prompt, then the response's think, closed, and <answer>
    texts = [processor.apply_chat_template(it["prompt"], add_generation_prompt=True, tokenize=False)
             + c.split("<answer>")[0] + "<answer>" for it, c in zip(items, completions)]
    assert texts == [it["_text"] + forced_answer_suffix(None, c) for it, c in zip(items, completions)]
    theirs = forced_option_probs(model, processor, texts, [[it["image"]] for it in items],
                                 [len(it["options"]) for it in items])
    for a, b in zip(ours, theirs):
        assert len(a) == len(b) == 4 and a == pytest.approx(b, abs=1e-5)
    for it, c, a in zip(items, completions, ours):  # one at a time, through the reward itself
        (single,) = option_probabilities(model, processor, [it], [c], {})
        assert single == pytest.approx(a, abs=1e-5)
        logged = {}
        reward = make_counterfactual_reward(checks=("original",)).bind(model, processor, collective=False)
        reward([c], options=[it["options"]], prompts=[it["prompt"]], image=[it["image"]],
               log_metric=logged.__setitem__)
        chosen = "ABCD".index(c[-10])
        assert logged["counterfactual/original_p_answer"] == pytest.approx(single[chosen], abs=1e-5)


def test_reasoning_validity_in_records_and_trace():
    """A think whose conclusion follows its own stated facts is valid, one that drifts from them is not,
    whatever the answer; a dataset without a reader of its reasoning has no validity (None)."""
    from rlvlm.data import shapes
    from rlvlm.evaluation.results import aggregate
    from rlvlm.evaluation.scoring import score
    from rlvlm.perturb import perturb

    examples = shapes.generate_examples("eval", 8, seed=2)
    items = [{**perturb(ex, "base", seed=i), "dataset": "shapes"} for i, ex in enumerate(examples)]
    completions = []
    for i, ex in enumerate(examples):
        gold = ex["answer"]
        cot = shapes.cot_for(ex, gold, seed=i)
        if i % 2:  # the same facts, a conclusion that does not follow from them
            other = "ABCD"[("ABCD".index(gold) + 1) % len(ex["options"])]
            cot = cot.replace(f"So the answer is ({gold})", f"So the answer is ({other})")
        completions.append(f"<think>{cot}</think><answer>{gold}</answer>")
    records = score(items, completions, [[0.25] * 4] * len(items))
    assert [r["reasoning_valid"] for r in records] == [i % 2 == 0 for i in range(8)]
    assert all(r["implied"] == ex["answer"] for r, ex in zip(records, examples))
    row = aggregate(0, records).trace[0]
    assert row["reasoning_validity"] == 0.5 and row["accuracy"] == 1.0
    free = [{**it, "source": "custom"} for it in items]
    records = score(free, completions, [[0.25] * 4] * len(items))
    assert all(r["reasoning_valid"] is None for r in records)
    assert aggregate(0, records).trace[0]["reasoning_validity"] is None
