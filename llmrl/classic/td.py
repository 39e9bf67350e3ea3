"""Sample-based tabular RL on any gymnasium env with Discrete observations and actions: epsilon-greedy
(Algorithm 5), Q-learning (Algorithm 4), TD(0) policy evaluation (eq. 11) and the TD policy-improvement loop.

Every learner runs `total_timesteps` env steps through one episode loop (`run_episodes`) and shows only what
is its own: how it acts and its update rule. Step sizes alpha_t and exploration rates epsilon_t are numbers or
schedules (llmrl.classic.schedules); epsilon_t is indexed by the env step, alpha_t by the visits of the updated
entry (or the env step, with alpha_by="steps").

Truncation rule (as in the deep agents): a time-limit truncation still bootstraps from V(s') / max Q(s'); only a
true termination (s' terminal) drops the next-state term.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from .schedules import Schedule, as_schedule


@dataclass
class TDResult:
    """What a TD run learned: Q (S, A) and/or V (S,), the last policy (S, A) where one is improved, and the
    undiscounted return and length of every training episode that ended within the budget (episodes,)."""
    Q: np.ndarray | None
    V: np.ndarray | None
    returns: np.ndarray
    lengths: np.ndarray
    policy: np.ndarray | None = None


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


def sample_action(probs: np.ndarray, u: float) -> int:
    """Inverse-CDF draw from probabilities (A,) with a uniform u in [0, 1): the first a with cdf(a) > u cdf(A-1).
    The strict ">" (a right-sided search) never returns an action of probability 0, also for u = 0."""
    cdf = np.cumsum(probs)
    return int(np.searchsorted(cdf, u * cdf[-1], side="right"))


class StepSize:
    """alpha_t of a tabular update, with t = the visits of the updated entry so far (`by="visits"`: per-entry
    Robbins-Monro step sizes) or the env steps so far (`by="steps"`); each call counts one update."""

    def __init__(self, alpha: float | Schedule, by: str, shape: tuple[int, ...]):
        if by not in ("visits", "steps"):
            raise ValueError(f"alpha_by must be 'visits' (t = visits of the updated entry) or 'steps', got {by!r}")
        self.schedule, self.by = as_schedule(alpha, "alpha", 0.0, 1.0), by
        self.visits, self.steps = np.zeros(shape, dtype=np.int64), 0

    def __call__(self, entry: tuple[int, ...] | int) -> float:
        t = int(self.visits[entry]) if self.by == "visits" else self.steps
        self.visits[entry] += 1
        self.steps += 1
        return self.schedule(t)


# ------------------------------------------------------------------------------------------------ the loop
def run_episodes(env: gym.Env, total_timesteps: int, seed: int, act: Callable[[int, int], int],
                 update: Callable[[int, int, float, int, bool], None],
                 progress_bar: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The loop of every TD learner: episodes in `env` for `total_timesteps` env steps, acting with
    a = act(s, t) (t = env steps so far) and calling update(s, a, r, s', terminated) after each step. The first
    reset is seeded with `seed`, later ones continue the env's random stream. Returns the undiscounted return and
    the length of each episode that ended within the budget (the last one may be cut)."""
    if total_timesteps < 1:
        raise ValueError(f"total_timesteps must be >= 1, got {total_timesteps}")
    returns, lengths = [], []
    ret, length, done = 0.0, 0, False
    s, _ = env.reset(seed=seed)
    for t in tqdm(range(total_timesteps), disable=not progress_bar, unit="step", dynamic_ncols=True):
        if done:
            s, _ = env.reset()
            ret, length = 0.0, 0
        a = act(s, t)
        s2, r, terminated, truncated, _ = env.step(a)
        update(s, a, float(r), s2, bool(terminated))
        ret, length = ret + float(r), length + 1
        s, done = s2, terminated or truncated
        if done:
            returns.append(ret)
            lengths.append(length)
    return np.array(returns, dtype=float), np.array(lengths, dtype=np.int64)


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


def _check_gamma(fn: str, gamma: float) -> None:
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"{fn} gamma must be in [0, 1], got {gamma}")


def _initial(table: np.ndarray | None, shape: tuple, name: str) -> np.ndarray:
    if table is None:
        return np.zeros(shape)
    table = np.array(table, dtype=float)
    if table.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {table.shape}")
    return table


