"""The DQN family on CartPole-v1: by default the combined agent (Double + Dueling + PER + Noisy Nets + 5-step
returns), which solves CartPole within 50k env steps; every variant is a switch.

    python recipes/dqn_cartpole.py [--seed 1] [--total_timesteps 50000]
        [--double True|False] [--dueling True|False] [--prioritized True|False] [--noisy True|False]
        [--n_step 3] [--optimizer adam|rmsprop] [--tau 0.005 --target_update_interval 1] [--help for every setting]

    e.g. plain DQN (Algorithm 6): --no_double --no_dueling --no_prioritized --no_noisy --n_step 1

Prints the run summary as JSON (steps until the mean of the last 20 episodes reaches 475, deterministic
evaluation over 20 episodes, wall time, gradient steps); metrics (metrics.jsonl, TensorBoard under tb/) and the
trained agent (agent/, read back by `llmrl.classic.load_agent`) go to --output_dir (runs/dqn_cartpole).
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a clone, uninstalled

from llmrl.classic.dqn import DQNConfig, train_dqn  # noqa: E402
from llmrl.utils import cli_main, parse_config  # noqa: E402

# This recipe's settings; every other setting keeps the config's default, and every setting is a flag.
RECIPE = {"env_id": "CartPole-v1", "total_timesteps": 50_000, "output_dir": "runs/dqn_cartpole"}


def main(argv: list[str] | None = None) -> dict:
    summary = train_dqn(parse_config(DQNConfig, argv, defaults=RECIPE)).summary()
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    cli_main(main)
