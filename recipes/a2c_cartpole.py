"""A2C (synchronous advantage actor-critic) on CartPole-v1.

    python recipes/a2c_cartpole.py [--seed 1] [--advantage nstep --n_step 5] [--help for every field]

Prints the run summary as JSON; metrics and the agent go to --run_dir (runs/a2c_cartpole).
"""
import json
import sys

from llmrl.classic.a2c import A2CConfig, train_a2c
from llmrl.utils import parse_config

DEFAULTS = ["--env_id", "CartPole-v1", "--total_steps", "200000", "--run_dir", "runs/a2c_cartpole"]

if __name__ == "__main__":
    print(json.dumps(train_a2c(parse_config(A2CConfig, DEFAULTS + sys.argv[1:]))))
