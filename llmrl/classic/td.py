"""Sample-based tabular RL on any gymnasium env with Discrete observations and actions: epsilon-greedy
(Algorithm 5), step-size and exploration schedules, Q-learning (Algorithm 4), TD(0) policy evaluation (eq. 11)
and the TD policy-improvement loop.

Truncation rule (as in the deep agents): a time-limit truncation still bootstraps from V(s') / max Q(s'); only a
true termination (s' terminal) drops the next-state term.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gymnasium as gym
import numpy as np

Schedule = Callable[[int], float]


@dataclass
class TDResult:
    """What a TD run learned: Q (S, A) and/or V (S,), the last policy (S, A) where one is improved, and the
    undiscounted return and length of every training episode (episodes,)."""
    Q: np.ndarray | None
    V: np.ndarray | None
    returns: np.ndarray
    lengths: np.ndarray
    policy: np.ndarray | None = None


# ------------------------------------------------------------------------------------------------ schedules
def constant_schedule(value: float) -> Schedule:
    """x(t) = value."""
    return lambda t: value


def linear_schedule(start: float, end: float, duration: int) -> Schedule:
    """x(t) goes linearly from `start` at t = 0 to `end` at t = duration, then stays at `end`."""
    if duration < 1:
        raise ValueError(f"linear_schedule duration must be >= 1, got {duration}")
    return lambda t: start + (end - start) * min(t, duration) / duration


def power_schedule(p: float = 0.8, c: float = 1.0) -> Schedule:
    """x(t) = c / (t + 1)^p: for 1/2 < p <= 1, sum_t x = inf and sum_t x^2 < inf (Robbins-Monro), the step sizes
    under which Q-learning and TD(0) converge w.p. 1 when t counts the visits of each (s, a) or s."""
    if not 0.5 < p <= 1.0:
        raise ValueError(f"power_schedule p must be in (0.5, 1] for sum x = inf and sum x^2 < inf, got {p}; "
                         "use constant_schedule for a fixed step")
    return lambda t: c / (t + 1) ** p


def _schedule(x: float | Schedule, name: str, low: float, high: float) -> Schedule:
    if callable(x):
        return x
    if not low <= x <= high:
        raise ValueError(f"{name} must be in [{low}, {high}] or a schedule t -> value, got {x}")
    return constant_schedule(float(x))


# ------------------------------------------------------------------------------------------------- policies
def epsilon_greedy(q: np.ndarray, epsilon: float, rng: np.random.Generator) -> int:
    """Algorithm 5: a uniform random action w.p. epsilon, else argmax_a q(a); q (A,) -> action.

    Ties among the maximizers break uniformly at random: with Q initialized to zeros, argmax's lowest-index rule
    would make the "greedy" choice always action 0 and bias early exploration."""
    if rng.random() < epsilon:
        return int(rng.integers(q.shape[0]))
    best = np.flatnonzero(q == q.max())
    return int(best[0]) if best.size == 1 else int(rng.choice(best))


def epsilon_greedy_policy(Q: np.ndarray, epsilon: float) -> np.ndarray:
    """The probabilities of `epsilon_greedy`: pi(a|s) = epsilon/A + (1 - epsilon) [a in argmax] / #argmax; (S, A)."""
    S, A = Q.shape
    best = Q == Q.max(axis=1, keepdims=True)
    return epsilon / A + (1.0 - epsilon) * best / best.sum(axis=1, keepdims=True)


def _sizes(env: gym.Env) -> tuple[int, int]:
    if not (isinstance(env.observation_space, gym.spaces.Discrete)
            and isinstance(env.action_space, gym.spaces.Discrete)):
        raise ValueError(f"tabular TD needs Discrete observation and action spaces, got {env.observation_space} "
                         f"and {env.action_space}")
    return int(env.observation_space.n), int(env.action_space.n)


def _policy_probs(policy: np.ndarray, S: int, A: int) -> np.ndarray:
    """An int (S,) or probability (S, A) policy as (S, A) probabilities."""
    policy = np.asarray(policy)
    if policy.shape == (S,) and np.issubdtype(policy.dtype, np.integer) and 0 <= policy.min() and policy.max() < A:
        return np.eye(A)[policy]
    if policy.shape == (S, A) and (policy >= 0).all() and np.allclose(policy.sum(axis=1), 1.0):
        return policy.astype(float)
    raise ValueError(f"policy must be ints in [0, {A}) of shape ({S},) or probabilities of shape ({S}, {A}), "
                     f"got {policy.dtype} {policy.shape}")


