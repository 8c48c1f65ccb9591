"""Preflight: judges answer a probe and rewards survive one call on training rows, before any model is
built (`rlvlm train`, `rlvlm eval` exit 2 with a one-paragraph message otherwise); a resume is quiet."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest
import yaml

from rewards.judge import make_judge_reward
from test_judge import count, server, url  # noqa: F401  (the fake judge server fixture and its helpers)

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny-shapes.yaml"


def closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if anything resolves (builds, warm-starts or loads) a model."""
    import rlvlm.models

    built = []

    def resolve_model(*args, **kwargs):
        built.append(args)
        raise AssertionError("a model was built before the preflight stopped the command")

    monkeypatch.setattr(rlvlm.models, "resolve_model", resolve_model)
    return built


def run_cli(capsys, *argv) -> tuple[int, str]:
    from rlvlm.cli import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def error_line(err: str, command: str) -> str:
    """The command's one-paragraph error message (log lines may come before it)."""
    lines = [line for line in err.splitlines() if line.startswith(f"rlvlm {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------ JudgeReward.probe


def test_probe_says_why_a_judge_does_not_answer(server, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("RLVLM_TEST_PROBE_KEY", "sk-probe")
    ok = make_judge_reward(base_url=url(server, "ok"), model="judge-test", api_key_env="RLVLM_TEST_PROBE_KEY")
    before = count(server, "ok")
    assert ok.probe() is None
    assert count(server, "ok") == before + 1  # one real request, through the reward's own client
    mode, body, headers = server.requests[-1]
    assert body["model"] == "judge-test" and body["messages"][0]["role"] == "user"
    assert headers.get("Authorization") == "Bearer sk-probe"
    assert ok._client is not None
    ok.close()
    assert ok._client is None

    def reason(mode, **kw):
        judge = make_judge_reward(base_url=url(server, mode), timeout=0.2, max_retries=3, **kw)
        try:
            return judge.probe()
        finally:
            judge.close()

    assert reason("unauthorized").startswith("HTTP 401")
    assert reason("error").startswith("HTTP 500")
    assert reason("malformed").startswith("unreadable reply")
    assert "timeout" in reason("slow")
    assert count(server, "error") == 1  # a probe does not retry
    down = make_judge_reward(base_url=closed_port_url())
    assert down.probe().startswith("cannot connect") and "refused" in down.probe().lower()
    down.close()

    assert "cannot load local_model" in make_judge_reward(local_model=str(tmp_path / "nowhere")).probe()
    (tmp_path / "judge").mkdir()
    (tmp_path / "judge" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    local = make_judge_reward(local_model=str(tmp_path / "judge"))
    assert local.probe() is None and local._local is None  # checked, not loaded


# ------------------------------------------------------------------ judges: rlvlm train / rlvlm eval


def test_train_stops_before_the_model_when_a_judge_gate_is_down(tmp_path, capsys, no_model):
    base_url = closed_port_url()
    rewards = f"[{{name: accuracy, gate: [{{name: judge, kwargs: {{base_url: '{base_url}', timeout: 2}}}}]}}]"
    run = tmp_path / "run"
    code, err = run_cli(capsys, "train", RECIPE, "--output_dir", run, "--rewards", rewards,
                                 "--data.train.n", 8)
    assert code == 2, err
    message = error_line(err, "train")
    assert base_url + "/chat/completions" in message and "cannot connect" in message
    assert "the 'judge' gate of reward 'accuracy*judge'" in message
    assert "Start the judge server" in message and "base_url" in message and "switch the scorer" in message
    assert "Traceback" not in err
    assert not no_model
    assert not run.exists() or not any(run.iterdir())  # nothing written: the same command can run again


def test_train_probes_an_inline_evaluation_judge(tmp_path, capsys, no_model):
    base_url = closed_port_url()
    code, err = run_cli(capsys, "train", RECIPE, "--output_dir", tmp_path / "run", "--data.train.n", 8,
                           "--evaluation.faithfulness", "judge",
                           "--evaluation.faithfulness_kwargs", f"{{base_url: '{base_url}'}}")
    assert code == 2 and base_url in err and "evaluation.faithfulness" in err and "Traceback" not in err
    assert not no_model


def test_eval_stops_before_the_model_when_the_faithfulness_judge_is_down(tmp_path, capsys, no_model):
    base_url = closed_port_url()
    code, err = run_cli(capsys, "eval", "tiny", "--recipe", RECIPE, "--out", tmp_path / "eval",
                                 "--evaluation.faithfulness", "judge",
                                 "--evaluation.faithfulness_kwargs", f"{{base_url: '{base_url}', timeout: 2}}")
    assert code == 2, err
    assert base_url + "/chat/completions" in err and "evaluation.faithfulness" in err
    assert "Start the judge server" in err and "evaluation.faithfulness: rule" in err
    assert "Traceback" not in err and not no_model


def test_follower_stops_before_the_model_when_the_faithfulness_judge_is_down(tmp_path, capsys, no_model):
    """`rlvlm eval --follow RUN_DIR` reads the run's resolved recipe; its judge is probed first."""
    from rlvlm.recipe import load_recipe

    base_url = closed_port_url()
    run = tmp_path / "run"
    run.mkdir()
    recipe = load_recipe(RECIPE, {"evaluation.faithfulness": "judge", "evaluation.mode": "follow",
                                  "evaluation.faithfulness_kwargs": {"base_url": base_url, "timeout": 2}})
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe.resolved()))
    code, err = run_cli(capsys, "eval", "--follow", run, "--max_wait", 1)
    assert code == 2, err
    assert base_url + "/chat/completions" in error_line(err, "eval") and "Traceback" not in err
    assert not no_model and not (run / "eval").exists()


def test_judges_that_answer_pass_and_are_closed(server):  # noqa: F811
    from rlvlm.preflight import check_judges, recipe_judges
    from rlvlm.recipe import build_recipe

    judge_kwargs = {"base_url": url(server, "ok"), "model": "judge-test"}
    recipe = build_recipe({
        "rewards": [{"name": "accuracy", "gate": [{"name": "judge", "kwargs": judge_kwargs}]},
                    {"name": "judge", "kwargs": judge_kwargs, "weight": 0.1}],
        "evaluation": {"faithfulness": "judge", "faithfulness_kwargs": judge_kwargs},
    })
    judges = recipe_judges(recipe, training=True)
    assert [where for where, _ in judges] == [
        "the 'judge' gate of reward 'accuracy*judge'", "reward 'judge'", "evaluation.faithfulness"]
    before = count(server, "ok")
    check_judges(judges)
    assert count(server, "ok") == before + 1  # one probe per distinct endpoint
    assert all(j._client is None for _, j in judges)
    follow = build_recipe({"evaluation": {"mode": "follow", "faithfulness": "judge"}})
    assert recipe_judges(follow, training=True) == []  # training does not evaluate: the follower does


# ------------------------------------------------------------------ rewards


BAD_REWARDS = '''
import math

def raises(completions, **kwargs):
    return [1 / 0 for _ in completions]

def too_few(completions, **kwargs):
    return [1.0] * (len(completions) - 1)

def nan(completions, **kwargs):
    return [math.nan for _ in completions]

def text(completions, **kwargs):
    return ["1.0" for _ in completions]
'''


@pytest.mark.parametrize("name, expected", [
    ("raises", "ZeroDivisionError: division by zero"),
    ("too_few", "returned 3 values for 4 completions"),
    ("nan", "returned NaN"),
    ("text", "returned a non-number"),
])
def test_train_stops_before_the_model_on_a_failing_reward(name, expected, tmp_path, capsys, no_model):
    from rlvlm.preflight import PREFLIGHT_ERROR
    from rlvlm.recipe import load_recipe, parse_overrides
    from rlvlm.train import check_run_dir

    plugin = tmp_path / "plugin" / "my_rewards.py"
    plugin.parent.mkdir()
    plugin.write_text(BAD_REWARDS)
    run = tmp_path / "run"
    argv = ["--output_dir", str(run), "--data.train.n", "8",
            "--rewards", f"[{{name: format, weight: 0.1}}, {{name: '{plugin}:{name}', gate: [consistency]}}]"]
    code, err = run_cli(capsys, "train", RECIPE, *argv)
    assert code == 2, err
    error_file = run / PREFLIGHT_ERROR
    assert f"Reward '{name}*consistency'" in err and expected in err and str(error_file) in err
    assert "Traceback" not in err and not no_model
    saved = error_file.read_text()
    assert "Traceback (most recent call last)" in saved and expected.split(":")[0] in saved
    # the attempt left no run to protect: the same command may run again once the reward is fixed
    assert check_run_dir(load_recipe(RECIPE, parse_overrides(argv))) is False


def rows(n=4, probs=None):
    from rlvlm.data.load import load_examples
    from rlvlm.recipe import DatasetSpec
    from rlvlm.train import grpo_rows

    return grpo_rows(load_examples(DatasetSpec(name="shapes", split="train", n=n)), seed=0, probs=probs)


def test_synthetic_completions_score_as_intended(tmp_path):
    """The well-formed completion answers the gold option (pre-filled thinks included), the malformed
    one is neither accurate nor formatted; and sound rewards pass the preflight."""
    from rlvlm.composition import load_rewards
    from rlvlm.preflight import PREFLIGHT_ERROR, check_rewards, reward_call
    from rlvlm.recipe import RewardSpec

    sample = rows(8, probs={"base": 0.4, "wrong_think": 0.3, "stop_think": 0.3})
    assert any(r["think_prefix"] for r in sample) and any(not r["think_prefix"] for r in sample)
    reward_funcs, _ = load_rewards([RewardSpec(name="accuracy", gate=["consistency"]), RewardSpec(name="format")])
    completions, kwargs = reward_call(sample)
    assert len(completions) == 2 * len(sample) and all(len(v) == len(completions) for k, v in kwargs.items()
                                                       if k != "trainer_state")
    accuracy = reward_funcs[0].components[0][1]
    assert accuracy(completions, **kwargs) == [1.0, 0.0] * len(sample)
    (tmp_path / PREFLIGHT_ERROR).write_text("from an earlier attempt")
    check_rewards(reward_funcs, sample, tmp_path, n_rows=len(sample))
    assert not (tmp_path / PREFLIGHT_ERROR).exists()


def test_policy_and_judge_components_are_skipped_not_called(tmp_path, caplog):
    from rlvlm.composition import load_rewards
    from rlvlm.preflight import PreflightError, check_rewards
    from rlvlm.recipe import RewardSpec

    plugin = tmp_path / "r.py"
    plugin.write_text(BAD_REWARDS)
    down = {"base_url": closed_port_url()}
    reward_funcs, _ = load_rewards([
        RewardSpec(name="accuracy", gate=["counterfactual", {"name": "judge", "kwargs": down}]),
        RewardSpec(name="counterfactual"),
        RewardSpec(name=f"{plugin}:nan", gate=["counterfactual"]),
    ])
    judge = reward_funcs[0].components[2][1]
    with caplog.at_level(logging.INFO, logger="rlvlm"), pytest.raises(PreflightError, match=r"Reward 'nan\*counterfactual'.*NaN"):
        check_rewards(reward_funcs, rows(2), tmp_path)
    assert judge.stats["requests"] == 0  # the judge has its own probe
    assert "'counterfactual' scores with the policy" in caplog.text and "'judge' is a judge" in caplog.text


# ------------------------------------------------------------------ resume


@pytest.mark.slow
def test_resume_restores_the_weights_without_a_missing_keys_warning(tiny_model_path, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from rlvlm.recipe import build_recipe
    from rlvlm.train import train

    run = tmp_path / "run"
    noisy = tmp_path / "noisy.py"  # distinct rewards within a group: a step that changes the weights
    noisy.write_text("import random\n\ndef noisy(completions, **kwargs):\n"
                     "    return [random.random() for _ in completions]\n")
    raw = {
        "name": "resume",
        "model": {"name": "tiny", "seed": 0},
        "warm_start": {"enabled": False},
        "data": {"train": {"name": "shapes", "split": "train", "n": 8}},
        "rewards": [{"name": f"{noisy}:noisy"}],
        "evaluation": {"enabled": False},
        "max_steps": 1, "save_steps": 1, "num_generations": 2, "per_device_train_batch_size": 2,
        "max_completion_length": 8, "learning_rate": 1e-2, "report_to": "none", "disable_tqdm": True,
        "dataloader_num_workers": 0, "seed": 0, "output_dir": str(run),
    }
    train(build_recipe(raw), progress=False)
    checkpoint = run / "checkpoint-1"
    assert checkpoint.is_dir()

    records = []

    class Capture(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Capture(level=logging.WARNING)
    trainer_log = logging.getLogger("transformers.trainer")  # transformers' loggers do not propagate
    trainer_log.addHandler(handler)
    import rlvlm.train as rlvlm_train

    from transformers import TrainerCallback

    resumed = {}

    class Snapshot(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            # after the Trainer restored the checkpoint, before any step
            resumed["step"] = state.global_step
            resumed["weights"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    original = rlvlm_train.build_trainer

    def with_snapshot(*args, **kwargs):
        trainer = original(*args, **kwargs)
        trainer.add_callback(Snapshot())
        return trainer

    try:
        rlvlm_train.build_trainer = with_snapshot
        train(build_recipe({**raw, "max_steps": 2, "resume_from_checkpoint": "true"}), progress=False)
    finally:
        rlvlm_train.build_trainer = original
        trainer_log.removeHandler(handler)
    assert not [m for m in records if "missing keys" in m or "unexpected keys" in m], records
    assert resumed["step"] == 1 and (run / "checkpoint-2").is_dir()
    expected = AutoModelForImageTextToText.from_pretrained(checkpoint).state_dict()
    start = load_file(str(Path(tiny_model_path) / "model.safetensors"))
    assert set(resumed["weights"]) == set(expected)
    for key, value in resumed["weights"].items():
        assert torch.equal(value, expected[key]), key
    assert not torch.equal(start["lm_head.weight"], expected["lm_head.weight"])  # the step changed the weights
