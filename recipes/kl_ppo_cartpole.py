"""PPO with the adaptive KL penalty (seed Algorithm 10: beta x1.5 / /1.5 around the KL target) on CartPole-v1.

    python recipes/kl_ppo_cartpole.py [--seed 1] [--kl_target 0.01] [--help for every field]

Prints the run summary as JSON; metrics and the agent go to --run_dir (runs/kl_ppo_cartpole).
"""
import json
import sys

from llmrl.classic.ppo import PPOConfig, train_ppo
from llmrl.utils import parse_config

DEFAULTS = ["--env_id", "CartPole-v1", "--loss", "kl", "--total_steps", "200000", "--run_dir", "runs/kl_ppo_cartpole"]

if __name__ == "__main__":
    print(json.dumps(train_ppo(parse_config(PPOConfig, DEFAULTS + sys.argv[1:]))))
