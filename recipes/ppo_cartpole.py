"""PPO-clip on CartPole-v1 with the rl-zoo settings of the SB3 anchor (8 envs x 32 steps, 20 epochs, GAE 0.8).

    python recipes/ppo_cartpole.py [--seed 1] [--total_steps 100000] [--help for every field]

Prints the run summary as JSON (steps until the mean of the last 20 episodes reaches 475, deterministic
evaluation over 20 episodes, wall time); metrics and the agent go to --run_dir (runs/ppo_cartpole).
"""
import json
import sys

from llmrl.classic.ppo import PPOConfig, train_ppo
from llmrl.utils import parse_config

DEFAULTS = ["--env_id", "CartPole-v1", "--total_steps", "100000", "--run_dir", "runs/ppo_cartpole"]

if __name__ == "__main__":
    print(json.dumps(train_ppo(parse_config(PPOConfig, DEFAULTS + sys.argv[1:]))))
