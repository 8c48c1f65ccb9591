"""Rewards named in a recipe -> TRL reward functions and weights.

A reward is a registered name (`accuracy`, `format`, `consistency` / `rule`, `judge`,
`counterfactual`), `package.module:function`, or `path/to/file.py:function`; `kwargs` are bound to
a function, or build a stateful reward (`judge`, `counterfactual`). TRL then weights and sums the
entries itself (`GRPOConfig.reward_weights`).

Gates: an entry's `gate` names faithfulness scorers (any reward, in fact) whose values multiply
the entry's, so the paper's faithfulness-aware reward is one entry:

    rewards:
      - {name: accuracy, gate: [consistency], weight: 1.0}     # TRL logs it as accuracy*consistency
      - {name: format, weight: 0.1}

with `gate: [judge]` / `gate: [counterfactual]` (or `{name: judge, kwargs: {...}}`) to swap the
scorer. A gate that could not score a completion (None: the judge failed) does not multiply: the
gate's `on_failure` decides, `ungated` (default) keeps the reward's own value, so a correct answer is
not punished for the judge's failure, `zero` scores it 0. (None would not do: TRL sums the weighted
entries with nansum, so a None entry counts as 0. Dropping the sample from its group is not offered:
TRL gathers the rewards of every process before it computes group statistics and has no per-sample
mask there, so it would take a trainer subclass.) After `max_failed_batches` generation batches in a
row in which a gate scored nothing, `Reward.stop_reason` says so and `rlvlm.callbacks.RewardWatch`
stops training with a checkpoint.

Every entry is a `Reward`: it fails loudly, naming the culprit, on NaN or a wrong-length list, and
logs per generation batch, through TRL's `log_metric` reward kwarg (see `Reward.__call__`):
- `rewards/<entry>/<component>/mean` for each component of a gated entry (the ungated reward and
  each gate: `rewards/accuracy*consistency/consistency/mean` is the consistency rate);
- `rewards/<entry>/<gate>/unscored`: the share of the batch the gate could not score;
- `<component>/<stat>`: the per-batch increase of a component's numeric `.stats` counters
  (`judge/failures`, `judge/calls`, ..., `counterfactual/seconds`) and `judge/failure_rate`;
- `consistency_rate`: the rule-based consistency of every batch (first entry only), whatever the
  recipe's rewards, since the accuracy/consistency trade-off is what a run is there to show.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
from pathlib import Path
from typing import Callable

from rlvlm.recipe import GateSpec, RecipeError, RewardSpec

log = logging.getLogger("rlvlm")


def _import_function(target: str) -> Callable:
    where, _, attr = target.rpartition(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise RecipeError(f"Reward file '{path}' does not exist.")
        spec = importlib.util.spec_from_file_location(f"rlvlm_user_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # a broken plugin is bad input, reported before any model is built
            raise RecipeError(f"Cannot load reward file '{path}': {type(e).__name__}: {e}.") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise RecipeError(f"Cannot import reward module '{where}': {e}.") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RecipeError(f"Reward '{target}': '{attr}' is not a function in '{where}'.")
    return fn


def resolve(name: str, kwargs: dict | None = None) -> tuple[str, Callable]:
    """(display name, reward callable) for a recipe name and its kwargs."""
    from rewards import ALIASES, REWARD_FACTORIES, REWARDS

    kwargs = dict(kwargs or {})
    key = ALIASES.get(name, name)
    if key in REWARD_FACTORIES:
        factory = _import_function(REWARD_FACTORIES[key])
        try:
            return key, factory(**kwargs)
        except (TypeError, ValueError) as e:
            raise RecipeError(f"Reward '{name}': invalid kwargs {sorted(kwargs)}: {e}.") from None
    if key in REWARDS:
        fn = REWARDS[key]
    elif ":" in name:
        fn = _import_function(name)
        key = name.rpartition(":")[2]
    else:
        raise RecipeError(
            f"Unknown reward '{name}'. Registered: {sorted([*REWARDS, *REWARD_FACTORIES, *ALIASES])}; "
            "or give 'module:function' or 'path/to/file.py:function'."
        )
    if kwargs:
        fn = _Bound(fn, kwargs)
    return key, fn


class _Bound:
    """`fn` with recipe kwargs bound. Unlike functools.partial, a recipe kwarg wins over a TRL
    column of the same name: what the recipe says is what the reward gets."""

    def __init__(self, fn, kwargs):
        self.fn, self.kwargs = fn, kwargs

    def __call__(self, completions, **kwargs):
        return self.fn(completions, **{**kwargs, **self.kwargs})


def _is_nan(v) -> bool:
    try:
        return math.isnan(v)
    except TypeError:
        return False


def _call_checked(name: str, fn: Callable, completions, kwargs: dict, entry: str) -> list:
    """Call one component; NaN, non-numbers or a wrong-length list fail loudly with its name."""
    what = f"Reward '{name}'" if name == entry else f"Reward '{name}' (in '{entry}')"
    values = fn(completions, **kwargs)
    if not isinstance(values, (list, tuple)) or len(values) != len(completions):
        got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise ValueError(f"{what} returned {got} values for {len(completions)} completions.")
    for v in values:
        if v is None:
            continue
        if isinstance(v, (str, bytes)) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
            raise ValueError(f"{what} returned a non-number: {v!r}.")
        if _is_nan(v):
            raise ValueError(f"{what} returned NaN.")
    return [None if v is None else float(v) for v in values]


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _numeric_stats(component) -> dict[str, float] | None:
    stats = getattr(component, "stats", None)
    if not isinstance(stats, dict):
        return None
    return {k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Reward:
    """One recipe entry as a TRL reward function: a reward times its gates, checked and logged.

    `__name__` is what TRL logs it as (`rewards/<name>/mean`): `accuracy`, `accuracy*consistency`.
    `components` lists `(name, callable)`: the reward, then its gates.
    """

    def __init__(self, name: str, components: list[tuple[str, Callable]], log_consistency: bool = False,
                 gates: list[GateSpec] | None = None):
        self.__name__ = name
        self.components = components
        self.log_consistency = log_consistency
        self.gates = list(gates) if gates is not None else [GateSpec(name=n) for n, _ in components[1:]]
        self.failed_batches = [0] * len(self.gates)  # per gate: batches in a row it scored nothing
        self.stop_reason: str | None = None

    def __repr__(self):
        return f"Reward({self.__name__!r})"

    def __call__(self, completions, **kwargs) -> list[float | None]:
        # Metrics go through TRL's own `log_metric` reward kwarg (GRPOTrainer._log_metric): TRL averages
        # them over the logging window, reduces them across processes and merges them into the logs
        # that every reporting callback (console, wandb, ...) receives. A TrainerCallback injecting
        # into `logs` in `on_log` would need its own cross-process reduction and would run after
        # callbacks registered before it (wandb's among them), so it could miss them. Outside TRL
        # (no `log_metric`) nothing is logged.
        log_metric = kwargs.get("log_metric")
        before = {name: _numeric_stats(fn) for name, fn in self.components}
        results = [_call_checked(name, fn, completions, kwargs, self.__name__) for name, fn in self.components]
        out = [self._gated(row) for row in zip(*results)] if len(results) > 1 else results[0]
        self._watch(results[1:], len(completions))
        if log_metric is not None:
            self._log(log_metric, completions, kwargs, results, before)
        return out

    def _gated(self, row) -> float | None:
        value = row[0]
        if value is None:
            return None
        for gate_value, gate in zip(row[1:], self.gates):
            if gate_value is not None:
                value *= gate_value
            elif gate.on_failure == "zero":
                value = 0.0
        return value

    def _watch(self, gate_results: list[list], n: int) -> None:
        """Count, per gate, the batches in a row in which it scored nothing; past the gate's
        `max_failed_batches`, set `stop_reason`."""
        for k, (values, gate) in enumerate(zip(gate_results, self.gates)):
            self.failed_batches[k] = self.failed_batches[k] + 1 if n and all(v is None for v in values) else 0
            if gate.max_failed_batches and self.failed_batches[k] >= gate.max_failed_batches and self.stop_reason is None:
                self.stop_reason = (
                    f"the gate '{gate.name}' of reward '{self.__name__}' scored nothing in {self.failed_batches[k]} "
                    f"generation batches in a row (is the judge down?). Training stopped with a checkpoint; "
                    f"restart the scorer and run the same command with --resume_from_checkpoint true (or raise "
                    f"rewards[].gate[].max_failed_batches, 0 never stops)."
                )
                log.error("%s", self.stop_reason)

    def _log(self, log_metric, completions, kwargs, results, before) -> None:
        if len(results) > 1:
            for (name, _), values in zip(self.components, results):
                mean = _mean(values)
                if mean is not None:
                    log_metric(f"rewards/{self.__name__}/{name}/mean", mean)
            for (name, _), values in zip(self.components[1:], results[1:]):
                if values:
                    log_metric(f"rewards/{self.__name__}/{name}/unscored", sum(v is None for v in values) / len(values))
        for name, fn in self.components:
            if before[name] is None:
                continue
            after = _numeric_stats(fn)
            delta = {k: after[k] - before[name].get(k, 0) for k in after}
            for k, v in delta.items():
                log_metric(f"{name}/{k}", v)
            if "failures" in delta and delta.get("calls"):
                log_metric(f"{name}/failure_rate", delta["failures"] / delta["calls"])
            if delta.get("failures"):
                log.warning("reward '%s': %d failure(s) in this batch; those scores are missing (gates: on_failure)",
                            name, delta["failures"])
        if self.log_consistency:
            from rewards.faithfulness import consistency_reward

            # reuse a consistency gate already computed for this batch instead of scoring it twice
            values = next((v for (_, fn), v in zip(self.components, results) if fn is consistency_reward), None)
            if values is None:
                values = consistency_reward(completions, options=kwargs.get("options"), think_prefix=kwargs.get("think_prefix"))
            values = [v for v in values if v is not None]
            if values:
                log_metric("consistency_rate", sum(values) / len(values))


def load_reward(spec: RewardSpec, log_consistency: bool = False) -> Reward:
    components = [resolve(spec.name, spec.kwargs)]
    components += [resolve(gate.name, gate.kwargs) for gate in spec.gate]
    name = "*".join(n for n, _ in components)
    return Reward(name, components, log_consistency=log_consistency, gates=spec.gate)


def load_rewards(specs: list[RewardSpec]) -> tuple[list[Reward], list[float]]:
    rewards = [load_reward(s, log_consistency=(i == 0)) for i, s in enumerate(specs)]
    seen = set()
    for r in rewards:
        if r.__name__ in seen:
            raise RecipeError(f"Two reward entries are both named '{r.__name__}'; TRL would mix their logs.")
        seen.add(r.__name__)
    return rewards, [s.weight for s in specs]


def components(reward_funcs) -> list[tuple[str, Callable]]:
    """Every (name, component) of a list of reward functions (plain callables count as their own)."""
    out = []
    for f in reward_funcs:
        out += getattr(f, "components", None) or [(getattr(f, "__name__", type(f).__name__), f)]
    return out


def bind_policy(reward_funcs, trainer) -> None:
    """Hand the trainer to the rewards that score with the current policy (`counterfactual`)."""
    for _, fn in components(reward_funcs):
        if hasattr(fn, "bind_trainer"):
            fn.bind_trainer(trainer)
