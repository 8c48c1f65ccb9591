"""Rewards composed from recipes: registered names, plugins by path, gates, kwargs, loud failures, logging."""

from __future__ import annotations

import json
import logging
import math
import socket
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlvlm.composition import Reward, bind_policy, load_reward, load_rewards
from rlvlm.recipe import RecipeError, RewardSpec, build_recipe, load_recipe

OPTS = ["red", "blue", "green", "yellow"]


def resp(think, answer):
    return f"<think>{think}</think><answer>{answer}</answer>"


# consistent+correct, consistent+wrong, inconsistent+correct, inconsistent+wrong, unformatted
COMPLETIONS = [
    resp("It is blue. So the answer is (B) blue.", "B"),
    resp("It is red. So the answer is (A) red.", "A"),
    resp("It is red. So the answer is (A) red.", "B"),
    resp("It is blue. So the answer is (B) blue.", "C"),
    "B",
]
N = len(COMPLETIONS)
COLUMNS = dict(answer=["B"] * N, options=[OPTS] * N, think_prefix=[None] * N)
ACCURACY = [1.0, 0.0, 1.0, 0.0, 0.0]
CONSISTENCY = [1.0, 1.0, 0.0, 0.0, 0.0]


def spec(**kw):
    return RewardSpec.model_validate(kw)


def call(reward, completions=COMPLETIONS, **extra):
    metrics = {}
    out = reward(completions, log_metric=lambda k, v: metrics.setdefault(k, v), **{**COLUMNS, **extra})
    return out, metrics


# ------------------------------------------------------------------ names and registry


def test_registered_names_and_weights():
    funcs, weights = load_rewards([spec(name="accuracy"), spec(name="format", weight=0.1), spec(name="rule")])
    assert [f.__name__ for f in funcs] == ["accuracy", "format", "consistency"]
    assert weights == [1.0, 0.1, 1.0]
    assert call(funcs[0])[0] == ACCURACY
    assert call(funcs[2])[0] == CONSISTENCY


def test_trl_sees_a_sync_function_with_a_readable_name():
    from trl.trainer.utils import get_callable_name, is_async_callable

    reward = load_reward(spec(name="accuracy", gate=["consistency"]))
    assert get_callable_name(reward) == "accuracy*consistency"
    assert not is_async_callable(reward)


def test_unknown_reward_lists_the_registered_ones():
    with pytest.raises(RecipeError, match=r"Unknown reward 'acuracy'.*'accuracy'.*'counterfactual'.*'judge'"):
        load_rewards([spec(name="acuracy")])
    with pytest.raises(RecipeError, match="Unknown reward 'nope'"):
        load_rewards([spec(name="accuracy", gate=["nope"])])


def test_duplicate_entries_are_refused():
    with pytest.raises(RecipeError, match="both named 'accuracy'"):
        load_rewards([spec(name="accuracy"), spec(name="accuracy", weight=2.0)])


def test_recipe_kwargs_are_bound_and_win_over_columns():
    reward = load_reward(spec(name="accuracy", kwargs={"answer": "A"}))
    assert call(reward)[0] == [0.0, 1.0, 0.0, 0.0, 0.0]


# ------------------------------------------------------------------ gates


def test_gate_multiplies_and_logs_components():
    reward = load_reward(spec(name="accuracy", gate=["consistency"]), log_consistency=True)
    out, metrics = call(reward)
    assert out == [a * c for a, c in zip(ACCURACY, CONSISTENCY)] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert metrics["rewards/accuracy*consistency/accuracy/mean"] == pytest.approx(0.4)
    assert metrics["rewards/accuracy*consistency/consistency/mean"] == pytest.approx(0.4)  # the consistency rate
    assert metrics["consistency_rate"] == pytest.approx(0.4)


def test_only_the_first_entry_logs_the_consistency_rate():
    funcs, _ = load_rewards([spec(name="accuracy"), spec(name="format", weight=0.1)])
    assert "consistency_rate" in call(funcs[0])[1]
    assert call(funcs[1])[1] == {}
    assert call(funcs[0])[1].keys() == {"consistency_rate"}  # ungated: TRL logs rewards/accuracy/mean itself


