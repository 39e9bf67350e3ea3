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


def _weighted_mean(num: Tensor, den: Tensor, per_timestep: bool, leave_one_out: bool, min_den: float) -> Tensor:
    """sum num / sum den over the batch (per time step: over dim 0 only), each row i optionally leaving out its
    own terms; num, den (N, T) -> (N, T)."""
    dims = (0,) if per_timestep else (0, 1)
    total_num, total_den = num.sum(dim=dims, keepdim=True), den.sum(dim=dims, keepdim=True)
    if leave_one_out:  # take away what row i contributed to the totals
        total_num = total_num - (num if per_timestep else num.sum(dim=1, keepdim=True))
        total_den = total_den - (den if per_timestep else den.sum(dim=1, keepdim=True))
    return (total_num / total_den.clamp(min=min_den)).expand_as(num)


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
    """Minimum-variance b = sum g^2 G / sum g^2 (Greensmith et al. 2004; seed ch. 7); (N, T) -> (N, T).

    `grad_sq` (N, T) is ||grad_theta log pi(a_t|s_t)||^2 for each step. Per time step (sums over the batch) by
    default, or one scalar for the batch with per_timestep=False. Steps with g = 0 everywhere get b = 0.
    leave_one_out: as in `constant_baseline`, trajectory i's b uses only the other trajectories' sums.
    """
    m = _mask(mask, returns)
    w = grad_sq.to(returns.dtype) * m
    return _weighted_mean(w * returns, w, per_timestep=per_timestep, leave_one_out=leave_one_out,
                          min_den=torch.finfo(returns.dtype).tiny)


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
