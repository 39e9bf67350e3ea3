"""Baselines against their defining means / minimizers, and the (clipped) value loss against its formula."""
import pytest
import torch

from llmrl.objectives import constant_baseline, optimal_baseline, time_dependent_baseline, value_loss
from llmrl.objectives.baselines import policy_gradient_estimate


def _data(N=6, T=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(N, T, generator=g, dtype=torch.float64) + 3.0
    lengths = torch.randint(1, T + 1, (N,), generator=g)
    lengths[0] = T  # every time step has at least one live trajectory
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()
    grad_sq = torch.rand(N, T, generator=g, dtype=torch.float64) * 2
    return G, mask, grad_sq


def test_constant_baseline_is_mean_over_valid_steps():
    G, mask, _ = _data()
    valid = G[mask.bool()]
    b = constant_baseline(G, mask)
    assert b.shape == G.shape
    torch.testing.assert_close(b, torch.full_like(G, float(valid.mean())))
    torch.testing.assert_close(constant_baseline(G), torch.full_like(G, float(G.mean())))


def test_time_dependent_baseline_is_mean_of_alive_trajectories():
    G, mask, _ = _data()
    b = time_dependent_baseline(G, mask)
    for t in range(G.shape[1]):
        alive = mask[:, t].bool()
        torch.testing.assert_close(b[:, t], G[alive, t].mean().expand(G.shape[0]))


@pytest.mark.parametrize("per_timestep", [True, False])
def test_optimal_baseline_minimizes_weighted_second_moment(per_timestep):
    # b* = argmin_b sum_i g_i^2 (G_i - b)^2, the second moment of the estimate g (G - b) (equal to its variance
    # because E[g] = 0 for a score function). Check the closed form, then that a scan finds no better b.
    G, mask, grad_sq = _data(seed=1)
    b = optimal_baseline(G, grad_sq, mask, per_timestep=per_timestep)
    assert b.shape == G.shape
    w = grad_sq * mask
    cols = [slice(t, t + 1) for t in range(G.shape[1])] if per_timestep else [slice(None)]
    for c in cols:
        closed = (w[:, c] * G[:, c]).sum() / w[:, c].sum()
        torch.testing.assert_close(b[0, c], closed.expand_as(b[0, c]))
        scan = torch.linspace(float(closed) - 2, float(closed) + 2, 4001, dtype=torch.float64)
        moment = (w[:, c].reshape(-1, 1) * (G[:, c].reshape(-1, 1) - scan) ** 2).sum(0)
        assert abs(float(scan[moment.argmin()]) - float(closed)) <= 1e-3 + 1e-12
        assert float((w[:, c] * (G[:, c] - closed) ** 2).sum()) <= float(moment.min()) + 1e-12


def _bandit(theta, rewards):
    """A one-step bandit with a softmax policy over logits theta, enumerated: pi (K,), the score vectors
    s_a = grad_theta log pi(a) = e_a - pi (K, K), and the rewards (K,)."""
    theta = torch.tensor(theta, dtype=torch.float64)
    pi = torch.softmax(theta, -1)
    return pi, torch.eye(len(pi), dtype=torch.float64) - pi, torch.tensor(rewards, dtype=torch.float64)


def _exact_variance(pi, scores, rewards, b):
    """Trace of the covariance of the one-sample estimate g = s_a (r_a - b) (b: scalar or per parameter),
    by enumerating the actions a ~ pi."""
    g = scores * (rewards[:, None] - b)  # (K actions, K parameters)
    mean = (pi[:, None] * g).sum(0)
    return float((pi[:, None] * (g - mean) ** 2).sum())


def test_per_parameter_optimal_baseline_on_a_bandit_by_hand():
    # Uniform policy over 3 arms paying 1, 2, 3: s_ak^2 = 4/9 (k = a) or 1/9, so the seed's per-parameter
    # b_k = sum_a s_ak^2 r_a / sum_a s_ak^2 = (4 r_k + sum_(a != k) r_a) / 6 = 1.5, 2, 2.5; every ||s_a||^2 is
    # 6/9, so the best single number is the mean reward, 2. Exact variances: 1/9 (per parameter), 2/9 (single
    # number), 26/9 (no baseline). The batch of the three arms, once each, is the exact distribution.
    pi, scores, rewards = _bandit([0.0, 0.0, 0.0], [1.0, 2.0, 3.0])
    G = rewards[:, None]  # (N=3 trajectories, T=1)
    per_parameter = optimal_baseline(G, scores[:, None, :] ** 2)  # (3, 1, 3)
    scalar = optimal_baseline(G, (scores ** 2).sum(-1, keepdim=True))  # (3, 1)
    torch.testing.assert_close(per_parameter, torch.tensor([1.5, 2.0, 2.5], dtype=torch.float64).expand(3, 1, 3))
    torch.testing.assert_close(scalar, torch.full((3, 1), 2.0, dtype=torch.float64))
    assert _exact_variance(pi, scores, rewards, per_parameter[0, 0]) == pytest.approx(1 / 9)
    assert _exact_variance(pi, scores, rewards, scalar[0, 0]) == pytest.approx(2 / 9)
    assert _exact_variance(pi, scores, rewards, 0.0) == pytest.approx(26 / 9)
    # The estimate built with it: the mean over the enumerated arms of s_a (r_a - b_a) is grad J = E[s r] exactly
    # (any action-independent baseline leaves it unbiased).
    adv = G[..., None] - per_parameter
    torch.testing.assert_close(policy_gradient_estimate(scores[:, None, :], adv), (scores * rewards[:, None]).mean(0))


def test_per_parameter_optimal_baseline_minimizes_each_component_on_a_skewed_bandit():
    # A non-uniform policy: the batch sums become expectations over a ~ pi when each arm's squared score carries
    # its probability, pi_a s_ak^2. Per parameter, b_k is the minimizer of component k's variance (a scan finds no
    # better value), and the total variance is well below the best single number's (about 1.8 vs 4.0; none: 6.7).
    pi, scores, rewards = _bandit([2.0, 0.0, -1.0], [0.0, 1.0, 10.0])
    G = rewards[:, None]
    b = optimal_baseline(G, pi[:, None, None] * scores[:, None, :] ** 2)[0, 0]
    b_scalar = optimal_baseline(G, pi[:, None] * (scores ** 2).sum(-1, keepdim=True))[0, 0]
    for k in range(3):
        scan = torch.linspace(float(b[k]) - 3, float(b[k]) + 3, 6001, dtype=torch.float64)
        var_k = (pi[:, None] * scores[:, k:k + 1] ** 2 * (rewards[:, None] - scan) ** 2).sum(0)
        assert abs(float(scan[var_k.argmin()]) - float(b[k])) <= 1e-3 + 1e-12
    per_parameter, single = _exact_variance(pi, scores, rewards, b), _exact_variance(pi, scores, rewards, b_scalar)
    assert per_parameter < 0.5 * single < 0.5 * _exact_variance(pi, scores, rewards, 0.0)


def test_optimal_baseline_with_equal_weights_is_time_dependent_mean():
    G, mask, _ = _data(seed=2)
    torch.testing.assert_close(optimal_baseline(G, torch.ones_like(G), mask), time_dependent_baseline(G, mask))


def test_optimal_baseline_zero_weights_give_zero_not_nan():
    G, mask, grad_sq = _data()
    grad_sq[:, 2] = 0
    b = optimal_baseline(G, grad_sq, mask)
    assert torch.isfinite(b).all() and (b[:, 2] == 0).all()


def test_value_loss_unclipped_and_clipped():
    g = torch.Generator().manual_seed(3)
    V, R, V_old = (torch.randn(4, 7, generator=g, dtype=torch.float64) for _ in range(3))
    mask = (torch.rand(4, 7, generator=g) < 0.7).double()
    mask[0, 0] = 1
    n = mask.sum()
    torch.testing.assert_close(value_loss(V, R, mask=mask), 0.5 * (((V - R) ** 2) * mask).sum() / n)
    c = 0.2
    elementwise = []
    for v, r, vo in zip(V.flatten().tolist(), R.flatten().tolist(), V_old.flatten().tolist()):
        v_clip = min(max(v, vo - c), vo + c)
        elementwise.append(max((v - r) ** 2, (v_clip - r) ** 2))
    expected = 0.5 * (torch.tensor(elementwise, dtype=torch.float64).view(4, 7) * mask).sum() / n
    torch.testing.assert_close(value_loss(V, R, V_old, clip=c, mask=mask), expected)
    # inside the clip range the clipped loss is the plain one
    torch.testing.assert_close(value_loss(V, R, V, clip=c), value_loss(V, R))
    # no mask = every step counts
    torch.testing.assert_close(value_loss(V, R), value_loss(V, R, mask=torch.ones_like(V)))
    torch.testing.assert_close(value_loss(V, R, V_old, clip=c),
                               value_loss(V, R, V_old, clip=c, mask=torch.ones_like(V)))


def test_value_loss_clipped_gradient_is_zero_when_clipped_term_dominates():
    # V moved away from the target beyond the clip: the max picks the constant clipped term -> zero gradient.
    V = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    value_loss(V, torch.tensor([0.0], dtype=torch.float64), torch.tensor([1.5], dtype=torch.float64),
               clip=0.2).backward()
    torch.testing.assert_close(V.grad, torch.tensor([2.0], dtype=torch.float64))  # (V - R) = 2: unclipped wins
    V = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)  # moved toward R=0 past the clip
    value_loss(V, torch.tensor([0.0], dtype=torch.float64), torch.tensor([1.5], dtype=torch.float64),
               clip=0.2).backward()
    torch.testing.assert_close(V.grad, torch.tensor([0.0], dtype=torch.float64))