# ------------------------------------------------------------------------------------------------ learners
def q_learning(env: gym.Env, total_timesteps: int, gamma: float = 0.99, alpha: float | Schedule = 0.1,
               epsilon: float | Schedule = 0.1, seed: int = 0, alpha_by: str = "visits",
               Q0: np.ndarray | None = None, progress_bar: bool = False) -> TDResult:
    """Q-learning (Algorithm 4): act epsilon-greedily, then Q(s,a) += alpha (r + gamma max_a' Q(s',a') - Q(s,a)),
    with the max term dropped only when s' is terminal. Returns Q (S, A) and the per-episode returns."""
    S, A = _sizes(env)
    _check_gamma("q_learning", gamma)
    step_size, eps = StepSize(alpha, alpha_by, (S, A)), as_schedule(epsilon, "epsilon", 0.0, 1.0)
    rng = np.random.default_rng(seed)
    Q = _initial(Q0, (S, A), "Q0")

    def act(s, t):
        return epsilon_greedy(Q[s], eps(t), rng)

    def update(s, a, r, s2, terminated):
        target = r if terminated else r + gamma * Q[s2].max()
        Q[s, a] += step_size((s, a)) * (target - Q[s, a])

    returns, lengths = run_episodes(env, total_timesteps, seed, act, update, progress_bar)
    return TDResult(Q=Q, V=Q.max(axis=1), returns=returns, lengths=lengths)


def td0_evaluation(env: gym.Env, policy: np.ndarray, total_timesteps: int, gamma: float = 0.99,
                   alpha: float | Schedule = 0.1, seed: int = 0, alpha_by: str = "visits",
                   V0: np.ndarray | None = None, progress_bar: bool = False) -> TDResult:
    """TD(0) policy evaluation (eq. 11): V(s) += alpha (r + gamma V(s') - V(s)) along the episodes of the fixed
    int (S,) or stochastic (S, A) policy, V(s') dropped only when s' is terminal. Returns V (S,)."""
    S, A = _sizes(env)
    _check_gamma("td0_evaluation", gamma)
    step_size, probs = StepSize(alpha, alpha_by, (S,)), _policy_probs(policy, S, A)
    rng = np.random.default_rng(seed)
    V = _initial(V0, (S,), "V0")

    def act(s, t):
        return sample_action(probs[s], rng.random())

    def update(s, a, r, s2, terminated):
        target = r if terminated else r + gamma * V[s2]
        V[s] += step_size(s) * (target - V[s])

    returns, lengths = run_episodes(env, total_timesteps, seed, act, update, progress_bar)
    return TDResult(Q=None, V=V, returns=returns, lengths=lengths, policy=probs)


def td_policy_improvement(env: gym.Env, total_timesteps: int, steps_per_round: int = 1000, gamma: float = 0.99,
                          alpha: float | Schedule = 0.1, epsilon: float = 0.1, seed: int = 0,
                          alpha_by: str = "visits", progress_bar: bool = False) -> TDResult:
    """Policy improvement with TD (generalized policy iteration, Sutton & Barto 6.4): the current policy pi is
    evaluated by TD(0) on Q, Q(s,a) += alpha (r + gamma sum_a' pi(a'|s') Q(s',a') - Q(s,a)), for
    `steps_per_round` env steps of pi, then improved, pi <- epsilon-greedy(Q). Q carries over between rounds;
    epsilon > 0 keeps every action tried so that Q stays estimable without a model. Returns Q and pi (S, A)."""
    S, A = _sizes(env)
    _check_gamma("td_policy_improvement", gamma)
    if not 0.0 < epsilon <= 1.0:
        raise ValueError(f"td_policy_improvement epsilon must be in (0, 1] so every action keeps being tried, "
                         f"got {epsilon}")
    if steps_per_round < 1:
        raise ValueError(f"td_policy_improvement steps_per_round must be >= 1, got {steps_per_round}")
    step_size = StepSize(alpha, alpha_by, (S, A))
    rng = np.random.default_rng(seed)
    Q = np.zeros((S, A))
    pi = np.full((S, A), 1.0 / A)

    def act(s, t):
        return sample_action(pi[s], rng.random())

    def update(s, a, r, s2, terminated):
        nonlocal pi
        target = r if terminated else r + gamma * pi[s2] @ Q[s2]
        Q[s, a] += step_size((s, a)) * (target - Q[s, a])
        if step_size.steps % steps_per_round == 0:  # the round's evaluation is over: improvement
            pi = epsilon_greedy_policy(Q, epsilon)

    returns, lengths = run_episodes(env, total_timesteps, seed, act, update, progress_bar)
    return TDResult(Q=Q, V=(pi * Q).sum(axis=1), returns=returns, lengths=lengths, policy=pi)
