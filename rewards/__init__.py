"""Built-in reward functions, each a plain function with TRL's reward signature.

Importing this package pulls in no torch and no math-verify.
"""

from rewards.accuracy import accuracy_reward
from rewards.faithfulness import consistency_reward
from rewards.format import format_reward

REWARDS = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "consistency": consistency_reward,
}

__all__ = ["REWARDS", "accuracy_reward", "format_reward", "consistency_reward"]