def test_value_loss_clip_without_old_values_raises():
    with pytest.raises(ValueError, match="old_values"):
        value_loss(torch.zeros(3), torch.zeros(3), clip=0.2)


@pytest.mark.parametrize("per_timestep", [True, False])
def test_leave_one_out_baselines_match_explicit_means_over_other_rows(per_timestep):
    G, mask, grad_sq = _data(N=7, seed=4)
    mask[1] = 1  # at least two live rows per step, so every leave-one-out mean is defined
    N, T = G.shape
    w_opt = grad_sq * mask
    cases = [(constant_baseline(G, mask, leave_one_out=True), mask, False),
             (optimal_baseline(G, grad_sq, mask, per_timestep=per_timestep, leave_one_out=True), w_opt,
              per_timestep)]
    if per_timestep:
        cases.append((time_dependent_baseline(G, mask, leave_one_out=True), mask, True))
    for b, w, per_t in cases:
        for i in range(N):
            others = [j for j in range(N) if j != i]
            for t in range(T):
                cols = [t] if per_t else list(range(T))
                ww = w[others][:, cols]
                expected = (ww * G[others][:, cols]).sum() / ww.sum()
                torch.testing.assert_close(b[i, t], expected)


def test_leave_one_out_baseline_with_no_other_row_is_zero():
    G = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # only row 0 is alive at t=1
    b = time_dependent_baseline(G, mask, leave_one_out=True)
    torch.testing.assert_close(b, torch.tensor([[3.0, 0.0], [1.0, 2.0]], dtype=torch.float64))
    assert torch.isfinite(optimal_baseline(G, torch.ones_like(G), mask, leave_one_out=True)).all()


