"""DQN-family math against hand computations and brute force: TD / Double-DQN targets, dueling aggregation,
k-step sums of replayed windows, PER priorities and IS weights."""
import math

import pytest
import torch

from llmrl.objectives import (double_q_values, dueling_q_values, huber_loss, importance_sampling_weights,
                              n_step_sums, per_priorities, td_target)


def test_td_target_bootstraps_unless_terminated_with_per_sample_discount():
    r = torch.tensor([1.0, 1.0, 0.5])
    v = torch.tensor([10.0, 10.0, 4.0])
    term = torch.tensor([0.0, 1.0, 0.0])
    disc = torch.tensor([0.9, 0.9, 0.9 ** 3])  # gamma^m of k-step targets
    y = td_target(r, v, term, disc)
    torch.testing.assert_close(y, torch.tensor([1.0 + 9.0, 1.0, 0.5 + 0.729 * 4.0]))


def test_double_q_values_uses_online_argmax_and_target_value():
    online = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])
    target = torch.tensor([[7.0, -1.0, 9.0], [2.0, 8.0, 4.0]])
    torch.testing.assert_close(double_q_values(online, target), torch.tensor([-1.0, 2.0]))
    # Plain DQN would have used max target = [9, 8]: the decoupling is the whole point.


def test_huber_loss_values():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.5, 2.0])
    torch.testing.assert_close(huber_loss(x, 1.0), torch.tensor([2.5, 0.125, 0.0, 0.125, 1.5]))


def test_dueling_aggregation_matches_formula_and_is_identifiable():
    g = torch.Generator().manual_seed(0)
    V = torch.randn(5, 1, generator=g)
    A = torch.randn(5, 3, generator=g)
    Q = dueling_q_values(V, A)
    for b in range(5):
        for a in range(3):
            assert Q[b, a].item() == pytest.approx(V[b, 0].item() + A[b, a].item() - A[b].mean().item(), abs=1e-6)
    # mean_a Q(s, a) = V(s), and shifting A by a constant does not change Q.
    torch.testing.assert_close(Q.mean(-1, keepdim=True), V)
    torch.testing.assert_close(dueling_q_values(V, A + 4.0), Q)


def brute_force_n_step(rewards, ends, gamma):
    G, m = 0.0, 0
    for i, (r, e) in enumerate(zip(rewards, ends)):
        G += gamma ** i * r
        m = i + 1
        if e:
            break
    return G, m


@pytest.mark.parametrize("n", [1, 2, 5])
def test_n_step_sums_against_brute_force(n):
    g = torch.Generator().manual_seed(n)
    rewards = torch.randn(64, n, generator=g, dtype=torch.float64)
    ends = torch.rand(64, n, generator=g) < 0.3
    G, m = n_step_sums(rewards, ends, 0.9)
    for b in range(64):
        G_bf, m_bf = brute_force_n_step(rewards[b].tolist(), ends[b].tolist(), 0.9)
        assert G[b].item() == pytest.approx(G_bf, abs=1e-12)
        assert m[b].item() == m_bf


def test_n_step_sums_do_not_modify_ends():
    ends = torch.zeros(2, 3)
    n_step_sums(torch.ones(2, 3), ends, 0.5)
    assert ends.sum() == 0


def test_per_priorities_closed_form():
    td = torch.tensor([-2.0, 0.0, 0.5])
    torch.testing.assert_close(per_priorities(td, 0.6, 1e-6),
                               torch.tensor([(2 + 1e-6) ** 0.6, 1e-6 ** 0.6, (0.5 + 1e-6) ** 0.6]))
    torch.testing.assert_close(per_priorities(td, 0.0), torch.ones(3))  # alpha = 0 is uniform replay


def test_importance_sampling_weights_closed_form():
    probs = torch.tensor([0.1, 0.2, 0.05], dtype=torch.float64)
    N, beta = 40, 0.7
    raw = [(N * p) ** -beta for p in probs.tolist()]
    expected = torch.tensor([w / max(raw) for w in raw], dtype=torch.float64)
    w = importance_sampling_weights(probs, N, beta)
    torch.testing.assert_close(w, expected)
    assert w.max().item() == 1.0
    # Uniform sampling P(i) = 1/N needs no correction; beta = 0 corrects nothing.
    torch.testing.assert_close(importance_sampling_weights(torch.full((4,), 1 / 40.0), 40, 1.0), torch.ones(4))
    torch.testing.assert_close(importance_sampling_weights(probs, N, 0.0), torch.ones(3, dtype=torch.float64))
    assert math.isclose(w[2].item(), 1.0)  # the rarest sample gets the largest weight
