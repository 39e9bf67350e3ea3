"""The KL penalty's gradient, checked by enumeration on a one-step softmax policy (a "4-token vocabulary"): the
expected gradient of the penalty over tokens drawn from pi_old must equal the gradient of the exact
KL(pi || pi_ref) = sum_a pi(a) (log pi(a) - log pi_ref(a)), computed independently by autograd."""
import pytest
import torch

from llmrl.objectives import grpo_loss, kl_penalty, kl_shaped_rewards

F64 = torch.float64


def _policy(seed=0, K=4):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(K, generator=g, dtype=F64)
    ref = torch.log_softmax(torch.randn(K, generator=g, dtype=F64), -1)
    old = torch.log_softmax(theta + 0.5 * torch.randn(K, generator=g, dtype=F64), -1)  # pi_old != pi
    return theta, ref, old


def _exact_grad(theta, ref, reverse=False):
    t = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(t, -1)
    kl = (ref.exp() * (ref - logp)).sum() if reverse else (logp.exp() * (logp - ref)).sum()
    return torch.autograd.grad(kl, t)[0]


def _expected_grad(theta, ref, sample_logp, penalty):
    """sum_a pi_sample(a) * grad_theta penalty(a): the exact expectation over the sampled token."""
    t = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(t, -1)
    per_token = penalty(logp)  # (K,): the penalty at each possible sampled token
    return torch.autograd.grad((sample_logp.exp().detach() * per_token).sum(), t)[0]


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("on_policy", [True, False])
def test_unbiased_penalty_gradient_is_grad_kl_for_every_estimator(estimator, on_policy):
    theta, ref, old = _policy()
    pi = torch.log_softmax(theta, -1)
    sample = pi if on_policy else old
    got = _expected_grad(theta, ref, sample, lambda lp: kl_penalty(lp, ref, estimator, "unbiased", sample))
    torch.testing.assert_close(got, _exact_grad(theta, ref))
    assert _exact_grad(theta, ref).abs().max() > 0.05  # a real, non-zero target


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_penalty_value_is_the_estimator(estimator):
    from llmrl.objectives import kl_estimate
    theta, ref, old = _policy(1)
    lp = torch.log_softmax(theta, -1)
    torch.testing.assert_close(kl_penalty(lp, ref, estimator, "unbiased", old), kl_estimate(lp, ref, estimator),
                               rtol=0, atol=0)


def test_differentiating_the_estimator_is_biased_except_k2():
    """TRL's plain k3-in-loss (gradient="estimator") is kept for parity: on-policy, k2 gives grad KL(pi||pi_ref),
    k3 gives grad KL(pi_ref||pi) (the reverse KL), and k1 would give exactly 0, so it is refused."""
    theta, ref, _ = _policy(2)
    pi = torch.log_softmax(theta, -1)
    k2 = _expected_grad(theta, ref, pi, lambda lp: kl_penalty(lp, ref, "k2", "estimator"))
    k3 = _expected_grad(theta, ref, pi, lambda lp: kl_penalty(lp, ref, "k3", "estimator"))
    torch.testing.assert_close(k2, _exact_grad(theta, ref))
    torch.testing.assert_close(k3, _exact_grad(theta, ref, reverse=True))
    assert (k3 - _exact_grad(theta, ref)).abs().max() > 0.05
    from llmrl.objectives import kl_k1
    k1 = _expected_grad(theta, ref, pi, lambda lp: kl_k1(lp, ref))
    torch.testing.assert_close(k1, torch.zeros_like(k1))  # the fault the default fixes: k1 in a loss does nothing
    with pytest.raises(ValueError, match="kl_gradient"):
        kl_penalty(pi, ref, "k1", "estimator")
    with pytest.raises(ValueError, match="kl gradient must be one of"):
        kl_penalty(pi, ref, "k3", "k2")


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_grpo_loss_with_zero_advantages_pulls_toward_the_reference(estimator):
    """The whole loss at A = 0, beta = 1 (one token per sequence): expected gradient = grad KL(pi || pi_ref)."""
    theta, ref, _ = _policy(3)
    K = len(theta)

    def per_token(lp):
        old = lp.detach()  # on-policy (first pass)
        out = []
        for a in range(K):  # sequence a: the single sampled token a
            loss, _ = grpo_loss(lp[a].view(1, 1), old[a].view(1, 1), ref[a].view(1, 1), torch.zeros(1, dtype=F64),
                                torch.ones(1, 1), beta=1.0, kl_estimator=estimator)
            out.append(loss)
        return torch.stack(out)

    pi = torch.log_softmax(theta, -1)
    torch.testing.assert_close(_expected_grad(theta, ref, pi, per_token), _exact_grad(theta, ref))


def test_kl_shaped_reward_policy_gradient_is_grad_kl_only_for_k1():
    """KL in the reward: the score-function gradient E_pi[grad log pi(a) * (-beta k(a))] equals -beta grad KL
    for k1 (the trainer's only choice there), not for k3."""
    theta, ref, _ = _policy(4)
    beta = 0.5
    t = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(t, -1)
    p = logp.exp().detach()
    for est, unbiased in (("k1", True), ("k3", False)):
        shaped, kl = kl_shaped_rewards(torch.zeros(len(theta), dtype=F64), logp.detach()[:, None], ref[:, None],
                                       torch.ones(len(theta), 1), beta, est)
        grad = torch.autograd.grad((p * logp * shaped).sum(), t, retain_graph=True)[0]
        close = torch.allclose(grad, -beta * _exact_grad(theta, ref))
        assert close == unbiased, est
        torch.testing.assert_close(shaped, -beta * kl.sum(-1))