def test_leave_one_out_is_exact_when_one_trajectory_dominates():
    # Per parameter, one episode's squared score can exceed the others' by more than 1/eps. Taking row i out of
    # the total by subtraction then cancels: 1e10 + 1e-10 - 1e10 = 0 in the denominator under a nonzero rounding
    # residue in the numerator, so b came out 0 or ~1e300 instead of the other rows' own weighted mean.
    G = torch.tensor([[1.0 / 3.0], [2.0], [5.0]], dtype=torch.float64)
    w = torch.tensor([[1e10], [1e-10], [3e-10]], dtype=torch.float64)
    b = optimal_baseline(G, w, leave_one_out=True)
    expected = [(2.0 * 1e-10 + 5.0 * 3e-10) / 4e-10,  # = 4.25: the two small rows' own weighted mean
                (1e10 / 3.0 + 5.0 * 3e-10) / (1e10 + 3e-10), (1e10 / 3.0 + 2.0 * 1e-10) / (1e10 + 1e-10)]
    torch.testing.assert_close(b[:, 0], torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    per_parameter = optimal_baseline(G, torch.cat([w, w.flip(0)], dim=1)[:, None, :], leave_one_out=True)
    assert torch.isfinite(per_parameter).all()
    torch.testing.assert_close(per_parameter[:, 0, 0], b[:, 0], rtol=1e-12, atol=0)
