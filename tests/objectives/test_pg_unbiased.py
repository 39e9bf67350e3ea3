"""The REINFORCE estimator built from `discounted_returns` + `policy_gradient_loss` is unbiased, with or without a
baseline, and the baselines reduce its variance (seed ch. 7).

Exact reference: a small random MDP with S non-terminal states and an absorbing terminal one. With a tabular
softmax policy pi = softmax(theta), J(theta) = s0 . (I - gamma P_pi)^-1 r_pi over the non-terminal states
(P_pi is sub-stochastic; the missing mass is termination), and grad J comes from autograd through the solve.
The Monte Carlo side simulates N episodes in torch and gives each episode its own copy of theta, so one backward
of policy_gradient_loss(mode="sum") yields every per-episode gradient, hence their mean and covariance.
"""
import math

import pytest
import torch

from llmrl.objectives import (constant_baseline, discounted_returns, optimal_baseline, policy_gradient_loss,
                              time_dependent_baseline)

F64 = torch.float64
S, A, GAMMA, T_CAP = 4, 3, 0.9, 40
N_MAIN, N_BASELINE = 20_000, 5_000


def _mdp(seed=0):
    g = torch.Generator().manual_seed(seed)
    p_term = 0.2 + 0.2 * torch.rand(S, A, generator=g, dtype=F64)  # termination prob per (s, a), about 0.3
    P = torch.rand(S, A, S, generator=g, dtype=F64) + 0.1
    P = P / P.sum(-1, keepdim=True) * (1 - p_term)[..., None]  # sub-stochastic over the non-terminal states
    # a large common offset (any baseline helps) plus state-dependent levels (a state-dependent one helps more)
    R = 5.0 + 2.0 * torch.randn(S, 1, generator=g, dtype=F64) + torch.randn(S, A, generator=g, dtype=F64)
    s0 = torch.softmax(torch.randn(S, generator=g, dtype=F64), -1)
    theta = 0.5 * torch.randn(S, A, generator=g, dtype=F64)
    return P, R, s0, theta


def _exact_grad(P, R, s0, theta, horizon=None):
    """grad J by autograd; J = s0 (I - gamma P_pi)^-1 r_pi, or the sum of its first `horizon` terms."""
    th = theta.clone().requires_grad_()
    pi = torch.softmax(th, -1)
    P_pi = torch.einsum("sa,sat->st", pi, P)
    r_pi = (pi * R).sum(-1)
    if horizon is None:
        J = s0 @ torch.linalg.solve(torch.eye(S, dtype=F64) - GAMMA * P_pi, r_pi)
    else:
        J, d = 0.0, s0
        for t in range(horizon):
            J = J + GAMMA ** t * (d @ r_pi)
            d = d @ P_pi
    (grad,) = torch.autograd.grad(J, th)
    with torch.no_grad():
        V = torch.linalg.solve(torch.eye(S, dtype=F64) - GAMMA * P_pi, r_pi)
        alive_at_cap = float(s0 @ torch.linalg.matrix_power(P_pi, T_CAP) @ torch.ones(S, dtype=F64))
    return grad, V, alive_at_cap


def _sample(cdf, u):
    """Inverse-CDF draws: cdf (N, K) cumulative probabilities, u (N,) uniforms -> (N,) indices."""
    return (cdf[:, :-1] < u[:, None]).sum(-1)


def _simulate(P, R, s0, pi, N, g):
    """N episodes capped at T_CAP steps; returns states, actions, rewards, dones, mask, all (N, T_CAP).

    Only the live episodes are stepped (about 1/0.3 steps each), which keeps 20k episodes cheap.
    """
    cdf_pi = pi.cumsum(-1)
    cdf_trans = torch.cat([P, (1 - P.sum(-1))[..., None]], -1).cumsum(-1)  # column S = the terminal state
    states = torch.zeros(N, T_CAP, dtype=torch.long)
    actions = torch.zeros(N, T_CAP, dtype=torch.long)
    rewards = torch.zeros(N, T_CAP, dtype=F64)
    dones = torch.zeros(N, T_CAP, dtype=F64)
    mask = torch.zeros(N, T_CAP, dtype=F64)
    idx = torch.arange(N)  # the live episodes
    s = _sample(s0.cumsum(-1).expand(N, S), torch.rand(N, generator=g, dtype=F64))
    for t in range(T_CAP):
        u = torch.rand(2, idx.numel(), generator=g, dtype=F64)
        a = _sample(cdf_pi[s], u[0])
        nxt = _sample(cdf_trans[s, a], u[1])
        states[idx, t], actions[idx, t], rewards[idx, t], mask[idx, t] = s, a, R[s, a], 1.0
        ended = nxt == S
        dones[idx[ended], t] = 1.0
        idx, s = idx[~ended], nxt[~ended]
    return states, actions, rewards, dones, mask


