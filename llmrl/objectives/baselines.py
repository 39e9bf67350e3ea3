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


def constant_baseline(returns: Tensor, mask: Tensor | None = None) -> Tensor:
    """b = mean of G_t over every valid step of the batch (a constant baseline); (N, T) -> (N, T)."""
    m = _mask(mask, returns)
    b = (returns * m).sum() / m.sum().clamp(min=1)
    return b.expand_as(returns)


def time_dependent_baseline(returns: Tensor, mask: Tensor | None = None) -> Tensor:
    """b_t = mean over trajectories alive at t of G_t (a time-dependent baseline); (N, T) -> (N, T)."""
    m = _mask(mask, returns)
    b = (returns * m).sum(dim=0) / m.sum(dim=0).clamp(min=1)
    return b.expand_as(returns)


def optimal_baseline(returns: Tensor, grad_sq: Tensor, mask: Tensor | None = None,
                     per_timestep: bool = True) -> Tensor:
    """Minimum-variance b = sum g^2 G / sum g^2 (Greensmith et al. 2004; seed ch. 7); (N, T) -> (N, T).

    `grad_sq` (N, T) is ||grad_theta log pi(a_t|s_t)||^2 for each step. Per time step (sums over the batch) by
    default, or one scalar for the batch with per_timestep=False. Steps with g = 0 everywhere get b = 0.
    """
    m = _mask(mask, returns)
    w = grad_sq.to(returns.dtype) * m
    if per_timestep:
        b = (w * returns).sum(dim=0) / w.sum(dim=0).clamp(min=torch.finfo(returns.dtype).tiny)
    else:
        b = (w * returns).sum() / w.sum().clamp(min=torch.finfo(returns.dtype).tiny)
    return b.expand_as(returns)


def value_loss(values: Tensor, returns: Tensor, old_values: Tensor | None = None, clip: float | None = None,
               mask: Tensor | None = None) -> Tensor:
    """Value regression 1/2 (V(s_t) - G_t)^2 (seed eq. 22), PPO-clipped around old_values when `clip` is set.

    Clipped form (PPO2): 1/2 max((V - G)^2, (V_old + clip(V - V_old, -c, c) - G)^2). Shapes (..., T); returns
    the mean over valid steps.
    """
    m = _mask(mask, values)
    loss = (values - returns) ** 2
    if clip is not None:
        if old_values is None:
            raise ValueError("value_loss: clip needs old_values (the values recorded at collection)")
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    return 0.5 * (loss * m).sum() / m.sum().clamp(min=1)
