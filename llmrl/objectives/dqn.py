"""DQN-family math beyond the one-step TD target (which lives in returns.py): the dueling aggregation, k-step
reward sums for replayed transitions, and the prioritized-replay priorities and importance-sampling weights."""
from __future__ import annotations

import torch
from torch import Tensor



def dueling_q_values(values: Tensor, advantages: Tensor) -> Tensor:
    """Dueling aggregation Q(s,a) = V(s) + A(s,a) - mean_a' A(s,a') (Wang 2016, eq. 9); V (..., 1), A (..., A).

    Subtracting the mean makes V and A identifiable (adding c to V and -c to A no longer gives the same Q).
    """
    return values + advantages - advantages.mean(dim=-1, keepdim=True)


def n_step_sums(rewards: Tensor, ends: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """k-step reward sum G = sum_{i<m} gamma^i r_{t+i} of a replayed window (seed eq. 23 before its bootstrap).

    rewards, ends (..., n): the window r_t..r_{t+n-1}; `ends[..., i] = 1` where the sum must stop after step i
    (episode over, or no newer data). m = 1 + index of the first end, or n. Returns (G (...), m (...) long);
    the caller bootstraps with gamma^m (1 - terminated_{t+m-1}) max_a Q(s_{t+m}, a), e.g. via `td_target`.
    """
    n = rewards.shape[-1]
    # alive[..., i] = 1 while no end occurred before step i: a closed form of the discounted sum stopped at the
    # first end, without a loop over the window (it runs once per replayed minibatch).
    not_ended = 1.0 - ends[..., :-1].to(rewards.dtype)
    alive = torch.cat([torch.ones_like(rewards[..., :1]), torch.cumprod(not_ended, dim=-1)], dim=-1)
    discounts = gamma ** torch.arange(n, dtype=rewards.dtype, device=rewards.device)
    G = (alive * discounts * rewards).sum(dim=-1)
    m = alive.sum(dim=-1).long()
    return G, m


def per_priorities(td_errors: Tensor, alpha: float, eps: float = 1e-6) -> Tensor:
    """Proportional priorities p_i^alpha with p_i = |delta_i| + eps (Schaul 2016, sec. 3.3); elementwise.

    eps keeps a transition with zero Bellman error sampleable.
    """
    return (td_errors.abs() + eps) ** alpha


def importance_sampling_weights(probs: Tensor, size: int, beta: float) -> Tensor:
    """IS weights w_i = (N P(i))^-beta / max_j w_j over the batch (Schaul 2016, sec. 3.4); probs (B,) -> (B,).

    They correct the bias of sampling i with probability P(i) instead of 1/N (fully at beta = 1); dividing by the
    batch maximum only ever scales updates down, for stability.
    """
    w = (size * probs) ** (-beta)
    return w / w.max()