def _grad_sq(states, actions, pi):
    """||grad_theta log pi(a|s)||^2 = ||onehot(a) - pi(.|s)||^2 for the tabular softmax."""
    return ((torch.nn.functional.one_hot(actions, A).to(F64) - pi[states]) ** 2).sum(-1)


def test_reinforce_is_unbiased_and_baselines_reduce_variance():
    P, R, s0, theta = _mdp()
    exact, V, alive_at_cap = _exact_grad(P, R, s0, theta)
    # the T_CAP truncation is negligible: the estimator is exactly unbiased for the truncated J, which matches J
    assert alive_at_cap < 1e-5
    exact_trunc, _, _ = _exact_grad(P, R, s0, theta, horizon=T_CAP)
    torch.testing.assert_close(exact_trunc, exact, rtol=0, atol=1e-4)

    pi = torch.softmax(theta, -1)
    g = torch.Generator().manual_seed(1)
    # Data-dependent baselines come from an independent batch, so they do not depend on the main batch's actions.
    st_b, ac_b, r_b, d_b, m_b = _simulate(P, R, s0, pi, N_BASELINE, g)
    G_b = discounted_returns(r_b, GAMMA, d_b)
    states, actions, rewards, dones, mask = _simulate(P, R, s0, pi, N_MAIN, g)
    G = discounted_returns(rewards, GAMMA, dones)
    baselines = {
        "none": torch.zeros_like(G),
        "constant": constant_baseline(G_b, m_b)[:1].expand_as(G),
        "time_dependent": time_dependent_baseline(G_b, m_b)[:1].expand_as(G),
        "optimal": optimal_baseline(G_b, _grad_sq(st_b, ac_b, pi), m_b)[:1].expand_as(G),
        "value": V[states],  # the learned-value baseline at its optimum, V^pi(s_t)
        # leave-one-out on the same batch: episode i's baseline never sees episode i, so also exactly unbiased
        "constant_loo": constant_baseline(G, mask, leave_one_out=True),
        "time_dependent_loo": time_dependent_baseline(G, mask, leave_one_out=True),
        "optimal_loo": optimal_baseline(G, _grad_sq(states, actions, pi), mask, leave_one_out=True),
    }
    discount = GAMMA ** torch.arange(T_CAP, dtype=F64)  # the discounted policy gradient weighs step t by gamma^t

    variances = {}
    for name, b in baselines.items():
        theta_rep = theta.expand(N_MAIN, S, A).clone().requires_grad_()  # one copy of theta per episode
        logp = torch.log_softmax(theta_rep, -1)[torch.arange(N_MAIN)[:, None], states, actions]  # (N, T)
        loss = policy_gradient_loss(logp, discount * (G - b), mask, mode="sum")
        loss.backward()
        per_episode = -theta_rep.grad.reshape(N_MAIN, -1)  # the loss is -J's estimate: flip the sign
        mean, std = per_episode.mean(0), per_episode.std(0)
        se = std / math.sqrt(N_MAIN)
        z = (mean - exact.reshape(-1)).abs() / se
        assert (z <= 4.5).all(), f"baseline {name}: |mean - exact| / se = {z.max():.2f}"
        variances[name] = float((std ** 2).sum())
    for name in baselines.keys() - {"none"}:
        assert variances[name] < 0.5 * variances["none"], (name, variances)
    # the exact value baseline beats the constant one
    assert variances["value"] < variances["constant"], variances


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_reinforce_unbiased_on_more_mdps(seed):
    """The same check on other random MDPs and policies (slow: about 1 s each)."""
    P, R, s0, theta = _mdp(seed + 10)
    exact, _, _ = _exact_grad(P, R, s0, theta)
    pi = torch.softmax(theta, -1)
    states, actions, rewards, dones, mask = _simulate(P, R, s0, pi, N_MAIN, torch.Generator().manual_seed(seed))
    G = discounted_returns(rewards, GAMMA, dones)
    theta_rep = theta.expand(N_MAIN, S, A).clone().requires_grad_()
    logp = torch.log_softmax(theta_rep, -1)[torch.arange(N_MAIN)[:, None], states, actions]
    policy_gradient_loss(logp, GAMMA ** torch.arange(T_CAP, dtype=F64) * G, mask, mode="sum").backward()
    per_episode = -theta_rep.grad.reshape(N_MAIN, -1)
    z = (per_episode.mean(0) - exact.reshape(-1)).abs() / (per_episode.std(0) / math.sqrt(N_MAIN))
    assert (z <= 4.5).all(), z
