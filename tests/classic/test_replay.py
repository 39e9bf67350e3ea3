"""Replay: the sum-tree against cumulative sums, PER sampling proportions and IS weights against the exact
probabilities, k-step windows against a brute-force walk over the stored trajectory."""
import numpy as np
import pytest
import torch

from llmrl.classic.replay import PrioritizedReplayBuffer, ReplayBuffer, SumTree


@pytest.mark.parametrize("capacity", [1, 5, 8, 37])
def test_sum_tree_total_and_find_against_cumsum(capacity):
    rng = np.random.default_rng(capacity)
    tree = SumTree(capacity)
    p = rng.uniform(0.1, 2.0, capacity)
    tree.update(np.arange(capacity), p)
    assert tree.total == pytest.approx(p.sum())
    np.testing.assert_allclose(tree[np.arange(capacity)], p)
    prefix = rng.uniform(0, p.sum(), 500)
    np.testing.assert_array_equal(tree.find(prefix), np.searchsorted(np.cumsum(p), prefix, side="right"))
    # Updating a few leaves (with a duplicate index) keeps every internal node the sum of its children.
    tree.update(np.array([0, capacity - 1, 0]), np.array([3.0, 0.5, 3.0]))
    p[0], p[capacity - 1] = 3.0, 0.5
    if capacity == 1:
        p[0] = 3.0
    assert tree.total == pytest.approx(p.sum())
    internal = np.arange(1, tree.leaf0)
    np.testing.assert_allclose(tree.nodes[internal], tree.nodes[2 * internal] + tree.nodes[2 * internal + 1])


def test_sum_tree_never_returns_an_empty_leaf():
    tree = SumTree(5)  # 8 leaves, 3 of them empty
    tree.update(np.arange(5), np.ones(5))
    np.testing.assert_array_equal(tree.find(np.array([0.0, 4.999999, np.nextafter(5.0, 0), 5.0, 5.5])),
                                  [0, 4, 4, 4, 4])
    tree.update(np.array([4, 1]), np.zeros(2))  # zero-priority leaves are skipped at any prefix
    np.testing.assert_array_equal(tree.find(np.array([0.5, 1.0, 2.999, 3.0, 9.0])), [0, 2, 3, 3, 3])
    tree.update(np.array([0]), np.zeros(1))  # a draw u = 0 must not return a first leaf of priority 0
    np.testing.assert_array_equal(tree.find(np.array([0.0, np.nextafter(1.0, 0), 1.0])), [2, 2, 3])


def fill(buffer, n, rng, num_envs=1):
    for _ in range(n):
        buffer.add(rng.standard_normal((num_envs, 2)).astype(np.float32), rng.integers(0, 2, num_envs),
                   rng.standard_normal(num_envs).astype(np.float32),
                   rng.standard_normal((num_envs, 2)).astype(np.float32), np.zeros(num_envs), np.zeros(num_envs))


def test_prioritized_sampling_proportions_match_exact_probabilities():
    rng = np.random.default_rng(0)
    buf = PrioritizedReplayBuffer(10, (2,), alpha=0.5, eps=0.0)
    fill(buf, 10, rng)
    td = torch.tensor([0.1, 1.0, 4.0, 0.0, 9.0, 2.0, 0.5, 0.25, 3.0, 1.5], dtype=torch.float64)
    buf.update_priorities(np.arange(10), td)
    exact = (td.abs().numpy() ** 0.5) / (td.abs().numpy() ** 0.5).sum()
    counts = np.zeros(10)
    for _ in range(4000):
        counts += np.bincount(buf.sample(16, rng).indices, minlength=10)
    freq = counts / counts.sum()
    assert counts[3] == 0  # priority 0 (eps = 0) is never sampled
    np.testing.assert_allclose(freq, exact, atol=0.004)


def test_prioritized_is_weights_against_exact_probabilities():
    rng = np.random.default_rng(1)
    buf = PrioritizedReplayBuffer(32, (2,), alpha=0.7, eps=1e-3)
    fill(buf, 20, rng)  # 20 of 32 slots used: N = 20
    td = torch.from_numpy(rng.uniform(0, 3, 20))
    buf.update_priorities(np.arange(20), td)
    p = (td.numpy() + 1e-3) ** 0.7
    P = p / p.sum()
    batch = buf.sample(8, rng, beta=0.6)
    w = (20 * P[batch.indices]) ** -0.6
    np.testing.assert_allclose(batch.weights.numpy(), w / w.max(), rtol=1e-6)
    assert batch.indices.max() < 20


