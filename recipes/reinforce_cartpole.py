"""REINFORCE with reward-to-go and a baseline on CartPole-v1.

    python recipes/reinforce_cartpole.py [--baseline none|constant|time_dependent|optimal|value]
                                         [--report_variance True] [--help for every field]

Prints the run summary as JSON; metrics (with grad_var/<baseline> when --report_variance) and the agent go to
--run_dir (runs/reinforce_cartpole).
"""
import json
import sys

from llmrl.classic.reinforce import ReinforceConfig, train_reinforce
from llmrl.utils import parse_config

DEFAULTS = ["--env_id", "CartPole-v1", "--total_steps", "300000", "--run_dir", "runs/reinforce_cartpole"]

if __name__ == "__main__":
    print(json.dumps(train_reinforce(parse_config(ReinforceConfig, DEFAULTS + sys.argv[1:]))))
