"""Returns, k-step targets, TD targets and GAE against brute-force loops written straight from the definitions."""
import pytest
import torch

from llmrl.objectives import discounted_returns, double_q_values, gae, n_step_returns, td_target

GAMMA, LAM = 0.93, 0.81


def _episode(N=5, T=12, seed=0, p_done=0.2, p_trunc=0.5):
    """Random rewards/values with random episode ends; a done is a truncation (not terminated) w.p. p_trunc."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(N, T, generator=g, dtype=torch.float64)
    values = torch.randn(N, T, generator=g, dtype=torch.float64)
    next_values = torch.randn(N, T, generator=g, dtype=torch.float64)
    dones = (torch.rand(N, T, generator=g) < p_done).double()
    terminated = dones * (torch.rand(N, T, generator=g) >= p_trunc).double()
    return r, values, next_values, dones, terminated


def _brute_returns(r, gamma, dones, bootstrap):
    N, T = r.shape
    out = torch.zeros_like(r)
    for n in range(N):
        for t in range(T):
            G = 0.0
            for k in range(t, T):
                G += gamma ** (k - t) * r[n, k]
                if dones[n, k]:
                    break
            else:  # the window ended before the episode did
                G += gamma ** (T - t) * bootstrap[n]
            out[n, t] = G
    return out


def _brute_n_step(r, next_values, dones, terminated, gamma, n):
    N, T = r.shape
    out = torch.zeros_like(r)
    for b in range(N):
        for t in range(T):
            G = 0.0
            for i in range(T - t):
                G += gamma ** i * r[b, t + i]
                if i == n - 1 or dones[b, t + i] or t + i == T - 1:
                    G += gamma ** (i + 1) * (1 - terminated[b, t + i]) * next_values[b, t + i]
                    break
            out[b, t] = G
    return out


def _brute_gae(r, values, next_values, dones, terminated, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l} as an explicit double sum, stopping after the first done."""
    N, T = r.shape
    delta = r + gamma * (1 - terminated) * next_values - values
    out = torch.zeros_like(r)
    for b in range(N):
        for t in range(T):
            for l in range(T - t):
                out[b, t] += (gamma * lam) ** l * delta[b, t + l]
                if dones[b, t + l]:
                    break
    return out


def test_discounted_returns_simple_closed_form():
    r = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    expected = torch.tensor([1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0], dtype=torch.float64)
    torch.testing.assert_close(discounted_returns(r, 0.5), expected)


def test_discounted_returns_with_dones_and_bootstrap_matches_brute_force():
    r, _, _, dones, _ = _episode()
    bootstrap = torch.randn(r.shape[0], dtype=torch.float64)
    out = discounted_returns(r, GAMMA, dones, bootstrap)
    torch.testing.assert_close(out, _brute_returns(r, GAMMA, dones, bootstrap))
    # without bootstrap the tail is cut to zero
    torch.testing.assert_close(discounted_returns(r, GAMMA, dones), _brute_returns(r, GAMMA, dones, 0 * bootstrap))
    # the bootstrap is ignored where the last step is done
    dones[:, -1] = 1
    torch.testing.assert_close(discounted_returns(r, GAMMA, dones, bootstrap), discounted_returns(r, GAMMA, dones))


def test_discounted_returns_accepts_bool_dones_and_leading_batch_dims():
    r, _, _, dones, _ = _episode(N=6)
    out = discounted_returns(r.view(2, 3, -1), GAMMA, dones.bool().view(2, 3, -1))
    torch.testing.assert_close(out.view(6, -1), _brute_returns(r, GAMMA, dones, torch.zeros(6)))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 12, 30])
def test_n_step_returns_matches_brute_force(n):
    r, _, next_values, dones, terminated = _episode(seed=n)
    out = n_step_returns(r, next_values, dones, GAMMA, n, terminated=terminated)
    torch.testing.assert_close(out, _brute_n_step(r, next_values, dones, terminated, GAMMA, n))
    # terminated defaults to dones: every episode end is a true terminal
    out = n_step_returns(r, next_values, dones, GAMMA, n)
    torch.testing.assert_close(out, _brute_n_step(r, next_values, dones, dones, GAMMA, n))


def test_n_step_returns_truncation_bootstraps_termination_does_not():
    r = torch.zeros(2, 3, dtype=torch.float64)
    next_values = torch.full((2, 3), 10.0, dtype=torch.float64)
    dones = torch.tensor([[0, 1, 0], [0, 1, 0]], dtype=torch.float64)
    terminated = torch.tensor([[0, 1, 0], [0, 0, 0]], dtype=torch.float64)  # row 1: time-limit truncation
    out = n_step_returns(r, next_values, dones, 0.5, 3, terminated=terminated)
    torch.testing.assert_close(out[:, 0], torch.tensor([0.0, 0.25 * 10], dtype=torch.float64))


def test_n_step_returns_n1_is_td_target_and_full_is_discounted_returns():
    r, _, next_values, dones, terminated = _episode(seed=3)
    torch.testing.assert_close(n_step_returns(r, next_values, dones, GAMMA, 1, terminated=terminated),
                               td_target(r, next_values, terminated, GAMMA))
    # with every end a termination, the full-window return is the reward-to-go bootstrapped at the window end
    full = discounted_returns(r, GAMMA, dones, bootstrap=next_values[:, -1])
    torch.testing.assert_close(n_step_returns(r, next_values, dones, GAMMA, None), full)
    torch.testing.assert_close(n_step_returns(r, next_values, dones, GAMMA, 100), full)