def test_new_transitions_get_the_max_priority():
    rng = np.random.default_rng(2)
    buf = PrioritizedReplayBuffer(8, (2,), alpha=1.0, eps=0.0)
    fill(buf, 3, rng)
    np.testing.assert_allclose(buf.priorities(np.arange(3)), 1.0)
    buf.update_priorities(np.array([0, 1]), torch.tensor([5.0, 0.2]))
    fill(buf, 1, rng)
    np.testing.assert_allclose(buf.priorities(np.arange(4)), [5.0, 0.2, 1.0, 5.0])


def test_uniform_buffer_wraps_and_samples_stored_rows():
    rng = np.random.default_rng(3)
    buf = ReplayBuffer(5, (1,))
    for t in range(7):  # rows 0, 1 are overwritten by steps 5, 6
        buf.add(np.array([[t]]), np.array([t % 2]), np.array([float(t)]), np.array([[t + 1]]), np.array([0.0]),
                np.array([0.0]))
    assert len(buf) == 5 and buf.full and buf.pos == 2
    batch = buf.sample(200, rng)
    assert set(batch.obs[:, 0].tolist()) == {2.0, 3.0, 4.0, 5.0, 6.0}
    torch.testing.assert_close(batch.rewards, batch.obs[:, 0])
    torch.testing.assert_close(batch.next_obs[:, 0], batch.obs[:, 0] + 1)
    torch.testing.assert_close(batch.discounts, torch.full((200,), 0.99))
    assert batch.weights.eq(1).all()


def brute_force_target(steps, start, n, gamma, newest):
    """(G, gamma^m, next_obs, terminated) by walking the stored steps of one env from `start`."""
    G, i = 0.0, start
    for k in range(n):
        i = start + k
        G += gamma ** k * steps[i]["r"]
        if steps[i]["term"] or steps[i]["trunc"] or i == newest:
            break
    return G, gamma ** (k + 1), steps[i]["next"], float(steps[i]["term"])


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("num_envs", [1, 3])
def test_n_step_targets_against_brute_force(num_envs, n):
    # Episodes that terminate and that are truncated, several envs, a ring buffer that has wrapped.
    rng = np.random.default_rng(4)
    gamma, T, cap_rows = 0.9, 40, 25
    buf = ReplayBuffer(cap_rows * num_envs, (1,), num_envs=num_envs, n_step=n, gamma=gamma)
    steps = [[] for _ in range(num_envs)]
    for t in range(T):
        term = rng.random(num_envs) < 0.15
        trunc = ~term & (rng.random(num_envs) < 0.15)
        r = rng.standard_normal(num_envs).astype(np.float32)
        obs = np.array([[100 * e + t] for e in range(num_envs)], dtype=np.float32)
        nxt = obs + 0.5
        buf.add(obs, rng.integers(0, 2, num_envs), r, nxt, term, trunc)
        for e in range(num_envs):
            steps[e].append({"r": float(r[e]), "term": bool(term[e]), "trunc": bool(trunc[e]),
                             "next": float(nxt[e, 0])})
    batch = buf._gather(np.arange(len(buf)), np.ones(len(buf), dtype=np.float32))
    for b, flat in enumerate(batch.indices):
        env = flat % num_envs
        t_step = int(batch.obs[b, 0].item()) - 100 * env  # the obs encodes its env and time step
        G, disc, nxt, term = brute_force_target(steps[env], t_step, n, gamma, newest=T - 1)
        assert batch.rewards[b].item() == pytest.approx(G, abs=1e-5)
        assert batch.discounts[b].item() == pytest.approx(disc)
        assert batch.next_obs[b, 0].item() == nxt
        assert batch.terminated[b].item() == term
    assert len(buf) == cap_rows * num_envs


def test_buffer_errors_name_the_argument():
    with pytest.raises(ValueError, match="n_step"):
        ReplayBuffer(10, (2,), n_step=0)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0, (2,))
