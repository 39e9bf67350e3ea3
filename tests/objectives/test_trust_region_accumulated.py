"""The trust-region step with caller-accumulated pieces (what the LLM trainer passes): the Gauss-Newton Fisher-vector
product vs the explicit KL Hessian, the callable path vs the autograd path, CG statistics against a hand
computation, the step sized by the undamped KL model, natural policy gradient (no line search), no search when
there is no descent direction."""
import pytest
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from llmrl.objectives import conjugate_gradient, softmax_fisher_vector_product, trust_region_step
from tests.objectives.test_trust_region import _LinearSoftmaxPolicy

F64 = torch.float64


def _logits_fn(pol):
    return lambda ts: pol.X @ ts[0] + ts[1]


def test_softmax_fisher_vector_product_is_the_hessian_of_the_weighted_kl():
    pol = _LinearSoftmaxPolicy()
    S = pol.X.shape[0]
    w = torch.rand(S, generator=torch.Generator().manual_seed(4), dtype=F64)  # per-state weights (e.g. a mask)

    def weighted_kl(W, c):
        return ((pol.old_logp.exp() * (pol.old_logp - pol.logp(W, c))).sum(-1) * w).sum()

    theta = parameters_to_vector(pol.params).detach()
    H = torch.autograd.functional.hessian(pol.flat_fn(weighted_kl), theta)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(theta.numel(), generator=g, dtype=F64)
        torch.testing.assert_close(softmax_fisher_vector_product(_logits_fn(pol), pol.params, v, w), H @ v)
    # weights that sum over two halves equal the whole (micro-batch accumulation)
    v = torch.randn(theta.numel(), generator=g, dtype=F64)
    half = torch.arange(S) < S // 2
    parts = [softmax_fisher_vector_product(lambda ts, m=m: (pol.X @ ts[0] + ts[1])[m], pol.params, v, w[m])
             for m in (half, ~half)]
    torch.testing.assert_close(parts[0] + parts[1], H @ v)


def test_accumulated_pieces_give_the_same_step_as_autograd():
    """loss_and_grad + fvp + evaluate (what a micro-batching caller passes) == loss_fn + kl_fn."""
    out, thetas = [], []
    for accumulated in (False, True):
        pol = _LinearSoftmaxPolicy(seed=2)
        kw = dict(max_kl=0.01, damping=0.1, cg_iters=50)
        if accumulated:
            loss = pol.surrogate()
            g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, pol.params)])
            w = torch.full((pol.X.shape[0],), 1.0 / pol.X.shape[0], dtype=F64)
            res = trust_region_step(pol.params, loss_and_grad=(loss.item(), g),
                                    fvp=lambda v: softmax_fisher_vector_product(_logits_fn(pol), pol.params, v, w),
                                    evaluate=lambda: (pol.surrogate(), pol.kl()), **kw)
        else:
            res = trust_region_step(pol.params, pol.surrogate, pol.kl, **kw)
        out.append(res)
        thetas.append(parameters_to_vector(pol.params).detach())
    assert out[0]["accepted"] and out[1]["accepted"]
    torch.testing.assert_close(thetas[0], thetas[1])
    for k in ("kl", "improvement", "step_frac", "loss_before", "loss_after", "expected_improvement",
              "cg_iterations"):
        assert out[0][k] == pytest.approx(out[1][k], rel=1e-6, abs=1e-12), k


def _quadratic_problem(eigenvalues, seed=0):
    """A loss linear in theta, g.(theta - theta0), and a KL 0.99 of its quadratic model 1/2 d^T F d (so that a step
    sized to the model is inside max_kl, not on it up to rounding): the trust-region step is known in closed form."""
    g = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    Fm = Q @ torch.diag(torch.tensor(eigenvalues, dtype=F64)) @ Q.T
    grad = torch.randn(n, generator=g, dtype=F64)
    theta = torch.randn(n, generator=g, dtype=F64).requires_grad_()
    theta0 = theta.detach().clone()

    def evaluate():
        d = theta.detach() - theta0
        return grad @ d, 0.99 * 0.5 * d @ Fm @ d

    return Fm, grad, theta, theta0, evaluate


