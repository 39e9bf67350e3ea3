"""TRPO pieces against dense linear algebra: CG vs a direct solve, the Fisher-vector product vs an explicit
Hessian, and the trust-region step's guarantees (KL within max_kl, improvement, natural-gradient direction)."""
import pytest
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from llmrl.objectives import conjugate_gradient, fisher_vector_product, trust_region_step

F64 = torch.float64


def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(8, 8, generator=g, dtype=F64)
    A = M @ M.T + 0.5 * torch.eye(8, dtype=F64)
    b = torch.randn(8, generator=g, dtype=F64)
    x = conjugate_gradient(lambda v: A @ v, b, iters=50, tol=1e-24)
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-8, atol=1e-10)
    # exact in at most n steps in exact arithmetic: a 3-eigenvalue matrix is solved in 3 iterations
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=F64))
    A3 = Q @ torch.diag(torch.tensor([1.0, 1, 1, 2, 2, 5, 5, 5], dtype=F64)) @ Q.T
    torch.testing.assert_close(conjugate_gradient(lambda v: A3 @ v, b, iters=3), torch.linalg.solve(A3, b))
    assert (conjugate_gradient(lambda v: A @ v, torch.zeros(8, dtype=F64)) == 0).all()


class _LinearSoftmaxPolicy:
    """pi(.|s) = softmax(x_s W + c) over A actions for S fixed random state features; params [W, c]."""

    def __init__(self, S=5, d=3, A=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.X = torch.randn(S, d, generator=g, dtype=F64)
        self.W = torch.randn(d, A, generator=g, dtype=F64).requires_grad_()
        self.c = torch.randn(A, generator=g, dtype=F64).requires_grad_()
        self.params = [self.W, self.c]
        self.old_logp = self.logp().detach()
        self.actions = torch.randint(0, A, (S,), generator=g)
        self.adv = torch.randn(S, generator=g, dtype=F64)

    def logp(self, W=None, c=None):
        W = self.W if W is None else W
        c = self.c if c is None else c
        return torch.log_softmax(self.X @ W + c, -1)

    def kl(self, W=None, c=None):  # mean over states of KL(pi_old || pi)
        return (self.old_logp.exp() * (self.old_logp - self.logp(W, c))).sum(-1).mean()

    def surrogate(self):  # -mean ratio * A of the sampled actions
        lp = self.logp().gather(-1, self.actions[:, None])[:, 0]
        old = self.old_logp.gather(-1, self.actions[:, None])[:, 0]
        return -((lp - old).exp() * self.adv).mean()

    def flat_fn(self, fn):
        d, A = self.W.shape

        def f(theta):
            return fn(theta[:d * A].view(d, A), theta[d * A:])
        return f


def test_fisher_vector_product_equals_explicit_hessian_and_fisher():
    pol = _LinearSoftmaxPolicy()
    theta = parameters_to_vector(pol.params).detach()
    H = torch.autograd.functional.hessian(pol.flat_fn(pol.kl), theta)
    # The KL Hessian at theta_old is the Fisher matrix E_s[J_s^T (diag p - p p^T) J_s], J_s = d logits / d theta.
    S, d = pol.X.shape
    A = pol.c.numel()
    p = pol.old_logp.exp()
    F = torch.zeros_like(H)
    for s in range(S):
        J = torch.cat([torch.kron(pol.X[s][:, None], torch.eye(A, dtype=F64)).reshape(d * A, A),
                       torch.eye(A, dtype=F64)], 0)  # d logits_a / d (W, c)
        F += J @ (torch.diag(p[s]) - torch.outer(p[s], p[s])) @ J.T / S
    torch.testing.assert_close(H, F)
    damping = 0.1
    Fvp = fisher_vector_product(pol.kl, pol.params, damping=damping)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(theta.numel(), generator=g, dtype=F64)
        torch.testing.assert_close(Fvp(v), H @ v + damping * v)


def test_trust_region_step_respects_max_kl_improves_and_follows_natural_gradient():
    pol = _LinearSoftmaxPolicy(seed=2)
    theta_old = parameters_to_vector(pol.params).detach().clone()
    loss_before = float(pol.surrogate().detach())
    g = torch.autograd.grad(pol.surrogate(), pol.params)
    g = torch.cat([x.reshape(-1) for x in g])
    H = torch.autograd.functional.hessian(pol.flat_fn(pol.kl), theta_old)
    max_kl, damping = 0.01, 0.1
    out = trust_region_step(pol.params, pol.surrogate, pol.kl, max_kl=max_kl, damping=damping, cg_iters=50)
    assert out["accepted"]
    assert out["loss_before"] == pytest.approx(loss_before)
    with torch.no_grad():
        kl_now, loss_now = float(pol.kl()), float(pol.surrogate())
    assert kl_now <= max_kl and out["kl"] == pytest.approx(kl_now)
    assert loss_now < loss_before and out["loss_after"] == pytest.approx(loss_now)
    assert out["improvement"] == pytest.approx(loss_before - loss_now)
    # the step is step_frac * sqrt(2 max_kl / s^T F s) s with s = (F + damping I)^-1 (-g)
    Fd = H + damping * torch.eye(H.shape[0], dtype=F64)
    s = torch.linalg.solve(Fd, -g)
    expected = theta_old + out["step_frac"] * (2 * max_kl / (s @ Fd @ s)).sqrt() * s
    # (CG stops at ||r||^2 <= 1e-10, so agreement is to ~1e-4 relative; the plain gradient is far off)
    step = parameters_to_vector(pol.params).detach() - theta_old
    torch.testing.assert_close(step, expected - theta_old, rtol=1e-3, atol=1e-5)
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    assert cos(step, s) > 1 - 1e-8 and cos(step, -g) < 0.99


def test_trust_region_step_restores_parameters_when_no_step_is_acceptable():
    pol = _LinearSoftmaxPolicy(seed=3)
    theta_old = parameters_to_vector(pol.params).detach().clone()
    # A KL that always exceeds max_kl (same Hessian, shifted up): every candidate is refused.
    out = trust_region_step(pol.params, pol.surrogate, lambda: pol.kl() + 1.0, max_kl=0.01)
    assert not out["accepted"] and out["step_frac"] == 0.0 and out["loss_after"] == out["loss_before"]
    assert torch.equal(parameters_to_vector(pol.params).detach(), theta_old)
    # A loss whose linear model lies (a steep bowl around theta_old): no step improves it.
    bowl = lambda: pol.surrogate() + 1e9 * ((parameters_to_vector(pol.params) - theta_old) ** 2).sum()  # noqa: E731
    out = trust_region_step(pol.params, bowl, pol.kl, max_kl=0.01)
    assert not out["accepted"]
    assert torch.equal(parameters_to_vector(pol.params).detach(), theta_old)
    # the parameters are still usable leaves afterwards
    assert all(p.requires_grad and p.is_leaf for p in pol.params)
    vector_to_parameters(theta_old, pol.params)
