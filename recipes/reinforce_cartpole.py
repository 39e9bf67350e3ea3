"""REINFORCE with reward-to-go and a baseline on CartPole-v1.

    python recipes/reinforce_cartpole.py [--baseline none|constant|time_dependent|optimal|value]
                                         [--report_variance] [--help for every setting]

Prints the run summary as JSON; metrics (with grad_var/<baseline> when --report_variance) and the agent go to
--output_dir (runs/reinforce_cartpole).
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a clone, uninstalled

from llmrl.classic.reinforce import ReinforceConfig, train_reinforce  # noqa: E402
from llmrl.utils import cli_main, parse_config  # noqa: E402

# This recipe's settings; every other setting keeps the config's default, and every setting is a flag.
RECIPE = {"env_id": "CartPole-v1", "total_timesteps": 300_000, "output_dir": "runs/reinforce_cartpole"}


def main(argv: list[str] | None = None) -> dict:
    summary = train_reinforce(parse_config(ReinforceConfig, argv, defaults=RECIPE)).summary()
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    cli_main(main)
