"""TRPO's natural-gradient step (Schulman et al. 2015, seed Algorithm 9): conjugate gradient on the KL Hessian
and a backtracking line search that enforces KL <= max_kl and an actual improvement.

Model-agnostic: the caller passes its parameters and closures that evaluate the surrogate loss and the mean
KL(pi_old || pi_theta) at the current parameters.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters


def conjugate_gradient(Avp: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, tol: float = 1e-10) -> Tensor:
    """Solve A x = b for symmetric positive-definite A given only v -> A v (Hestenes-Stiefel CG); b (n,) -> x (n,)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr <= tol:
            break
        Ap = Avp(p)
        alpha = rr / (p @ Ap)
        x += alpha * p
        r -= alpha * Ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def fisher_vector_product(kl_fn: Callable[[], Tensor], params: list[Tensor],
                          damping: float = 0.1) -> Callable[[Tensor], Tensor]:
    """v -> (H_KL + damping I) v, H_KL the Hessian of mean KL(pi_old || pi_theta) at theta = theta_old (which is
    the Fisher information matrix), by double back-propagation (Pearlmutter 1994); v (n,) -> (n,)."""
    kl = kl_fn()
    grads = torch.autograd.grad(kl, params, create_graph=True)
    flat_grad = torch.cat([g.reshape(-1) for g in grads])

    def Fvp(v: Tensor) -> Tensor:
        hv = torch.autograd.grad(flat_grad @ v, params, retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv]) + damping * v

    return Fvp


@torch.no_grad()
def _evaluate(params: list[Tensor], theta: Tensor, loss_fn, kl_fn) -> tuple[float, float]:
    vector_to_parameters(theta, params)
    return float(loss_fn()), float(kl_fn())


def trust_region_step(params: Iterable[Tensor], loss_fn: Callable[[], Tensor], kl_fn: Callable[[], Tensor],
                      max_kl: float = 0.01, damping: float = 0.1, cg_iters: int = 10, backtrack_iters: int = 10,
                      backtrack_coef: float = 0.5, accept_ratio: float = 0.1) -> dict:
    """One TRPO update in place: x = F^-1 g by CG, full step sqrt(2 max_kl / x^T F x) x, then backtracking until
    KL <= max_kl and the loss improves by >= accept_ratio of the linear prediction; else parameters are restored.

    loss_fn() is the surrogate loss to minimize (e.g. -mean ratio * A); kl_fn() the mean KL(pi_old || pi).
    Returns {"accepted", "kl", "improvement", "step_frac", "loss_before", "loss_after"}.
    """
    params = [p for p in params if p.requires_grad]
    theta_old = parameters_to_vector(params).detach().clone()
    loss = loss_fn()
    g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, params)]).detach()
    Fvp = fisher_vector_product(kl_fn, params, damping)
    step_dir = conjugate_gradient(Fvp, -g, iters=cg_iters)  # descent direction of the loss
    sFs = (step_dir @ Fvp(step_dir)).clamp(min=1e-12)
    full_step = step_dir * torch.sqrt(2.0 * max_kl / sFs)
    expected = -(g @ full_step)  # first-order predicted decrease of the loss at frac = 1
    loss_before = float(loss.detach())
    frac = 1.0
    for _ in range(backtrack_iters):
        new_loss, kl = _evaluate(params, theta_old + frac * full_step, loss_fn, kl_fn)
        improvement = loss_before - new_loss
        if kl <= max_kl and improvement > 0 and improvement >= accept_ratio * frac * float(expected):
            return {"accepted": True, "kl": kl, "improvement": improvement, "step_frac": frac,
                    "loss_before": loss_before, "loss_after": new_loss}
        frac *= backtrack_coef
    with torch.no_grad():
        vector_to_parameters(theta_old, params)
    return {"accepted": False, "kl": 0.0, "improvement": 0.0, "step_frac": 0.0,
            "loss_before": loss_before, "loss_after": loss_before}