def test_n_step_returns_rejects_bad_n():
    r, _, next_values, dones, _ = _episode()
    with pytest.raises(ValueError, match="n must be >= 1"):
        n_step_returns(r, next_values, dones, GAMMA, 0)


def test_td_target_and_double_q():
    r = torch.tensor([1.0, 2.0])
    nv = torch.tensor([3.0, 4.0])
    torch.testing.assert_close(td_target(r, nv, torch.tensor([0, 1]), 0.9), torch.tensor([1 + 0.9 * 3, 2.0]))
    q_online = torch.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]])
    q_target = torch.tensor([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])
    # target net evaluates the online argmax (1 and 0), not its own argmax (2 and 2)
    torch.testing.assert_close(double_q_values(q_online, q_target), torch.tensor([20.0, 40.0]))


@pytest.mark.parametrize("lam", [0.0, 0.5, LAM, 1.0])
def test_gae_matches_brute_force_double_sum(lam):
    r, values, next_values, dones, terminated = _episode(seed=11)
    adv, ret = gae(r, values, next_values, dones, GAMMA, lam, terminated=terminated)
    torch.testing.assert_close(adv, _brute_gae(r, values, next_values, dones, terminated, GAMMA, lam))
    torch.testing.assert_close(ret, adv + values)
    adv_default, _ = gae(r, values, next_values, dones, GAMMA, lam)  # terminated defaults to dones
    torch.testing.assert_close(adv_default, _brute_gae(r, values, next_values, dones, dones, GAMMA, lam))


def test_gae_lambda0_is_td_residual():
    r, values, next_values, dones, terminated = _episode(seed=5)
    adv, _ = gae(r, values, next_values, dones, GAMMA, 0.0, terminated=terminated)
    torch.testing.assert_close(adv, td_target(r, next_values, terminated, GAMMA) - values)


def test_gae_lambda1_is_monte_carlo_return_minus_value():
    # Consistent values: next_values[t] = values[t+1] inside an episode, so the deltas telescope.
    r, _, _, dones, _ = _episode(seed=7)
    all_v = torch.randn(r.shape[0], r.shape[1] + 1, dtype=torch.float64)
    values, next_values = all_v[:, :-1], all_v[:, 1:]
    adv, ret = gae(r, values, next_values, dones, GAMMA, 1.0)
    mc = discounted_returns(r, GAMMA, dones, bootstrap=all_v[:, -1])
    torch.testing.assert_close(adv, mc - values)
    torch.testing.assert_close(ret, mc)


def test_gae_truncation_bootstraps_with_value_of_final_state():
    # One truncated episode ending at t=2 (V(s_final) = 5), then a new episode that terminates at t=4.
    r = torch.tensor([[1.0, 1.0, 1.0, 2.0, 2.0]], dtype=torch.float64)
    values = torch.zeros_like(r)
    next_values = torch.tensor([[0.0, 0.0, 5.0, 0.0, 9.0]], dtype=torch.float64)
    dones = torch.tensor([[0, 0, 1, 0, 1]], dtype=torch.float64)
    terminated = torch.tensor([[0, 0, 0, 0, 1]], dtype=torch.float64)
    adv, _ = gae(r, values, next_values, dones, 0.5, 1.0, terminated=terminated)
    expected = torch.tensor([[1 + 0.5 + 0.25 + 0.125 * 5, 1 + 0.5 + 0.25 * 5, 1 + 0.5 * 5, 2 + 0.5 * 2, 2.0]],
                            dtype=torch.float64)
    torch.testing.assert_close(adv, expected)
    # the same data with the truncation treated as terminal loses exactly the bootstrap terms
    adv_term, _ = gae(r, values, next_values, dones, 0.5, 1.0)
    torch.testing.assert_close((adv - adv_term)[0, :3], torch.tensor([0.625, 1.25, 2.5], dtype=torch.float64))


@pytest.mark.parametrize("batch", [(), (3,), (2, 4)])
def test_an_empty_window_gives_empty_outputs(batch):
    # T = 0 (e.g. a rollout cut to nothing) used to raise IndexError (rewards[..., 0]) or, for n_step_returns,
    # "n must be >= 1" from its default n = T; the brute-force definitions give empty sums.
    empty = torch.zeros(*batch, 0, dtype=torch.float64)
    outputs = [discounted_returns(empty, GAMMA), discounted_returns(empty, GAMMA, empty, torch.ones(batch)),
               *gae(empty, empty, empty, empty, GAMMA, LAM), *gae(empty, empty, empty, empty, GAMMA, LAM, empty),
               n_step_returns(empty, empty, empty, GAMMA, None), n_step_returns(empty, empty, None, GAMMA, 3),
               td_target(empty, empty, empty, GAMMA)]
    for out in outputs:
        assert out.shape == (*batch, 0) and out.dtype == torch.float64
    with pytest.raises(ValueError, match="n must be >= 1"):
        n_step_returns(empty, empty, empty, GAMMA, 0)
