"""Token-level rewards and advantages (PPO-RLHF's GAE, REINFORCE++) against hand values and brute-force loops: the
score sits on the last completion token only, GAE over padded completions is the plain truncated sum with no
bootstrap past a completion's end, REINFORCE++ returns are whitened over the valid tokens of the batch."""
import math

import pytest
import torch

from llmrl import objectives as O


def _mask(lengths, T):
    return (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()


def test_token_rewards_put_the_score_on_the_last_completion_token_only():
    mask = _mask([3, 1, 5], 5)
    scores = torch.tensor([2.0, -1.0, 0.5])
    kl = torch.arange(15, dtype=torch.float32).view(3, 5) / 10  # nonzero on padding too: it must be masked
    got = O.token_level_rewards(scores, mask, kl, beta=0.5)
    want = torch.tensor([[0 - 0.00, 0 - 0.05, 2 - 0.10, 0, 0],
                         [-1 - 0.25, 0, 0, 0, 0],
                         [0 - 0.50, 0 - 0.55, 0 - 0.60, 0 - 0.65, 0.5 - 0.70]])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(O.token_level_rewards(scores, mask), torch.tensor(
        [[0, 0, 2.0, 0, 0], [-1.0, 0, 0, 0, 0], [0, 0, 0, 0, 0.5]]))
    # summed over tokens: the sequence reward with the KL penalty of kl_shaped_rewards (k1)
    logp, ref = torch.randn(3, 5), torch.randn(3, 5)
    shaped, k1 = O.kl_shaped_rewards(scores, logp, ref, mask, 0.3, "k1")
    torch.testing.assert_close(O.token_level_rewards(scores, mask, k1, 0.3).sum(-1), shaped)


def test_token_rewards_refuse_an_empty_completion():
    with pytest.raises(ValueError, match="completion 1 has no token"):
        O.token_level_rewards(torch.ones(2), _mask([2, 0], 3))


def _gae_by_hand(r, v, lengths, gamma, lam):
    """A_t = sum_{l=0}^{L-1-t} (gamma lam)^l delta_{t+l}, delta_k = r_k + gamma V_{k+1} [k+1 < L] - V_k."""
    N, T = r.shape
    adv = torch.zeros(N, T, dtype=torch.float64)
    for i, L in enumerate(lengths):
        delta = [r[i, k] + (gamma * v[i, k + 1] if k + 1 < L else 0.0) - v[i, k] for k in range(L)]
        for t in range(L):
            adv[i, t] = sum((gamma * lam) ** l * delta[t + l] for l in range(L - t))
    return adv


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_token_gae_equals_the_brute_force_sum(gamma, lam):
    g = torch.Generator().manual_seed(0)
    lengths, T = [6, 2, 1, 4], 6  # the first is cut at the token limit: still no bootstrap after it
    mask = _mask(lengths, T)
    r = torch.randn(4, T, generator=g, dtype=torch.float64)
    v = torch.randn(4, T, generator=g, dtype=torch.float64)
    junk = torch.where(mask.bool(), v, torch.full_like(v, 1e6))  # values on padding must not matter
    adv, ret = O.token_gae(r, junk, mask, gamma, lam)
    want = _gae_by_hand(r * mask, v, lengths, gamma, lam)
    torch.testing.assert_close(adv, want)
    torch.testing.assert_close(ret, (want + v) * mask)
    for i, L in enumerate(lengths):  # at the last token: A = r - V(s_T), nothing after it
        assert math.isclose(float(adv[i, L - 1]), float(r[i, L - 1] - v[i, L - 1]), rel_tol=1e-12)
    if gamma == lam == 1.0:  # Monte Carlo: the reward-to-go minus the value
        togo = torch.flip(torch.cumsum(torch.flip(r * mask, [1]), 1), [1])
        torch.testing.assert_close(adv, (togo - v) * mask)


def _whiten_by_hand(x, mask):
    vals = [x[i, t].item() for i in range(x.shape[0]) for t in range(x.shape[1]) if mask[i, t]]
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((a - mean) ** 2 for a in vals) / len(vals))
    return torch.tensor([[(x[i, t].item() - mean) / (std + 1e-8) if mask[i, t] else 0.0 for t in range(x.shape[1])]
                         for i in range(x.shape[0])], dtype=torch.float64)


@pytest.mark.parametrize("estimator", ["reinforce_plus_plus", "reinforce_plus_plus_baseline"])
def test_reinforce_plus_plus_against_hand_loops(estimator):
    g = torch.Generator().manual_seed(1)
    lengths, T, G = [3, 5, 1, 4], 5, 2
    mask = _mask(lengths, T)
    scores = torch.tensor([1.0, 0.0, 2.0, -1.0], dtype=torch.float64)
    kl = torch.randn(4, T, generator=g, dtype=torch.float64)
    beta, gamma = 0.2, 0.9
    adv, returns = O.token_advantages(scores, mask, estimator, G, kl, beta, gamma)
    assert returns is None
    s = scores.tolist()
    if estimator == "reinforce_plus_plus_baseline":  # the group's mean score subtracted first
        s = [x - (s[i // G * G] + s[i // G * G + 1]) / G for i, x in enumerate(s)]
    G_t = torch.zeros(4, T, dtype=torch.float64)
    for i, L in enumerate(lengths):
        r = [-beta * kl[i, k].item() + (s[i] if k == L - 1 else 0.0) for k in range(L)]
        for t in range(L):
            G_t[i, t] = sum(gamma ** (k - t) * r[k] for k in range(t, L))
    torch.testing.assert_close(adv, _whiten_by_hand(G_t, mask))


def test_gae_advantages_are_whitened_over_the_given_mask_and_return_unwhitened_returns():
    g = torch.Generator().manual_seed(2)
    lengths, T = [4, 2, 3], 4
    mask = _mask(lengths, T)
    scores = torch.randn(3, generator=g, dtype=torch.float64)
    values = torch.randn(3, T, generator=g, dtype=torch.float64)
    loss_mask = mask.clone()
    loss_mask[1] = 0  # e.g. a truncated completion left out of the loss: out of the statistics too
    adv, returns = O.token_advantages(scores, mask, "gae", values=values, gamma=1.0, lam=0.9, whiten_mask=loss_mask)
    r = O.token_level_rewards(scores, mask)
    raw = _gae_by_hand(r, values, lengths, 1.0, 0.9)
    torch.testing.assert_close(adv, _whiten_by_hand(raw, loss_mask))
    torch.testing.assert_close(returns, (raw + values) * mask)


def test_token_advantages_errors():
    mask = _mask([2, 2], 2)
    with pytest.raises(ValueError, match="needs the critic's values"):
        O.token_advantages(torch.ones(2), mask, "gae")
    with pytest.raises(ValueError, match="must be one of"):
        O.token_advantages(torch.ones(2), mask, "grpo")