def _check_run(fn: str, episodes: int, gamma: float, alpha_by: str) -> None:
    if episodes < 1:
        raise ValueError(f"{fn} episodes must be >= 1, got {episodes}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"{fn} gamma must be in [0, 1], got {gamma}")
    if alpha_by not in ("visits", "steps"):
        raise ValueError(f"{fn} alpha_by must be 'visits' (t = visits of the updated entry) or 'steps', "
                         f"got {alpha_by!r}")


def _initial(table: np.ndarray | None, shape: tuple, name: str) -> np.ndarray:
    if table is None:
        return np.zeros(shape)
    table = np.array(table, dtype=float)
    if table.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {table.shape}")
    return table


# ------------------------------------------------------------------------------------------------ learners
def q_learning(env: gym.Env, episodes: int, gamma: float = 0.99, alpha: float | Schedule = 0.1,
               epsilon: float | Schedule = 0.1, seed: int = 0, alpha_by: str = "visits",
               Q0: np.ndarray | None = None) -> TDResult:
    """Q-learning (Algorithm 4): act epsilon-greedily, then Q(s,a) += alpha (r + gamma max_a' Q(s',a') - Q(s,a)),
    with the max term dropped only when s' is terminal. alpha(t): t = visits of (s, a) so far (or env steps);
    epsilon(t): t = episode index. Returns Q (S, A) and the per-episode returns."""
    S, A = _sizes(env)
    _check_run("q_learning", episodes, gamma, alpha_by)
    alpha_t, eps_t = _schedule(alpha, "alpha", 0.0, 1.0), _schedule(epsilon, "epsilon", 0.0, 1.0)
    rng = np.random.default_rng(seed)
    Q = _initial(Q0, (S, A), "Q0")
    visits = np.zeros((S, A), dtype=np.int64)
    returns, lengths, step = np.zeros(episodes), np.zeros(episodes, dtype=np.int64), 0
    for ep in range(episodes):
        s, _ = env.reset(seed=seed if ep == 0 else None)  # seed once; later resets continue the env's stream
        eps, done = eps_t(ep), False
        while not done:
            a = epsilon_greedy(Q[s], eps, rng)
            s2, r, terminated, truncated, _ = env.step(a)
            lr = alpha_t(int(visits[s, a]) if alpha_by == "visits" else step)
            target = r if terminated else r + gamma * Q[s2].max()
            Q[s, a] += lr * (target - Q[s, a])
            visits[s, a] += 1
            step += 1
            returns[ep] += r
            lengths[ep] += 1
            s, done = s2, terminated or truncated
    return TDResult(Q=Q, V=Q.max(axis=1), returns=returns, lengths=lengths)


def td0_evaluation(env: gym.Env, policy: np.ndarray, episodes: int, gamma: float = 0.99,
                   alpha: float | Schedule = 0.1, seed: int = 0, alpha_by: str = "visits",
                   V0: np.ndarray | None = None) -> TDResult:
    """TD(0) policy evaluation (eq. 11): V(s) += alpha (r + gamma V(s') - V(s)) along episodes of the fixed
    int (S,) or stochastic (S, A) policy, V(s') dropped only when s' is terminal. Returns V (S,)."""
    S, A = _sizes(env)
    _check_run("td0_evaluation", episodes, gamma, alpha_by)
    alpha_t = _schedule(alpha, "alpha", 0.0, 1.0)
    probs = _policy_probs(policy, S, A)
    cdf = np.cumsum(probs, axis=1)
    rng = np.random.default_rng(seed)
    V = _initial(V0, (S,), "V0")
    visits = np.zeros(S, dtype=np.int64)
    returns, lengths, step = np.zeros(episodes), np.zeros(episodes, dtype=np.int64), 0
    for ep in range(episodes):
        s, _ = env.reset(seed=seed if ep == 0 else None)
        done = False
        while not done:
            a = min(int(np.searchsorted(cdf[s], rng.random() * cdf[s, -1], side="right")), A - 1)
            s2, r, terminated, truncated, _ = env.step(a)
            lr = alpha_t(int(visits[s]) if alpha_by == "visits" else step)
            target = r if terminated else r + gamma * V[s2]
            V[s] += lr * (target - V[s])
            visits[s] += 1
            step += 1
            returns[ep] += r
            lengths[ep] += 1
            s, done = s2, terminated or truncated
    return TDResult(Q=None, V=V, returns=returns, lengths=lengths, policy=probs)


def td_policy_improvement(env: gym.Env, rounds: int = 20, episodes_per_round: int = 100, gamma: float = 0.99,
                          alpha: float | Schedule = 0.1, epsilon: float = 0.1, seed: int = 0,
                          alpha_by: str = "visits") -> TDResult:
    """Policy improvement with TD (generalized policy iteration, Sutton & Barto 6.4): each round evaluates the
    current policy pi with TD(0) on Q, Q(s,a) += alpha (r + gamma sum_a' pi(a'|s') Q(s',a') - Q(s,a)) for
    `episodes_per_round` episodes of pi, then improves pi <- epsilon-greedy(Q). Q carries over between rounds;
    epsilon > 0 keeps every action tried so that Q stays estimable without a model. Returns Q and pi (S, A)."""
    S, A = _sizes(env)
    _check_run("td_policy_improvement", rounds * episodes_per_round, gamma, alpha_by)
    alpha_t = _schedule(alpha, "alpha", 0.0, 1.0)
    if not 0.0 < epsilon <= 1.0:
        raise ValueError(f"td_policy_improvement epsilon must be in (0, 1] so every action keeps being tried, "
                         f"got {epsilon}")
    rng = np.random.default_rng(seed)
    Q = np.zeros((S, A))
    pi = np.full((S, A), 1.0 / A)
    visits = np.zeros((S, A), dtype=np.int64)
    n = rounds * episodes_per_round
    returns, lengths, step, ep = np.zeros(n), np.zeros(n, dtype=np.int64), 0, 0
    for _ in range(rounds):
        cdf = np.cumsum(pi, axis=1)
        for _ in range(episodes_per_round):  # evaluation of the fixed pi
            s, _ = env.reset(seed=seed if ep == 0 else None)
            done = False
            while not done:
                a = min(int(np.searchsorted(cdf[s], rng.random() * cdf[s, -1], side="right")), A - 1)
                s2, r, terminated, truncated, _ = env.step(a)
                lr = alpha_t(int(visits[s, a]) if alpha_by == "visits" else step)
                target = r if terminated else r + gamma * pi[s2] @ Q[s2]
                Q[s, a] += lr * (target - Q[s, a])
                visits[s, a] += 1
                step += 1
                returns[ep] += r
                lengths[ep] += 1
                s, done = s2, terminated or truncated
            ep += 1
        pi = epsilon_greedy_policy(Q, epsilon)  # improvement
    return TDResult(Q=Q, V=(pi * Q).sum(axis=1), returns=returns, lengths=lengths, policy=pi)
