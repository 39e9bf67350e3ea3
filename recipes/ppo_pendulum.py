"""PPO-clip on Pendulum-v1 (continuous actions: a diagonal-Gaussian policy).

    python recipes/ppo_pendulum.py [--seed 1] [--total_timesteps 200000] [--help for every setting]

Prints the run summary as JSON (deterministic evaluation over 20 episodes, wall time); metrics and the agent go
to --output_dir (runs/ppo_pendulum).
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a clone, uninstalled

from llmrl.classic.ppo import PPOConfig, train_ppo  # noqa: E402
from llmrl.utils import cli_main, parse_config  # noqa: E402

# This recipe's settings; every other setting keeps the config's default, and every setting is a flag.
RECIPE = {"env_id": "Pendulum-v1", "total_timesteps": 200_000, "num_envs": 4, "num_steps": 1024, "batch_size": 64,
          "num_epochs": 10, "gamma": 0.9, "gae_lambda": 0.95, "learning_rate": 1e-3, "reward_scale": 0.1,
          "output_dir": "runs/ppo_pendulum"}


def main(argv: list[str] | None = None) -> dict:
    summary = train_ppo(parse_config(PPOConfig, argv, defaults=RECIPE)).summary()
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    cli_main(main)
