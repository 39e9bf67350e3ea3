"""PPO-clip on Pendulum-v1 (continuous actions: a diagonal-Gaussian policy).

    python recipes/ppo_pendulum.py [--seed 1] [--total_steps 200000] [--help for every field]

Prints the run summary as JSON (deterministic evaluation over 20 episodes, wall time); metrics and the agent go
to --run_dir (runs/ppo_pendulum).
"""
import json
import sys

from llmrl.classic.ppo import PPOConfig, train_ppo
from llmrl.utils import parse_config

DEFAULTS = ["--env_id", "Pendulum-v1", "--total_steps", "200000", "--num_envs", "4", "--num_steps", "1024",
            "--batch_size", "64", "--num_epochs", "10", "--gamma", "0.9", "--gae_lambda", "0.95",
            "--learning_rate", "1e-3", "--reward_scale", "0.1", "--run_dir", "runs/ppo_pendulum"]

if __name__ == "__main__":
    print(json.dumps(train_ppo(parse_config(PPOConfig, DEFAULTS + sys.argv[1:]))))
