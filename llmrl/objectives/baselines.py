"""Baselines for the REINFORCE estimator sum_t grad log pi(a_t|s_t) (G_t - b_t), and the value-baseline loss.

Any b that does not depend on the action a_t keeps the estimator unbiased (seed ch. 7); a good b shrinks its
variance. Inputs are per-step returns G (N, T) with a mask (N, T) for trajectories of different lengths; each
baseline returns a tensor shaped like G, to subtract from it.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _mask(mask: Tensor | None, like: Tensor) -> Tensor:
    return torch.ones_like(like) if mask is None else mask.to(like.dtype)


def _sum_of_others(x: Tensor) -> Tensor:
    """sum_{j != i} x_j over dim 0, for every row i: the rows before i plus the rows after i, never total - x_i,
    whose cancellation leaves garbage (a 0 denominator under a nonzero numerator) when row i dominates."""
    out, acc = torch.empty_like(x), torch.zeros_like(x[0])
    for i in range(len(x)):  # rows before i
        out[i] = acc
        acc += x[i]
    acc.zero_()
    for i in reversed(range(len(x))):  # rows after i
        out[i] += acc
        acc += x[i]
    return out


def _weighted_mean(num: Tensor, den: Tensor, per_timestep: bool, leave_one_out: bool, min_den: float) -> Tensor:
    """sum num / sum den over the batch (per time step: over dim 0 only), each row i optionally leaving out its
    own terms; num, den (N, T, ...) -> (N, T, ...)."""
    shape = num.shape
    if leave_one_out:
        if not per_timestep:  # one sum per row first
            num, den = num.sum(dim=1, keepdim=True), den.sum(dim=1, keepdim=True)
        num, den = _sum_of_others(num), _sum_of_others(den)
    else:
        dims = (0,) if per_timestep else (0, 1)
        num, den = num.sum(dim=dims, keepdim=True), den.sum(dim=dims, keepdim=True)
    return (num / den.clamp(min=min_den)).expand(shape)


def constant_baseline(returns: Tensor, mask: Tensor | None = None, leave_one_out: bool = False) -> Tensor:
    """b = mean of G_t over every valid step of the batch (a constant baseline); (N, T) -> (N, T).

    leave_one_out=True computes trajectory i's b from the other trajectories only, so that b does not depend on
    trajectory i's actions and the estimator stays exactly unbiased (the batch mean is biased by O(1/N)).
    """
    m = _mask(mask, returns)
    return _weighted_mean(returns * m, m, per_timestep=False, leave_one_out=leave_one_out, min_den=1)


def time_dependent_baseline(returns: Tensor, mask: Tensor | None = None, leave_one_out: bool = False) -> Tensor:
    """b_t = mean over trajectories alive at t of G_t (a time-dependent baseline); (N, T) -> (N, T).

    leave_one_out: as in `constant_baseline`, trajectory i's b_t averages the other trajectories alive at t.
    """
    m = _mask(mask, returns)
    return _weighted_mean(returns * m, m, per_timestep=True, leave_one_out=leave_one_out, min_den=1)


def optimal_baseline(returns: Tensor, grad_sq: Tensor, mask: Tensor | None = None,
                     per_timestep: bool = True, leave_one_out: bool = False) -> Tensor:
    """Minimum-variance baseline b_k = sum_i g_ik^2 G_i / sum_i g_ik^2, one per parameter k (seed ch. 7, "optimal
    (minimum variance)"; Peters & Schaal 2008); returns (N, T), grad_sq (N, T, P) -> b (N, T, P).

    `grad_sq[i, t, k]` = (d log pi(a_t|s_t) / d theta_k)^2 of step t of trajectory i. Each b_k minimizes the
    variance of its own component of the estimate, sum_i g_ik (G_i - b_k), so the per-parameter b lowers the
    variance of the whole estimate at least as much as any single number does. With grad_sq (N, T) =
    ||grad log pi||^2 it is that best single number, b = sum ||g||^2 G / sum ||g||^2 (minimizing the trace of the
    covariance), shape (N, T). The sums run over the batch per time step (the seed's reward-to-go form), or over
    every step with per_timestep=False. Where every weight is 0, b = 0. leave_one_out: as in `constant_baseline`,
    trajectory i's b uses only the other trajectories' sums.
    """
    m = _mask(mask, returns)
    if grad_sq.dim() == returns.dim() + 1:  # per parameter: the trailing axis is theta's
        returns, m = returns.unsqueeze(-1), m.unsqueeze(-1)
    w = grad_sq.to(returns.dtype) * m
    return _weighted_mean(w * returns, w, per_timestep=per_timestep, leave_one_out=leave_one_out,
                          min_den=torch.finfo(returns.dtype).tiny)


def policy_gradient_estimate(scores: Tensor, advantages: Tensor, mask: Tensor | None = None) -> Tensor:
    """The REINFORCE estimate g = 1/N sum_i sum_t grad log pi(a_t|s_t) A_t (seed eqs. 19-20) from per-step score
    vectors; scores (N, T, P), advantages (N, T), or (N, T, P) for a per-parameter baseline -> (P,).

    For advantages (N, T) it is minus the gradient of policy_gradient_loss(logp, A, mask, mode="sum") / N."""
    A = advantages if advantages.dim() == scores.dim() else advantages.unsqueeze(-1)
    m = _mask(mask, scores[..., 0]).unsqueeze(-1)
    return (scores * A * m).sum(dim=(0, 1)) / scores.shape[0]


def value_loss(values: Tensor, returns: Tensor, old_values: Tensor | None = None, clip: float | None = None,
               mask: Tensor | None = None) -> Tensor:
    """Value regression 1/2 (V(s_t) - G_t)^2 (seed eq. 22), PPO-clipped around old_values when `clip` is set.

    Clipped form (PPO2): 1/2 max((V - G)^2, (V_old + clip(V - V_old, -c, c) - G)^2). Shapes (..., T); returns
    the mean over valid steps.
    """
    loss = (values - returns) ** 2
    if clip is not None:
        if old_values is None:
            raise ValueError("value_loss: clip needs old_values (the values recorded at collection)")
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    if mask is None:  # every step is real
        return 0.5 * loss.mean()
    m = mask.to(loss.dtype)
    return 0.5 * (loss * m).sum() / m.sum().clamp(min=1)
