"""PPO with the adaptive KL penalty (seed Algorithm 10: beta x1.5 / /1.5 around the KL target) on CartPole-v1.

    python recipes/kl_ppo_cartpole.py [--seed 1] [--kl_target 0.01] [--help for every setting]

Prints the run summary as JSON; metrics and the agent go to --output_dir (runs/kl_ppo_cartpole).
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a clone, uninstalled

from llmrl.classic.ppo import PPOConfig, train_ppo  # noqa: E402
from llmrl.utils import cli_main, parse_config  # noqa: E402

# This recipe's settings; every other setting keeps the config's default, and every setting is a flag.
RECIPE = {"env_id": "CartPole-v1", "loss": "kl", "total_timesteps": 200_000, "output_dir": "runs/kl_ppo_cartpole"}


def main(argv: list[str] | None = None) -> dict:
    summary = train_ppo(parse_config(PPOConfig, argv, defaults=RECIPE)).summary()
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    cli_main(main)
