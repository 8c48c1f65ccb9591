"""Built-in reward functions, each a plain function with TRL's reward signature.

Importing this package pulls in no torch and no math-verify.

- ``REWARDS``: plain functions, used as they are (a recipe's ``kwargs`` are bound to them).
- ``REWARD_FACTORIES``: stateful rewards built from a recipe's ``kwargs`` (``"module:function"``,
  imported only when used): the LLM judge and the counterfactual scorer.
- ``ALIASES``: other names a recipe may use (``rule`` is the rule-based consistency scorer).

The faithfulness scorers ``consistency`` (alias ``rule``), ``judge`` and ``counterfactual`` share one
interface, ``(completions, options=None, think_prefix=None, **kwargs) -> list[float | None]``, so a
recipe swaps them by name, e.g. as the gate of ``accuracy`` (see ``rlvlm.composition``).

Shared with ``rlvlm``: ``rewards.options`` (the option letters and the one rule for what a gold answer
names, used by the data adapters and the perturbations too) and ``rewards.option_probs`` (the option
probabilities, used by the evaluator and the counterfactual scorer).
"""

from rewards.accuracy import accuracy_reward
from rewards.faithfulness import consistency_reward
from rewards.format import format_reward

REWARDS = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "consistency": consistency_reward,
}

REWARD_FACTORIES = {
    "judge": "rewards.judge:make_judge_reward",
    "counterfactual": "rewards.counterfactual:make_counterfactual_reward",
}

ALIASES = {"rule": "consistency"}

__all__ = ["REWARDS", "REWARD_FACTORIES", "ALIASES", "accuracy_reward", "format_reward", "consistency_reward"]
