"""Value iteration or policy iteration on FrozenLake (8x8 by default), solved exactly from the env's own model.

    python recipes/dp_frozenlake.py [--algo vi|pi] [--map_name 8x8|4x4] [--is_slippery True|False]
                                    [--gamma 0.99] [--tol 1e-8] [--horizon H] [--help for every setting]

Prints V* as a grid, the greedy policy as arrows (H = hole, G = goal), the iteration count and time, and checks the
policy in the real env: its success rate over --eval_episodes seeded episodes against the exact probability of
reaching G within the env's time limit (finite-horizon evaluation on the same MDP).
"""
import os
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a clone, uninstalled

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

from llmrl.classic.dp import policy_evaluation, policy_iteration, policy_matrices, value_iteration  # noqa: E402
from llmrl.classic.mdp import ARROWS, TabularMDP  # noqa: E402
from llmrl.utils import cli_main, parse_config  # noqa: E402


@dataclass
class DPConfig:
    algo: str = field(default="vi", metadata={"help": "vi (value iteration) or pi (policy iteration)."})
    map_name: str = field(default="8x8", metadata={"help": "FrozenLake map: 4x4 or 8x8."})
    is_slippery: bool = field(default=True, metadata={"help": "Slippery ice (the intended move w.p. 1/3).",
                                                      "help_off": "Every move goes where intended."})
    gamma: float = field(default=0.99, metadata={
        "help": "Discount factor in [0, 1]; 1 values each state by its probability of ever reaching the goal."})
    tol: float = field(default=1e-8, metadata={"help": "VI: the greedy policy is tol-optimal (by the --stop rule)."})
    stop: str = field(default="sup", metadata={"help": "VI stopping rule: sup or span (see llmrl.classic.dp)."})
    evaluation: str = field(default="exact", metadata={"help": "PI policy evaluation: exact or iterative."})
    horizon: int = field(default=0, metadata={"help": "VI only: > 0 solves the H-step problem (Algorithm 1) "
                                                      "and shows its h = 0 policy."})
    eval_episodes: int = field(default=1000, metadata={"help": "Episodes of the greedy policy in the env."})
    seed: int = field(default=0, metadata={"help": "Seed of the evaluation episodes."})

    def __post_init__(self):
        if self.algo not in ("vi", "pi"):
            raise ValueError(f"--algo must be vi or pi, got {self.algo!r}")
        if self.algo == "pi" and self.horizon:
            raise ValueError("--horizon is for --algo vi (policy iteration solves the discounted problem)")


def grid(values, desc, fmt) -> str:
    """One line per map row; holes and the goal are shown as H and G."""
    rows = []
    for i, line in enumerate(desc):
        cells = []
        for j, c in enumerate(line):
            s = i * len(line) + j
            cells.append(f"{c:>{len(fmt(values[s]))}}" if c in "HG" else fmt(values[s]))
        rows.append(" ".join(cells))
    return "\n".join(rows)


def success_rate(env, policy, episodes, seed) -> float:
    wins = 0
    for i in range(episodes):
        s, _ = env.reset(seed=seed + i)
        done, r = False, 0.0
        while not done:
            s, r, term, trunc, _ = env.step(int(policy[s]))
            done = term or trunc
        wins += r > 0
    return wins / episodes


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(DPConfig, argv)
    env = gym.make("FrozenLake-v1", map_name=cfg.map_name, is_slippery=cfg.is_slippery)
    mdp = TabularMDP.from_gymnasium(env, gamma=cfg.gamma)
    desc = ["".join(c.decode() if isinstance(c, bytes) else c for c in row) for row in env.unwrapped.desc]
    t0 = time.perf_counter()
    if cfg.algo == "vi":
        res = value_iteration(mdp, horizon=cfg.horizon or None, tol=cfg.tol, stop=cfg.stop)
    else:
        res = policy_iteration(mdp, evaluation=cfg.evaluation)
    seconds = time.perf_counter() - t0
    V, policy = (res.V[0], res.policy[0]) if cfg.horizon else (res.V, res.policy)
    what = "iterations (Bellman backups)" if cfg.algo == "vi" else "policy improvements"
    print(f"{mdp}\n{cfg.algo}: {res.iterations} {what}, {seconds * 1e3:.1f} ms, converged={res.converged}")
    print(f"\nV (gamma={cfg.gamma}{f', H={cfg.horizon}, h=0' if cfg.horizon else ''}):")
    print(grid(V, desc, lambda v: f"{v:.3f}"))
    print("\ngreedy policy:")
    print(grid(policy, desc, lambda a: ARROWS[a]))

    # Exact P(reach G within the time limit) of this policy: the undiscounted `limit`-step value (reward 1 only at G)
    limit = env.spec.max_episode_steps
    P_pi, r_pi = policy_matrices(mdp, policy)
    v = np.zeros(mdp.S)
    for _ in range(limit):
        v = r_pi + P_pi @ v
    p_goal = float(mdp.s0 @ v)
    rate = success_rate(env, policy, cfg.eval_episodes, cfg.seed)
    two_sigma = 2 * np.sqrt(p_goal * (1 - p_goal) / cfg.eval_episodes)
    print(f"\nP(goal within {limit} steps) from s0: exact {p_goal:.4f}, "
          f"env {rate:.4f} over {cfg.eval_episodes} episodes (+-{two_sigma:.4f})")
    print(f"V(s0) above = {float(mdp.s0 @ V):.4f}; exact discounted V^pi(s0) of the greedy policy = "
          f"{float(mdp.s0 @ policy_evaluation(mdp, policy)):.4f}")


if __name__ == "__main__":
    cli_main(main)
