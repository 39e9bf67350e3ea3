"""A2C (synchronous advantage actor-critic) on CartPole-v1.

    python recipes/a2c_cartpole.py [--seed 1] [--advantage nstep --n_step 5] [--help for every setting]

Prints the run summary as JSON; metrics (metrics.jsonl, TensorBoard under tb/) and the trained agent (agent/, read
back by `llmrl.classic.load_agent`) go to --output_dir (runs/a2c_cartpole).
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a clone, uninstalled

from llmrl.classic.a2c import A2CConfig, train_a2c  # noqa: E402
from llmrl.utils import cli_main, parse_config  # noqa: E402

# This recipe's settings; every other setting keeps the config's default, and every setting is a flag.
RECIPE = {"env_id": "CartPole-v1", "output_dir": "runs/a2c_cartpole"}


def main(argv: list[str] | None = None) -> dict:
    summary = train_a2c(parse_config(A2CConfig, argv, defaults=RECIPE)).summary()
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    cli_main(main)
