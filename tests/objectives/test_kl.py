"""KL estimators against closed forms and the exact KL of categorical distributions; beta controllers' rules."""
import math

import pytest
import torch

from llmrl.objectives import (AdaptiveKLController, FixedKLController, ProportionalKLController, kl_estimate, kl_k1,
                              kl_k2, kl_k3)


def _two_categoricals(K=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(K, generator=g, dtype=torch.float64), -1)
    ref_logp = torch.log_softmax(torch.randn(K, generator=g, dtype=torch.float64), -1)
    return logp, ref_logp


def test_k1_k2_k3_closed_forms():
    logp = torch.tensor([-0.5, -2.0, -1.0], dtype=torch.float64)
    ref = torch.tensor([-1.5, -1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(kl_k1(logp, ref), torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(kl_k2(logp, ref), torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(kl_k3(logp, ref), torch.tensor([math.exp(-1) + 1 - 1, math.e - 1 - 1, 0.0],
                                                              dtype=torch.float64))
    for name, fn in (("k1", kl_k1), ("k2", kl_k2), ("k3", kl_k3)):
        torch.testing.assert_close(kl_estimate(logp, ref, name), fn(logp, ref))


def test_k3_nonnegative_and_zero_iff_equal():
    g = torch.Generator().manual_seed(1)
    logp = -torch.rand(1000, generator=g, dtype=torch.float64) * 5
    ref = -torch.rand(1000, generator=g, dtype=torch.float64) * 5
    k3 = kl_k3(logp, ref)
    assert (k3 > 0).all()  # distinct values -> strictly positive
    assert (kl_k3(logp, logp) == 0).all()
    assert (kl_k2(logp, ref) >= 0).all() and (kl_k1(logp, ref) < 0).any()  # k1 alone can go negative


def test_k1_and_k3_expectations_under_pi_are_exact_kl():
    logp, ref = _two_categoricals()
    p = logp.exp()
    exact = (p * (logp - ref)).sum()
    # exact expectation over the K outcomes (k3's correction term sums to sum pi_ref - 1 = 0)
    torch.testing.assert_close((p * kl_k3(logp, ref)).sum(), exact)
    torch.testing.assert_close((p * kl_k1(logp, ref)).sum(), exact)
    # Monte Carlo under pi
    g = torch.Generator().manual_seed(2)
    idx = torch.multinomial(p, 200_000, replacement=True, generator=g)
    for fn in (kl_k1, kl_k3):
        samples = fn(logp[idx], ref[idx])
        se = samples.std() / math.sqrt(samples.numel())
        assert abs(float(samples.mean() - exact)) <= 4.5 * float(se), fn.__name__
    # k3 has lower variance than k1 when pi and pi_ref are close (why GRPO uses it)
    close_ref = torch.log_softmax(logp + 0.1 * torch.randn(logp.shape, generator=g, dtype=torch.float64), -1)
    assert kl_k3(logp[idx], close_ref[idx]).var() < kl_k1(logp[idx], close_ref[idx]).var()


def test_unknown_kl_estimator_raises():
    with pytest.raises(ValueError, match="kl estimator must be one of"):
        kl_estimate(torch.zeros(2), torch.zeros(2), "k4")


def test_adaptive_kl_controller_rule():
    c = AdaptiveKLController(beta=1.0, target=0.1)  # thresholds 0.15 and 0.1 / 1.5
    assert c.update(0.16) == pytest.approx(1.5)
    assert c.update(0.15) == pytest.approx(1.5)  # on the threshold: unchanged
    assert c.update(0.1) == pytest.approx(1.5)
    assert c.update(0.0667) == pytest.approx(1.5)  # just above 0.1/1.5
    assert c.update(0.066) == pytest.approx(1.0)
    assert c.update(0.0) == pytest.approx(1 / 1.5)
    c = AdaptiveKLController(beta=900.0, target=0.1, beta_max=1000.0)
    assert c.update(1.0) == 1000.0  # clipped to beta_max
    with pytest.raises(ValueError, match="non-finite"):
        c.update(float("nan"))
    with pytest.raises(ValueError, match="target > 0"):
        AdaptiveKLController(beta=1.0, target=0.0)


def test_kl_controller_state_dict_round_trip():
    a = AdaptiveKLController(beta=0.3, target=0.05)
    for kl in (0.2, 0.2, 0.01):
        a.update(kl)
    b = AdaptiveKLController(beta=123.0, target=0.05)
    b.load_state_dict(a.state_dict())
    assert b.beta == a.beta
    assert [b.update(k) for k in (0.5, 0.001, 0.05)] == [a.update(k) for k in (0.5, 0.001, 0.05)]
    f = FixedKLController(0.04)
    assert f.update(100.0) == 0.04 and f.state_dict() == {"beta": 0.04}


def test_proportional_kl_controller_rule():
    c = ProportionalKLController(beta=0.2, target=6.0, horizon=10000)
    beta = 0.2
    for kl, n_steps in ((12.0, 256), (6.6, 256), (3.0, 512), (6.0, 64)):
        e = min(max(kl / 6.0 - 1, -0.2), 0.2)
        beta *= 1 + e * n_steps / 10000
        assert c.update(kl, n_steps) == pytest.approx(beta, rel=1e-12)
    d = ProportionalKLController(beta=1.0, target=6.0)
    d.load_state_dict(c.state_dict())
    assert d.beta == c.beta
    with pytest.raises(ValueError, match="non-finite"):
        c.update(float("inf"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_k3_nonnegative_and_accurate_in_low_precision(dtype):
    # Near log r = 0, exp(x) - x - 1 cancels: it must neither go negative nor lose its relative accuracy.
    x = torch.linspace(-1e-2, 1e-2, 20001).to(dtype)
    k3 = kl_k3(torch.zeros_like(x), x)
    assert (k3 >= 0).all()
    xd = x.double()
    exact = xd.exp() - xd - 1  # float64 reference at the same (rounded) inputs
    # error within a few ulps of |x| (the old exp(x) - x - 1 is off by ulps of 1, far more for small |x|)
    assert ((k3.double() - exact).abs() <= 4 * torch.finfo(dtype).eps * xd.abs()).all()
