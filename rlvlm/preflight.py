"""Checks that a run's judges and rewards work, made before any model is built.

- `check_judges`: every LLM judge a recipe uses (a reward entry or gate named `judge`, and
  `evaluation.faithfulness: judge`) answers one probe request (`JudgeReward.probe`). A judge that
  does not answer would otherwise score None for every completion, silently, after the model has
  been built (minutes to hours for a large one).
- `check_rewards`: each reward entry is called once on a few training rows with synthetic
  completions (a well-formed one with the gold answer and a malformed one), so a reward that raises,
  returns the wrong number of values, a non-number or NaN stops the run before the model is built,
  naming the reward, with the traceback in RUN_DIR/preflight_error.txt.

Both raise `PreflightError`, a `RecipeError`: the command line prints its one-paragraph message and
exits 2, with no traceback.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

from rlvlm.recipe import RecipeError

log = logging.getLogger("rlvlm")

PREFLIGHT_ERROR = "preflight_error.txt"
N_ROWS = 2  # training rows the rewards are tried on, each with a well-formed and a malformed completion


class PreflightError(RecipeError):
    """A judge or reward that cannot work, found before any model is built."""


# ------------------------------------------------------------------ judges


def _is_judge(fn) -> bool:
    return callable(getattr(fn, "probe", None))


def recipe_judges(recipe, training: bool = True) -> list[tuple[str, object]]:
    """(where it is used, judge) for every judge the recipe uses: its reward entries and gates when
    `training`, and its evaluation scorer when something evaluates with it (`rlvlm eval`, or a
    training run's inline evaluation). The judges are freshly built: close them after use."""
    from rlvlm.composition import load_rewards
    from rlvlm.evaluation.scoring import load_scorer

    found = []
    if training:
        for reward in load_rewards(recipe.rewards)[0]:
            for name, fn in getattr(reward, "components", None) or [(reward.__name__, reward)]:
                if _is_judge(fn):
                    entry = reward.__name__
                    found.append((f"reward '{entry}'" if name == entry else f"the '{name}' gate of reward '{entry}'", fn))
    section = recipe.evaluation
    if not training or (section.enabled and section.mode == "inline"):
        scorer = load_scorer(section)
        if _is_judge(scorer):
            found.append(("evaluation.faithfulness", scorer))
    return found


def _advice(where: str, judge) -> str:
    evaluation = where == "evaluation.faithfulness"
    kwargs = "evaluation.faithfulness_kwargs" if evaluation else "the judge's kwargs in the recipe's rewards"
    switch = ("evaluation.faithfulness: rule" if evaluation
              else "a rule-based gate, e.g. gate: [consistency], instead of the judge")
    if judge.local_model is not None:
        return f"Fix local_model in {kwargs}, or switch the scorer ({switch})."
    return (f"Start the judge server (an OpenAI-compatible endpoint serving '{judge.model}', e.g. "
            f"`vllm serve {judge.model}`), fix base_url in {kwargs} (a base_url is http://HOST:PORT/v1), "
            f"or switch the scorer ({switch}).")


def check_judges(judges: list[tuple[str, object]]) -> None:
    """Probe each distinct judge once (then close every one); raise PreflightError naming each that
    does not answer, its URL and what to do."""
    problems, seen = [], {}
    try:
        for where, judge in judges:
            key = (judge.url, judge.model)
            if key not in seen:
                seen[key] = judge.probe()
                if seen[key] is None:
                    log.info("preflight: the judge at %s answers (%s)", judge.url, where)
            if seen[key] is not None:
                problems.append((where, judge, seen[key]))
    finally:
        for _, judge in judges:
            judge.close()
    if not problems:
        return
    parts = []
    for where, judge, reason in problems:
        parts.append(f"The LLM judge used by {where} does not answer at {judge.url}: {reason}. {_advice(where, judge)}")
    raise PreflightError(" ".join(parts) + " No model was built.")


def probe_recipe_judges(recipe, training: bool = True) -> None:
    check_judges(recipe_judges(recipe, training=training))


# ------------------------------------------------------------------ rewards


def _needs_policy(fn) -> bool:
    return hasattr(fn, "bind_trainer")


def synthetic_completions(row: dict) -> list[tuple[str, str]]:
    """(kind, text) of a well-formed completion answering the row's gold letter (or value) and a
    malformed one, continuing the row's pre-filled think when it has one."""
    from rewards.parsing import LETTERS, resolve_gold

    options = row.get("options") or None
    gold = resolve_gold(row.get("answer"), options) if options else None
    answer = LETTERS[gold] if gold is not None else str(row.get("answer"))
    prefix = row.get("think_prefix") or ""
    if "</think>" in prefix:
        well = f"<answer>{answer}</answer>"
    elif "<think>" in prefix:
        well = f" So the answer is {answer}.</think><answer>{answer}</answer>"
    else:
        well = f"<think>Looking at the image, the answer is {answer}.</think><answer>{answer}</answer>"
    return [("well-formed", well), ("malformed", "I am not sure, maybe it is the first one")]


def reward_call(rows: list[dict]) -> tuple[list, dict]:
    """(completions, kwargs) as TRL's GRPOTrainer passes them to a reward function: conversational
    completions, `prompts`, `completion_ids`, every other dataset column (one entry per completion) and
    `trainer_state`; no `log_metric` / `log_extra`, so nothing is logged."""
    from transformers import TrainerState

    completions, per_completion = [], []
    for row in rows:
        for _, text in synthetic_completions(row):
            completions.append([{"role": "assistant", "content": text}])
            per_completion.append(row)
    kwargs = {"prompts": [r["prompt"] for r in per_completion], "completion_ids": [[] for _ in per_completion]}
    from rlvlm.data.images import decode

    for key in rows[0]:
        if key not in ("prompt", "completion", "completion_ids"):
            kwargs[key] = [r.get(key) for r in per_completion]
    # the trainer's dataset decodes its image columns (rlvlm.data.images.image_dataset) as it reads them
    if "image" in kwargs:
        kwargs["image"] = [None if v is None else decode(v) for v in kwargs["image"]]
    if "images" in kwargs:
        kwargs["images"] = [None if v is None else [decode(x) for x in v] for v in kwargs["images"]]
    kwargs["trainer_state"] = TrainerState()
    return completions, kwargs


def _checkable(reward):
    """The reward as far as it can run before the model exists: None when nothing can, else the reward
    itself or a `Reward` of the same name over its checkable components. Policy-bound components
    (`bind_trainer`: the counterfactual scorer) need the trained model; judges have their own probe."""
    from rlvlm.composition import Reward

    components = getattr(reward, "components", None)
    if components is None:
        return None if _needs_policy(reward) or _is_judge(reward) else reward
    keep = []
    for name, fn in components:
        if _needs_policy(fn):
            log.info("preflight: reward '%s': '%s' scores with the policy; not tried before the model exists",
                     reward.__name__, name)
        elif _is_judge(fn):
            log.info("preflight: reward '%s': '%s' is a judge; its probe checks it, not a reward call",
                     reward.__name__, name)
        else:
            keep.append((name, fn))
    # a fresh Reward even when every component is kept: the trainer's own one counts the batches in
    # which its gates scored nothing (Reward.stop_reason), and this call is not a training batch
    return Reward(reward.__name__, keep) if keep else None


def check_rewards(reward_funcs: list, rows: list[dict], run_dir: str | Path, n_rows: int = N_ROWS) -> None:
    """Call each reward once on `n_rows` training rows x (well-formed, malformed) completions; a reward
    that raises (`composition.Reward` raises on NaN, a non-number or a wrong-length list) raises
    PreflightError naming it, with the traceback written to RUN_DIR/preflight_error.txt."""
    if not rows:
        return
    sample = rows[:n_rows]
    completions, kwargs = reward_call(sample)
    error_file = Path(run_dir) / PREFLIGHT_ERROR
    for reward in reward_funcs:
        name = getattr(reward, "__name__", type(reward).__name__)
        fn = _checkable(reward)
        if fn is None:
            continue
        try:
            fn(completions, **kwargs)
        except Exception as e:
            _write_traceback(error_file, name, traceback.format_exc())
            raise PreflightError(
                f"Reward '{name}' fails before training: called once on {len(completions)} synthetic completions "
                f"of {len(sample)} training rows (well-formed with the gold answer, and malformed), it raised "
                f"{type(e).__name__}: {_sentence(e)} The traceback is in {error_file}. Fix the reward (or take it out of "
                f"the recipe's rewards) and run the same command again; no model was built."
            ) from None
    if error_file.is_file():
        error_file.unlink(missing_ok=True)  # a failure of an earlier attempt, now fixed
    log.info("preflight: %d reward(s) scored %d synthetic completions", len(reward_funcs), len(completions))


def _sentence(e: Exception) -> str:
    text = " ".join(str(e).split()) or "(no message)"
    return text if text.endswith((".", "!", "?")) else text + "."


def _write_traceback(path: Path, name: str, text: str) -> None:
    from accelerate import PartialState

    if PartialState().is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"preflight call of reward '{name}' (before any model was built)\n\n{text}")