UNSURE = "def unsure(completions, **kw):\n    return [None if i % 2 == 0 else 1.0 for i in range(len(completions))]\n"


def test_a_gate_that_cannot_score_follows_its_on_failure_policy(tmp_path):
    plugin = tmp_path / "gates.py"
    plugin.write_text(UNSURE)  # no verdict on completions 0, 2, 4 (0 and 2 are correct answers)
    reward = load_reward(spec(name="accuracy", gate=[f"{plugin}:unsure"]))
    assert reward.__name__ == "accuracy*unsure"
    out, metrics = call(reward)
    # default `ungated`: a correct answer keeps its accuracy when the judge failed (not 0: TRL's nansum
    # would count a None entry as 0, i.e. as a wrong answer)
    assert out == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert metrics["rewards/accuracy*unsure/unsure/mean"] == 1.0  # over the values that exist
    assert metrics["rewards/accuracy*unsure/unsure/unscored"] == 3 / 5
    zero = load_reward(spec(name="accuracy", gate=[{"name": f"{plugin}:unsure", "on_failure": "zero"}]))
    assert call(zero)[0] == [0.0, 0.0, 0.0, 0.0, 0.0]
    # an unreadable gold answer makes accuracy None, and so the gated value
    out, _ = call(reward, answer=["Z"] * N)
    assert out == [None] * N


def test_a_gate_that_scores_nothing_for_too_long_asks_to_stop(tmp_path):
    plugin = tmp_path / "down.py"
    plugin.write_text("def down(completions, **kw):\n    return [None] * len(completions)\n")
    reward = load_reward(spec(name="accuracy", gate=[{"name": f"{plugin}:down", "max_failed_batches": 3}]))
    call(reward)
    call(reward)
    assert reward.stop_reason is None
    call(reward)
    assert "scored nothing in 3 generation batches in a row" in reward.stop_reason
    # a batch with one verdict resets the count
    (tmp_path / "gates.py").write_text(UNSURE)
    flaky = load_reward(spec(name="accuracy", gate=[{"name": f"{tmp_path / 'gates.py'}:unsure", "max_failed_batches": 1}]))
    for _ in range(3):
        call(flaky)
    assert flaky.stop_reason is None
    never = load_reward(spec(name="accuracy", gate=[{"name": f"{plugin}:down", "max_failed_batches": 0}]))
    for _ in range(20):
        call(never)
    assert never.stop_reason is None


