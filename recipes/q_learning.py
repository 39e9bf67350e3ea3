"""Tabular Q-learning (Algorithm 4) on FrozenLake or Taxi, with the learning curve and an exact check against DP.

    python recipes/q_learning.py [--env_id FrozenLake-v1|Taxi-v4] [--episodes N] [--alpha 0.1 | --alpha_power 0.8]
                                 [--epsilon_start 1.0 --epsilon_end 0.05 --epsilon_decay 0.5] [--out runs/q_learning]
                                 [--help for every field]

Writes OUT/learning_curve.png (moving-average episode return, with the mean return of the DP-optimal policy as the
target) and OUT/metrics.jsonl (episode_return per episode, readable by `llmrl-plot`). Prints how close the learned
greedy policy is to optimal, evaluated exactly on the env's own model: V^greedy(s0) vs V*(s0).
(Taxi-v3 is deprecated in gymnasium >= 1.2; Taxi-v4 has the same dynamics.)
"""
import json
import os
import time
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from llmrl.classic.dp import greedy_policy, policy_evaluation, value_iteration
from llmrl.classic.mdp import TabularMDP
from llmrl.classic.td import constant_schedule, linear_schedule, power_schedule, q_learning
from llmrl.utils import RunLogger, parse_config


@dataclass
class QLearningConfig:
    env_id: str = field(default="FrozenLake-v1", metadata={"help": "FrozenLake-v1, Taxi-v4 or another toy-text env."})
    map_name: str = field(default="4x4", metadata={"help": "FrozenLake only: 4x4 or 8x8."})
    is_slippery: bool = field(default=True, metadata={"help": "FrozenLake only: slippery ice."})
    episodes: int = field(default=20_000, metadata={"help": "Training episodes."})
    gamma: float = field(default=0.99, metadata={"help": "Discount factor."})
    alpha: float = field(default=0.1, metadata={"help": "Constant step size (used when --alpha_power is 0)."})
    alpha_power: float = field(default=0.0, metadata={
        "help": "> 0: alpha = 1/(n(s,a)+1)^p per visit, p in (0.5, 1] (Robbins-Monro)."})
    epsilon_start: float = field(default=1.0, metadata={"help": "Exploration at episode 0."})
    epsilon_end: float = field(default=0.05, metadata={"help": "Exploration after the decay."})
    epsilon_decay: float = field(default=0.5, metadata={"help": "Fraction of the episodes over which epsilon decays."})
    seed: int = field(default=0, metadata={"help": "Seed of the env and of exploration."})
    eval_episodes: int = field(default=1000, metadata={"help": "Episodes to measure the optimal policy's return."})
    window: int = field(default=500, metadata={"help": "Moving-average window of the curve (episodes)."})
    out: str = field(default="runs/q_learning", metadata={"help": "Output directory."})

    def __post_init__(self):
        if self.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {self.episodes}")
        if not 0.0 < self.epsilon_decay <= 1.0:
            raise ValueError(f"--epsilon_decay must be in (0, 1], got {self.epsilon_decay}")


def make(cfg: QLearningConfig) -> gym.Env:
    kwargs = {"map_name": cfg.map_name, "is_slippery": cfg.is_slippery} if cfg.env_id.startswith("FrozenLake") else {}
    return gym.make(cfg.env_id, **kwargs)


def mean_return(env, policy, episodes, seed) -> float:
    total = 0.0
    for i in range(episodes):
        s, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            s, r, term, trunc, _ = env.step(int(policy[s]))
            total += r
            done = term or trunc
    return total / episodes


def main(cfg: QLearningConfig) -> dict:
    env = make(cfg)
    alpha = power_schedule(cfg.alpha_power) if cfg.alpha_power > 0 else constant_schedule(cfg.alpha)
    epsilon = linear_schedule(cfg.epsilon_start, cfg.epsilon_end, max(1, int(cfg.epsilon_decay * cfg.episodes)))
    t0 = time.perf_counter()
    res = q_learning(env, cfg.episodes, gamma=cfg.gamma, alpha=alpha, epsilon=epsilon, seed=cfg.seed)
    seconds = time.perf_counter() - t0

    # Exact reference from the env's own model.
    mdp = TabularMDP.from_gymnasium(env, gamma=cfg.gamma)
    opt = value_iteration(mdp, tol=1e-10)
    learned = greedy_policy(res.Q)
    summary = {
        "env": mdp.name, "episodes": cfg.episodes, "steps": int(res.lengths.sum()), "seconds": round(seconds, 2),
        "V_star_s0": float(mdp.s0 @ opt.V), "V_greedy_s0": float(mdp.s0 @ policy_evaluation(mdp, learned)),
        "optimal_action_fraction": float(np.mean(
            (opt.Q >= opt.Q.max(axis=1, keepdims=True) - 1e-8)[np.arange(mdp.S), learned][~mdp.terminal])),
        "train_return_last_window": float(res.returns[-cfg.window:].mean()),
        "greedy_return": mean_return(env, learned, cfg.eval_episodes, 10_000),
        "optimal_return": mean_return(env, opt.policy, cfg.eval_episodes, 10_000),
    }

    os.makedirs(cfg.out, exist_ok=True)
    logger = RunLogger(cfg.out, tensorboard=False)
    for ep, G in enumerate(res.returns):
        logger.log({"episode_return": float(G), "episode_length": int(res.lengths[ep])}, step=ep)
    logger.close()
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    w = min(cfg.window, cfg.episodes)
    curve = np.convolve(res.returns, np.ones(w) / w, mode="valid")
    ax.plot(np.arange(w - 1, cfg.episodes), curve, label=f"Q-learning (training, {w}-episode mean)")
    ax.axhline(summary["optimal_return"], color="k", ls="--", label="optimal policy (value iteration)")
    ax.axhline(summary["greedy_return"], color="tab:green", ls=":", label="final greedy policy")
    ax.set_xlabel("episode")
    ax.set_ylabel("return")
    ax.set_title(f"Q-learning on {mdp.name}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    png = os.path.join(cfg.out, "learning_curve.png")
    FigureCanvasAgg(fig).print_png(png)
    summary["plot"] = png
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main(parse_config(QLearningConfig))
