"""Tabular Q-learning (Algorithm 4) on FrozenLake or Taxi, with the learning curve and an exact check against DP.

    python recipes/q_learning.py [--env_id FrozenLake-v1|Taxi-v4] [--total_timesteps N]
        [--learning_rate 0.1 | --learning_rate_power 0.8]
        [--exploration_initial_eps 1.0 --exploration_final_eps 0.05 --exploration_fraction 0.5]
        [--output_dir runs/q_learning] [--help for every setting]

Writes OUTPUT_DIR/learning_curve.png (moving-average episode return, with the mean return of the DP-optimal policy
as the target) and OUTPUT_DIR/metrics.jsonl (episode_return per episode, readable by `llmrl-plot`). Prints how
close the learned greedy policy is to optimal, evaluated exactly on the env's own model: V^greedy(s0) vs V*(s0).
(Taxi-v3 is deprecated in gymnasium >= 1.2; Taxi-v4 has the same dynamics.)
"""
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import ClassVar

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a clone, uninstalled

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from llmrl.classic.dp import greedy_policy, policy_evaluation, value_iteration  # noqa: E402
from llmrl.classic.mdp import TabularMDP  # noqa: E402
from llmrl.classic.schedules import constant_schedule, linear_schedule, power_schedule  # noqa: E402
from llmrl.classic.td import q_learning  # noqa: E402
from llmrl.utils import RunLogger, cli_main, parse_config, prepare_output_dir  # noqa: E402

RUN_FILES = ("metrics.jsonl", "learning_curve.png")


@dataclass
class QLearningConfig:
    ALIASES: ClassVar[dict[str, str]] = {"alpha": "learning_rate"}  # the seed's name for the step size

    env_id: str = field(default="FrozenLake-v1", metadata={"help": "FrozenLake-v1, Taxi-v4 or another toy-text env."})
    map_name: str = field(default="4x4", metadata={"help": "FrozenLake only: 4x4 or 8x8."})
    is_slippery: bool = field(default=True, metadata={
        "help": "FrozenLake only: slippery ice (the intended move w.p. 1/3).",
        "help_off": "FrozenLake only: every move goes where intended."})
    total_timesteps: int = field(default=150_000, metadata={"help": "Training env steps."})
    gamma: float = field(default=0.99, metadata={"help": "Discount factor."})
    learning_rate: float = field(default=0.1, metadata={
        "help": "Constant step size alpha of the update (used when --learning_rate_power is 0)."})
    learning_rate_power: float = field(default=0.0, metadata={
        "help": "> 0: alpha = 1/(n(s,a)+1)^p per visit, p in (0.5, 1] (Robbins-Monro)."})
    exploration_initial_eps: float = field(default=1.0, metadata={"help": "Epsilon at step 0."})
    exploration_final_eps: float = field(default=0.05, metadata={"help": "Epsilon after the annealing."})
    exploration_fraction: float = field(default=0.5, metadata={
        "help": "Fraction of total_timesteps over which epsilon is annealed linearly."})
    seed: int = field(default=0, metadata={"help": "Seed of the env and of exploration."})
    eval_episodes: int = field(default=1000, metadata={"help": "Episodes to measure the optimal policy's return."})
    window: int = field(default=500, metadata={"help": "Moving-average window of the curve (episodes)."})
    output_dir: str = field(default="runs/q_learning", metadata={
        "help": "learning_curve.png and metrics.jsonl go here."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Replace an earlier run's files in output_dir; without it such a start is an error."})
    progress_bar: bool = field(default=True, metadata={
        "help": "Show a progress bar over env steps.", "help_off": "No progress bar (for logs and batch jobs)."})

    def __post_init__(self):
        if self.total_timesteps < 1:
            raise ValueError(f"total_timesteps must be >= 1, got {self.total_timesteps}")
        if not 0.0 < self.exploration_fraction <= 1.0:
            raise ValueError(f"exploration_fraction must be in (0, 1], got {self.exploration_fraction}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")


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


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(QLearningConfig, argv)
    prepare_output_dir(cfg.output_dir, cfg.overwrite_output_dir, RUN_FILES)
    env = make(cfg)
    if cfg.learning_rate_power > 0:
        alpha = power_schedule(cfg.learning_rate_power)
    else:
        alpha = constant_schedule(cfg.learning_rate)
    epsilon = linear_schedule(cfg.exploration_initial_eps, cfg.exploration_final_eps,
                              max(1, int(cfg.exploration_fraction * cfg.total_timesteps)))
    t0 = time.perf_counter()
    res = q_learning(env, cfg.total_timesteps, gamma=cfg.gamma, alpha=alpha, epsilon=epsilon, seed=cfg.seed,
                     progress_bar=cfg.progress_bar)
    seconds = time.perf_counter() - t0
    if len(res.returns) == 0:
        raise ValueError(f"no episode ended within total_timesteps={cfg.total_timesteps}; raise it")

    # Exact reference from the env's own model.
    mdp = TabularMDP.from_gymnasium(env, gamma=cfg.gamma)
    opt = value_iteration(mdp, tol=1e-10)
    learned = greedy_policy(res.Q)
    summary = {
        "env": mdp.name, "total_timesteps": cfg.total_timesteps, "episodes": len(res.returns),
        "seconds": round(seconds, 2),
        "V_star_s0": float(mdp.s0 @ opt.V), "V_greedy_s0": float(mdp.s0 @ policy_evaluation(mdp, learned)),
        "optimal_action_fraction": float(np.mean(
            (opt.Q >= opt.Q.max(axis=1, keepdims=True) - 1e-8)[np.arange(mdp.S), learned][~mdp.terminal])),
        "train_return_last_window": float(res.returns[-cfg.window:].mean()),
        "greedy_return": mean_return(env, learned, cfg.eval_episodes, 10_000),
        "optimal_return": mean_return(env, opt.policy, cfg.eval_episodes, 10_000),
    }

    logger = RunLogger(cfg.output_dir, tensorboard=False)
    for step, G, length in zip(np.cumsum(res.lengths), res.returns, res.lengths):
        logger.log({"episode_return": float(G), "episode_length": int(length)}, step=int(step))
    logger.close()
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    episodes = len(res.returns)
    w = min(cfg.window, episodes)
    curve = np.convolve(res.returns, np.ones(w) / w, mode="valid")
    ax.plot(np.arange(w - 1, episodes), curve, label=f"Q-learning (training, {w}-episode mean)")
    ax.axhline(summary["optimal_return"], color="k", ls="--", label="optimal policy (value iteration)")
    ax.axhline(summary["greedy_return"], color="tab:green", ls=":", label="final greedy policy")
    ax.set_xlabel("episode")
    ax.set_ylabel("return")
    ax.set_title(f"Q-learning on {mdp.name}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    png = os.path.join(cfg.output_dir, "learning_curve.png")
    FigureCanvasAgg(fig).print_png(png)
    summary["plot"] = png
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    cli_main(main)
