"""The DQN family on CartPole-v1: by default the combined agent (Double + Dueling + PER + Noisy Nets + 5-step
returns), which solves CartPole within 50k env steps; every variant is a switch.

    python recipes/dqn_cartpole.py [--seed 1] [--total_timesteps 50000]
        [--double True|False] [--dueling True|False] [--prioritized True|False] [--noisy True|False]
        [--n_step 3] [--optimizer adam|rmsprop] [--tau 0.005 --target_update_interval 1] [--help for every field]

    e.g. plain DQN (Algorithm 6): --double False --dueling False --prioritized False --noisy False --n_step 1

Prints the run summary as JSON (steps until the mean of the last 20 episodes reaches 475, deterministic
evaluation over 20 episodes, wall time); metrics (metrics.jsonl, TensorBoard under tb/) and the trained agent
(load it with `llmrl.classic.dqn.DQNAgent.load`) go to --run_dir (runs/dqn_cartpole).
"""
import json
import sys

import numpy as np

from llmrl.classic.dqn import DQNConfig, train_dqn
from llmrl.utils import parse_config

DEFAULTS = ["--env_id", "CartPole-v1", "--total_timesteps", "50000", "--run_dir", "runs/dqn_cartpole",
            "--progress_bar", "True"]

if __name__ == "__main__":
    cfg = parse_config(DQNConfig, DEFAULTS + sys.argv[1:])
    res = train_dqn(cfg)
    print(json.dumps({"env_id": cfg.env_id, "seed": cfg.seed, "env_steps": res.env_steps,
                      "gradient_steps": res.gradient_steps, "episodes": len(res.episode_returns),
                      "steps_to_475": res.solved_at, "eval_mean_return": float(np.mean(res.eval_returns)),
                      "wall_s": round(res.wall_s, 1), "run_dir": cfg.run_dir}))