def test_cg_statistics_and_undamped_step_size():
    Fm, grad, theta, theta0, evaluate = _quadratic_problem([1.0, 1, 2, 2, 5, 5])
    max_kl, damping = 0.01, 0.3
    res = trust_region_step([theta], loss_and_grad=(0.0, grad), fvp=lambda v: Fm @ v, evaluate=evaluate,
                            max_kl=max_kl, damping=damping, cg_iters=20, damped_scaling=False, cg_tol=1e-28)
    A = Fm + damping * torch.eye(6, dtype=F64)
    s = torch.linalg.solve(A, -grad)
    step = (2 * max_kl / (s @ Fm @ s)).sqrt() * s  # the undamped quadratic KL of the full step is max_kl
    assert res["accepted"] and res["step_frac"] == 1.0
    torch.testing.assert_close(theta.detach() - theta0, step)
    assert res["kl"] == pytest.approx(0.99 * max_kl) and res["improvement"] == pytest.approx(-(grad @ step).item())
    # A = F + damping I has 3 distinct eigenvalues: CG is exact after 3 iterations and stops there
    assert res["cg_iterations"] == 3 and res["cg_residual"] < 1e-10
    # capped at one iteration, CG is one steepest-descent step x = (b.b / b.Ab) b, b = -g; residual by hand
    theta.data.copy_(theta0)
    res = trust_region_step([theta], loss_and_grad=(0.0, grad), fvp=lambda v: Fm @ v, evaluate=evaluate,
                            max_kl=max_kl, damping=damping, cg_iters=1)
    b = -grad
    x = (b @ b) / (b @ A @ b) * b
    assert res["cg_iterations"] == 1
    assert res["cg_residual"] == pytest.approx(((b - A @ x).norm() / b.norm()).item())
    torch.testing.assert_close(conjugate_gradient(lambda v: A @ v, b, iters=1), x)


def test_natural_policy_gradient_takes_the_full_step_without_a_search():
    Fm, grad, theta, theta0, evaluate = _quadratic_problem([0.5, 1.0, 3.0], seed=1)
    worse = lambda: (evaluate()[0] + 1.0, evaluate()[1] + 1.0)  # noqa: E731  (a step TRPO would refuse)
    kw = dict(loss_and_grad=(0.0, grad), fvp=lambda v: Fm @ v, evaluate=worse, max_kl=0.01, damping=0.0,
              cg_iters=10)
    assert not trust_region_step([theta], **kw)["accepted"] and torch.equal(theta.detach(), theta0)
    res = trust_region_step([theta], line_search=False, **kw)
    s = torch.linalg.solve(Fm, -grad)
    assert res["accepted"] and res["step_frac"] == 1.0
    torch.testing.assert_close(theta.detach() - theta0, (2 * 0.01 / (s @ Fm @ s)).sqrt() * s)
    # a non-finite measurement is refused even without the search
    theta.data.copy_(theta0)
    res = trust_region_step([theta], line_search=False, **dict(kw, evaluate=lambda: (float("nan"), 0.0)))
    assert not res["accepted"] and torch.equal(theta.detach(), theta0)


def test_no_descent_direction_means_no_search_and_no_change():
    Fm, _, theta, theta0, evaluate = _quadratic_problem([1.0, 2.0])
    calls = []

    def counted():
        calls.append(1)
        return evaluate()
    res = trust_region_step([theta], loss_and_grad=(0.0, torch.zeros(2, dtype=F64)), fvp=lambda v: Fm @ v,
                            evaluate=counted)
    assert not res["accepted"] and not calls and torch.equal(theta.detach(), theta0)
    assert res["cg_iterations"] == 0 and res["cg_residual"] == 0.0
    with pytest.raises(ValueError, match="pass loss_fn"):
        trust_region_step([theta], loss_and_grad=(0.0, torch.zeros(2, dtype=F64)))
    vector_to_parameters(theta0, [theta])