def test_several_gates_and_gate_forms_in_yaml(tmp_path):
    plugin = tmp_path / "half.py"
    plugin.write_text("def half(completions, scale=0.5, **kw):\n    return [scale] * len(completions)\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        rewards:
          - {{name: accuracy, gate: consistency, weight: 1.0}}
          - name: format
            weight: 0.1
            gate:
              - consistency
              - {{name: "{plugin}:half", kwargs: {{scale: 0.25}}}}
    """))
    r = load_recipe(recipe)
    assert [g.name for g in r.rewards[0].gate] == ["consistency"]
    funcs, weights = load_rewards(r.rewards)
    assert [f.__name__ for f in funcs] == ["accuracy*consistency", "format*consistency*half"]
    assert weights == [1.0, 0.1]
    assert call(funcs[1])[0] == [0.25, 0.25, 0.0, 0.0, 0.0]  # format × consistency × 0.25


def test_gate_spec_errors_name_the_problem(tmp_path):
    with pytest.raises(RecipeError, match=r"rewards\[0\]\.gate\.0\.kwarg"):
        build_recipe({"rewards": [{"name": "accuracy", "gate": [{"name": "judge", "kwarg": {}}]}]})
    with pytest.raises(RecipeError, match="rewards"):
        build_recipe({"rewards": [{"name": "accuracy", "gate": 3}]})


# ------------------------------------------------------------------ loud failures


@pytest.mark.parametrize(
    "body, message",
    [
        ("return [float('nan')] * len(completions)", "Reward 'bad' returned NaN"),
        ("return [1.0] * (len(completions) - 1)", "Reward 'bad' returned 4 values for 5 completions"),
        ("return 1.0", "Reward 'bad' returned float values"),
        ("return ['yes'] * len(completions)", "Reward 'bad' returned a non-number"),
    ],
)
def test_bad_rewards_fail_loudly_with_their_name(tmp_path, body, message):
    plugin = tmp_path / "bad_plugin.py"
    plugin.write_text(f"def bad(completions, **kwargs):\n    {body}\n")
    with pytest.raises(ValueError, match=message):
        call(load_reward(spec(name=f"{plugin}:bad")))
    gated = load_reward(spec(name="accuracy", gate=[f"{plugin}:bad"]))
    with pytest.raises(ValueError, match=message.replace("'bad'", r"'bad' \(in 'accuracy\*bad'\)")):
        call(gated)


# ------------------------------------------------------------------ plugins


def test_plugin_by_file_path_and_by_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def length_penalty(completions, limit=10, **kwargs):\n"
        "    return [-1.0 if len(str(c)) > limit else 0.0 for c in completions]\n"
    )
    by_path = load_reward(spec(name=f"{tmp_path / 'my_rewards.py'}:length_penalty", kwargs={"limit": 40}))
    assert by_path.__name__ == "length_penalty"
    assert call(by_path)[0] == [-1.0, -1.0, -1.0, -1.0, 0.0]
    monkeypatch.syspath_prepend(str(tmp_path))
    by_module = load_reward(spec(name="my_rewards:length_penalty"))
    assert call(by_module)[0] == [-1.0] * 4 + [0.0]


def test_plugin_errors_are_recipe_errors(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_reward(spec(name=f"{tmp_path}/missing.py:f"))
    (tmp_path / "p.py").write_text("x = 1\n")
    with pytest.raises(RecipeError, match="'f' is not a function"):
        load_reward(spec(name=f"{tmp_path / 'p.py'}:f"))
    (tmp_path / "broken.py").write_text("def f(:\n")
    with pytest.raises(RecipeError, match="Cannot load reward file.*SyntaxError"):
        load_reward(spec(name=f"{tmp_path / 'broken.py'}:f"))
    with pytest.raises(RecipeError, match="Cannot import reward module 'no_such_module_xyz'"):
        load_reward(spec(name="no_such_module_xyz:f"))


# ------------------------------------------------------------------ judge and counterfactual by name


class _YesJudge(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": "yes"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def yes_judge():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _YesJudge)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_judge_gate_built_from_kwargs(yes_judge):
    reward = load_reward(spec(name="accuracy", gate=[{"name": "judge", "kwargs": {
        "base_url": yes_judge, "model": "m", "api_key_env": "NO_SUCH_KEY_VAR", "timeout": 5}}]))
    assert reward.__name__ == "accuracy*judge"
    judge = dict(reward.components)["judge"]
    assert judge.base_url == yes_judge and judge.timeout == 5.0
    out, metrics = call(reward)
    assert out == [1.0, 0.0, 1.0, 0.0, 0.0]  # the judge says yes whenever asked; "B" has no think: 0
    assert metrics["judge/calls"] == 4  # the unformatted one is 0.0 without asking
    assert metrics["judge/failures"] == 0
    assert metrics["judge/failure_rate"] == 0.0
    assert metrics["rewards/accuracy*judge/judge/mean"] == pytest.approx(0.8)


def test_judge_down_keeps_the_accuracy_and_logs_failures(caplog):
    reward = load_reward(spec(name="accuracy", gate=[{"name": "judge", "kwargs": {
        "base_url": f"http://127.0.0.1:{_closed_port()}/v1", "max_retries": 1, "backoff": 0.01, "timeout": 1}}]))
    with caplog.at_level(logging.WARNING, logger="rlvlm"):
        out, metrics = call(reward)
    assert out == ACCURACY  # on_failure: ungated; the unformatted one needs no judge (0.0 from both)
    assert metrics["judge/failures"] == 4 and metrics["judge/failure_rate"] == 1.0
    assert metrics["rewards/accuracy*judge/judge/unscored"] == 4 / 5
    assert metrics["rewards/accuracy*judge/judge/mean"] == 0.0  # over the values that exist
    assert "judge" in caplog.text and "failure" in caplog.text


def test_judge_and_counterfactual_kwargs_are_checked():
    with pytest.raises(RecipeError, match="Reward 'judge': invalid kwargs"):
        load_reward(spec(name="judge", kwargs={"base_ulr": "http://x"}))
    with pytest.raises(RecipeError, match="Reward 'counterfactual': invalid kwargs.*checks"):
        load_reward(spec(name="counterfactual", kwargs={"checks": ["truncate"]}))
    reward = load_reward(spec(name="accuracy", gate=[{"name": "counterfactual", "kwargs": {"checks": ["shuffle"]}}]))
    assert reward.__name__ == "accuracy*counterfactual"
    assert dict(reward.components)["counterfactual"].checks == ("shuffle",)


def test_api_key_never_reaches_the_recipe_or_reprs(monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-very-secret")
    reward = load_reward(spec(name="judge", kwargs={"api_key_env": "MY_JUDGE_KEY"}))
    assert "sk-very-secret" not in repr(reward.components) + repr(vars(dict(reward.components)["judge"]))


# ------------------------------------------------------------------ inside TRL


@pytest.mark.slow
def test_grpo_run_logs_components_and_keeps_going_when_the_judge_is_down(tiny_model_path, tmp_path):
    """Two GRPO steps on the (untrained) tiny model with accuracy×counterfactual, accuracy×judge
    (judge down), and format: rewards get TRL's columns, metrics reach the trainer's logs."""
    from rlvlm.train import build_trainer

    raw = {
        "name": "compose",
        "model": {"name": str(tiny_model_path)},
        "warm_start": {"enabled": False},
        "data": {"train": {"name": "shapes", "n": 8}, "eval": []},
        "rewards": [
            {"name": "accuracy", "gate": ["counterfactual"], "weight": 1.0},
            {"name": "accuracy", "gate": [{"name": "judge", "kwargs": {
                "base_url": f"http://127.0.0.1:{_closed_port()}/v1", "max_retries": 0, "timeout": 1}}], "weight": 1.0},
            {"name": "format", "weight": 0.1},
        ],
        "output_dir": str(tmp_path / "run"),
        "num_generations": 2, "per_device_train_batch_size": 2, "max_completion_length": 8,
        "max_steps": 2, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
        "learning_rate": 1e-4, "bf16": False, "use_cpu": True, "disable_tqdm": True,
    }
    trainer = build_trainer(build_recipe(raw), progress=False)
    scorer = dict(trainer.reward_funcs[0].components)["counterfactual"]
    assert scorer.policy() == (trainer.model, trainer.processing_class)
    assert trainer.reward_func_names == ["accuracy*counterfactual", "accuracy*judge", "format"]
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rewards/format/mean" in h]
    assert len(logs) == 2
    for key in ("rewards/accuracy*counterfactual/mean", "rewards/accuracy*counterfactual/accuracy/mean",
                "rewards/accuracy*counterfactual/counterfactual/mean", "counterfactual/scored",
                "counterfactual/seconds", "judge/failures", "consistency_rate"):
        assert key in logs[-1], key
    assert logs[-1]["judge/failures"] > 0 or logs[-1]["rewards/accuracy*judge/accuracy/mean"] is not None
    assert all(v is None or not (isinstance(v, float) and math.isnan(v)) for v in logs[-1].values())


def test_bind_policy_ignores_rewards_without_a_policy():
    funcs, _ = load_rewards([spec(name="accuracy", gate=["consistency"]), spec(name="format")])
    bind_policy(funcs + [lambda completions, **kw: [0.0] * len(completions)], object())
    assert isinstance(funcs[0], Reward)


@pytest.mark.slow
def test_counterfactual_scores_inside_grpo(tiny_model_path, tmp_path):
    """TRL hands the counterfactual scorer its prompts, image and option columns; with responses
    pre-filled up to a closed answer block, every completion is scored by forward passes."""
    from datasets import Dataset
    from transformers import AutoProcessor
    from trl import GRPOConfig, GRPOTrainer

    from rlvlm.data import shapes
    from rlvlm.perturb import build_prompt

    rows = []
    for ex in shapes.generate_examples("train", 2, seed=0):
        letter = ex["answer"]
        prefix = f"<think>{shapes.cot_for(ex, letter)}</think><answer>{letter}</answer>"
        prompt = build_prompt(ex, think_prefix=prefix)
        prompt[-1]["content"] = [{"type": "text", "text": prefix}]  # Arrow wants one content type per column
        rows.append({"prompt": prompt, "image": ex["image"], "answer": letter,
                     "options": ex["options"], "think_prefix": prefix})
    funcs, weights = load_rewards([spec(name="accuracy", gate=["counterfactual"])])
    processor = AutoProcessor.from_pretrained(tiny_model_path)
    processor.tokenizer.padding_side = "left"
    args = GRPOConfig(output_dir=str(tmp_path / "run"), num_generations=2, per_device_train_batch_size=4,
                      max_completion_length=4, max_steps=1, logging_steps=1, save_strategy="no", report_to="none",
                      bf16=False, use_cpu=True, disable_tqdm=True, reward_weights=weights)
    trainer = GRPOTrainer(model=str(tiny_model_path), reward_funcs=funcs, args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=processor)
    bind_policy(funcs, trainer)
    trainer.train()
    scorer = dict(funcs[0].components)["counterfactual"]
    assert scorer.stats["scored"] == 4 and scorer.stats["forwards"] >= 2
    logs = [h for h in trainer.state.log_history if "counterfactual/scored" in h][-1]
    assert logs["counterfactual/scored"] == 4
    assert 0.0 <= logs["rewards/accuracy*counterfactual/counterfactual/mean"] <= 1.0
    assert logs["rewards/accuracy*counterfactual/accuracy/mean"] == 1.0
    assert "counterfactual/shuffle_agrees" in logs


# ------------------------------------------------------------------ a judge that stays down


class _Down:
    stop_reason = "the gate 'judge' of reward 'accuracy*judge' scored nothing in 3 generation batches in a row"


def test_reward_watch_stops_training_with_a_checkpoint():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from rlvlm.callbacks import RewardWatch

    args, state = TrainingArguments(output_dir="unused", report_to=[]), TrainerState()
    watch = RewardWatch([load_reward(spec(name="accuracy"))])
    control = watch.on_step_end(args, state, TrainerControl())
    assert not control.should_training_stop and watch.stop_reason is None
    watch = RewardWatch([load_reward(spec(name="format")), _Down()])
    control = watch.on_step_end(args, state, TrainerControl())
    assert control.should_training_stop and control.should_save
    assert watch.stop_reason == _Down.stop_reason


@pytest.mark.slow
def test_rlvlm_train_stops_cleanly_when_the_judge_stays_down(tiny_model_path, tmp_path, capsys):
    """A gate that never answers: the run stops after max_failed_batches steps, with that step's
    checkpoint, exit 1 and a message naming the gate; run again, it resumes from the checkpoint."""
    import yaml

    from rlvlm.cli import main

    plugin = tmp_path / "down.py"
    plugin.write_text("def down(completions, **kw):\n    return [None] * len(completions)\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "down", "model": {"name": str(tiny_model_path)}, "warm_start": {"enabled": False},
        "data": {"train": {"name": "shapes", "n": 16}, "eval": []},
        "rewards": [{"name": "accuracy", "gate": [{"name": f"{plugin}:down", "max_failed_batches": 2}]}],
        "num_generations": 2, "per_device_train_batch_size": 2, "max_completion_length": 8,
        "max_steps": 6, "save_steps": 100, "logging_steps": 1, "report_to": "none", "learning_rate": 1e-4,
        "bf16": False, "use_cpu": True, "disable_tqdm": True, "output_dir": str(tmp_path / "run"),
    }))
    assert main(["train", str(recipe), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "stopped at step 2" in err and "down.py:down" in err and "scored nothing in 2" in err
    assert (tmp_path / "run" / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (tmp_path / "run" / "checkpoint-6").exists()
