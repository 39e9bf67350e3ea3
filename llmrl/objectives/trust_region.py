"""TRPO's natural-gradient step (Schulman et al. 2015, seed Algorithm 9): conjugate gradient on the KL Hessian
and a backtracking line search that enforces KL <= max_kl and an actual improvement.

Model-agnostic: the caller passes its parameters and closures that evaluate the surrogate loss and the mean
KL(pi_old || pi_theta) at the current parameters. A caller that accumulates over micro-batches or processes (the
LLM trainer) passes the pieces it computed itself instead: the loss and its gradient, the Fisher-vector product
(e.g. `softmax_fisher_vector_product` summed over micro-batches) and one pass that evaluates loss and KL together.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.autograd.forward_ad as fwAD
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


def softmax_fisher_vector_product(logits_fn: Callable[[list[Tensor]], Tensor], params: list[Tensor], v: Tensor,
                                  weights: Tensor) -> Tensor:
    """F v = sum_t w_t J_t^T (diag p_t - p_t p_t^T) J_t v for softmax policies p_t = softmax(z_t), J_t = dz_t/dtheta:
    the Gauss-Newton form of the Fisher (Schraudolph 2002; Martens 2014 sec. 9), which equals the Hessian of
    sum_t w_t KL(p_t(theta_old) || p_t(theta)) at theta = theta_old (there the KL's gradient in z vanishes).

    logits_fn(tensors) -> z (..., V) computes the logits from tensors standing in for `params` (same order and
    shapes); weights (...) (e.g. mask / token count); v (n,) flat like `params` -> (n,). J v is one forward-mode
    pass (jvp) and J^T u one forward and backward pass (vjp): no double backward, so it works through models
    whose backward is not itself differentiable. Every operation of logits_fn needs a forward-mode derivative.
    """
    tangents = [t.view_as(p) for p, t in zip(params, v.split([p.numel() for p in params]))]
    # J v without an autograd graph (the tangent's operations would otherwise be recorded next to the primal's,
    # several times the memory of a training forward), then J^T u by an ordinary forward and backward
    with torch.no_grad(), fwAD.dual_level():
        z, dz = fwAD.unpack_dual(logits_fn([fwAD.make_dual(p, t) for p, t in zip(params, tangents)]))
        prob = torch.softmax(z, dim=-1)
        pdz = prob * dz
        u = (pdz - prob * pdz.sum(-1, keepdim=True)) * weights.to(prob.dtype)[..., None]  # w (diag p - p p^T) J v
        del z, dz, prob, pdz
    grads = torch.autograd.grad(logits_fn(params), params, grad_outputs=u, materialize_grads=True)
    return torch.cat([g.reshape(-1) for g in grads])


@torch.no_grad()
def _evaluate(params: list[Tensor], theta: Tensor, evaluate: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    vector_to_parameters(theta, params)
    loss, kl = evaluate()
    return float(loss), float(kl)


def trust_region_step(params: Iterable[Tensor], loss_fn: Callable[[], Tensor] | None = None,
                      kl_fn: Callable[[], Tensor] | None = None, max_kl: float = 0.01, damping: float = 0.1,
                      cg_iters: int = 10, backtrack_iters: int = 10, backtrack_coef: float = 0.5,
                      accept_ratio: float = 0.1, *, loss_and_grad: tuple[float, Tensor] | None = None,
                      fvp: Callable[[Tensor], Tensor] | None = None,
                      evaluate: Callable[[], tuple[float, float]] | None = None, line_search: bool = True,
                      damped_scaling: bool = True, cg_tol: float = 1e-10) -> dict:
    """One TRPO update in place: x = (F + damping I)^-1 (-g) by CG, full step sqrt(2 max_kl / x^T (F + damping I) x) x,
    then backtracking until KL <= max_kl and the loss improves by >= accept_ratio of the linear prediction; else
    parameters are restored. With line_search=False the full step is taken (natural policy gradient, Kakade 2001)
    unless its loss or KL is not finite. damped_scaling=False sizes the step by the undamped quadratic model,
    1/2 s^T F s = max_kl (damping then only regularizes the direction; with damping large against F, the damped
    model gives steps far inside the trust region).

    loss_fn() is the surrogate loss to minimize (e.g. -mean ratio * A); kl_fn() the mean KL(pi_old || pi). A caller
    that accumulates them itself passes instead (keyword-only): loss_and_grad = (loss, flat gradient) at the current
    parameters; fvp(v) = F v without damping; evaluate() = (loss, KL) at the current parameters in one pass.
    Returns {"accepted", "kl", "improvement", "step_frac", "loss_before", "loss_after", "expected_improvement",
    "cg_iterations", "cg_residual"} (cg_residual = ||b - A x|| / ||b|| of the CG system, b = -g).
    """
    params = [p for p in params if p.requires_grad]
    if (loss_and_grad is None and loss_fn is None) or (fvp is None and kl_fn is None) or \
            (evaluate is None and (loss_fn is None or kl_fn is None)):
        raise ValueError("trust_region_step: pass loss_fn (or loss_and_grad and evaluate) and kl_fn (or fvp and "
                         "evaluate)")
    theta_old = parameters_to_vector(params).detach().clone()
    if loss_and_grad is None:
        loss = loss_fn()
        g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, params)]).detach()
        loss_before = float(loss.detach())
    else:
        loss_before, g = float(loss_and_grad[0]), loss_and_grad[1]
    b = -g  # the descent direction of the loss
    b_norm = float(b.norm())
    stats = {"cg_iterations": 0, "cg_residual": 0.0, "expected_improvement": 0.0}

    def rejected() -> dict:
        return dict(stats, accepted=False, kl=0.0, improvement=0.0, step_frac=0.0, loss_before=loss_before,
                    loss_after=loss_before)

    if not 0 < b_norm < math.inf:  # g = 0 (nothing to improve) or not finite: no step, nothing to search
        return rejected()
    if fvp is None:
        Avp = fisher_vector_product(kl_fn, params, damping)
    else:
        def Avp(v: Tensor) -> Tensor:
            return fvp(v) + damping * v
    if evaluate is None:
        def evaluate() -> tuple[float, float]:
            return float(loss_fn()), float(kl_fn())

    cg_calls = []

    def counted_Avp(v: Tensor) -> Tensor:
        cg_calls.append(1)
        return Avp(v)

    step_dir = conjugate_gradient(counted_Avp, b, iters=cg_iters, tol=cg_tol)
    As = Avp(step_dir)  # one more product: the step's length in the KL metric and the TRUE residual b - A x
    sAs = step_dir @ As
    if not damped_scaling:
        sAs = sAs - damping * (step_dir @ step_dir)
    full_step = step_dir * torch.sqrt(2.0 * max_kl / sAs.clamp(min=1e-12))
    expected = float(-(g @ full_step))  # first-order predicted decrease of the loss at frac = 1
    stats.update(cg_iterations=len(cg_calls), cg_residual=float((b - As).norm()) / b_norm,
                 expected_improvement=expected)
    if not expected > 0:  # not a descent direction (a non-finite F v, or CG broken down): nothing to search
        return rejected()
    frac = 1.0
    for _ in range(backtrack_iters if line_search else 1):
        new_loss, kl = _evaluate(params, theta_old + frac * full_step, evaluate)
        improvement = loss_before - new_loss
        if line_search:
            ok = kl <= max_kl and improvement > 0 and improvement >= accept_ratio * frac * expected
        else:
            ok = math.isfinite(new_loss) and math.isfinite(kl)
        if ok:
            return dict(stats, accepted=True, kl=kl, improvement=improvement, step_frac=frac,
                        loss_before=loss_before, loss_after=new_loss)
        frac *= backtrack_coef
    with torch.no_grad():
        vector_to_parameters(theta_old, params)
    return rejected()
