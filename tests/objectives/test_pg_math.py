"""Objectives added for the policy-gradient agents: leave-one-out batch baselines (against brute force over the
other trajectories) and the importance-sampled surrogate of TRPO."""
import torch

from llmrl.objectives import (constant_baseline, optimal_baseline, policy_gradient_loss, surrogate_loss,
                              time_dependent_baseline)


def _batch():
    torch.manual_seed(0)
    G = torch.randn(5, 7).double() * 3 + 2
    mask = torch.ones(5, 7, dtype=torch.float64)
    for i, L in enumerate([7, 3, 5, 1, 6]):
        mask[i, L:] = 0
    w = torch.rand(5, 7).double() + 0.1
    return G, mask, w


def test_leave_one_out_baselines_equal_the_baseline_of_the_other_trajectories():
    G, mask, w = _batch()
    loo_c = constant_baseline(G, mask, leave_one_out=True)
    loo_t = time_dependent_baseline(G, mask, leave_one_out=True)
    loo_o = optimal_baseline(G, w, mask, leave_one_out=True)
    loo_o_scalar = optimal_baseline(G, w, mask, per_timestep=False, leave_one_out=True)
    for i in range(5):
        others = [j for j in range(5) if j != i]
        Go, mo, wo = G[others], mask[others], w[others]
        torch.testing.assert_close(loo_c[i], torch.full((7,), float((Go * mo).sum() / mo.sum()), dtype=G.dtype))
        for t in range(7):
            alive = mo[:, t].sum()
            expected = (Go[:, t] * mo[:, t]).sum() / alive if alive > 0 else torch.tensor(0.0, dtype=G.dtype)
            torch.testing.assert_close(loo_t[i, t], expected)
            ww = wo[:, t] * mo[:, t]
            expected = (ww * Go[:, t]).sum() / ww.sum() if alive > 0 else torch.tensor(0.0, dtype=G.dtype)
            torch.testing.assert_close(loo_o[i, t], expected)
        ww = wo * mo
        torch.testing.assert_close(loo_o_scalar[i], ((ww * Go).sum() / ww.sum()).expand(7))


def test_leave_one_out_baseline_does_not_depend_on_its_own_trajectory():
    G, mask, _ = _batch()
    G2 = G.clone()
    G2[2] += 100.0
    for fn in (constant_baseline, time_dependent_baseline):
        torch.testing.assert_close(fn(G, mask, leave_one_out=True)[2], fn(G2, mask, leave_one_out=True)[2])
        assert not torch.allclose(fn(G, mask)[2], fn(G2, mask)[2])  # the plain batch mean does


def test_surrogate_loss_value_and_gradient_at_ratio_one():
    torch.manual_seed(1)
    logp = torch.randn(3, 4, requires_grad=True)
    old = logp.detach() - 0.3 * torch.randn(3, 4)
    A, mask = torch.randn(3, 4), (torch.rand(3, 4) > 0.2).float()
    ratio = (logp.detach() - old).exp()
    torch.testing.assert_close(surrogate_loss(logp, old, A, mask), -(ratio * A * mask).sum() / mask.sum())
    # At pi = pi_old the surrogate's gradient is the policy gradient (grad rho = grad log pi there).
    g_sur = torch.autograd.grad(surrogate_loss(logp, logp.detach(), A, mask), logp)[0]
    g_pg = torch.autograd.grad(policy_gradient_loss(logp, A, mask), logp)[0]
    torch.testing.assert_close(g_sur, g_pg)
    # A per-sequence advantage (B,) is broadcast over the steps.
    torch.testing.assert_close(surrogate_loss(logp, old, A[:, 0], mask),
                               surrogate_loss(logp, old, A[:, :1].expand(3, 4), mask))
