"""TRPO (natural gradient by conjugate gradient, backtracking line search under max KL) on CartPole-v1.

    python recipes/trpo_cartpole.py [--seed 1] [--max_kl 0.01] [--help for every field]

Prints the run summary as JSON; metrics and the agent go to --run_dir (runs/trpo_cartpole).
"""
import json
import sys

from llmrl.classic.trpo import TRPOConfig, train_trpo
from llmrl.utils import parse_config

DEFAULTS = ["--env_id", "CartPole-v1", "--total_steps", "200000", "--run_dir", "runs/trpo_cartpole"]

if __name__ == "__main__":
    print(json.dumps(train_trpo(parse_config(TRPOConfig, DEFAULTS + sys.argv[1:]))))
