"""TabularMDP: layouts, validation errors, constructors checked against their sources (gymnasium's P, pymdptoolbox's
published example arrays), and the sampling env against P."""
import gymnasium as gym
import numpy as np
import pytest
import scipy.sparse as sp

from llmrl.classic.mdp import TabularMDP


def small_mdp(seed=0, S=4, A=3):
    rng = np.random.default_rng(seed)
    P = rng.random((S, A, S)) * (rng.random((S, A, S)) < 0.6)
    P[:, :, 0] += 0.1  # every row has mass
    P /= P.sum(axis=2, keepdims=True)
    R = rng.normal(size=(S, A, S))
    return P, R


def test_dense_sparse_and_list_layouts_agree():
    P, R = small_mdp()
    S, A = P.shape[:2]
    dense = TabularMDP(P, R, 0.9)
    sparse = TabularMDP(sp.csr_array(P.reshape(S * A, S)), sp.csr_array(R.reshape(S * A, S)), 0.9)
    listed = TabularMDP([sp.csr_array(P[:, a]) for a in range(A)], [sp.csr_array(R[:, a]) for a in range(A)], 0.9)
    expected_r = (P * R).sum(axis=2)  # r(s,a) = sum_s' P(s'|s,a) R(s,a,s')
    for m in (dense, sparse, listed):
        assert (m.S, m.A) == (S, A)
        np.testing.assert_allclose(m.dense_P(), P, atol=1e-15)
        np.testing.assert_allclose(m.r, expected_r, atol=1e-12)
    assert dense.P.indices.dtype == np.int32


def test_reward_sa_is_taken_as_expected_reward():
    P, _ = small_mdp(1)
    r = np.arange(12.0).reshape(4, 3)
    m = TabularMDP(P, r, 0.5)
    np.testing.assert_array_equal(m.r, r)


@pytest.mark.parametrize("P_fix, match", [
    (lambda P: P * 0.9, r"rows must sum to 1: P\(\.\|s=0, a=0\) sums to 0\.9"),
    (lambda P: P[:, :, :3], r"P must have shape \(S, A, S\)"),
    (lambda P: np.where(np.arange(4) == 1, -0.5, P) + np.where(np.arange(4) == 2, 0.5, 0), "non-negative"),
    (lambda P: np.full_like(P, np.nan), "NaN"),
])
def test_bad_transitions_raise_clear_errors(P_fix, match):
    P, R = small_mdp()
    with pytest.raises(ValueError, match=match):
        TabularMDP(P_fix(P), R, 0.9)


def test_bad_rewards_gamma_s0_horizon_raise_clear_errors():
    P, R = small_mdp()
    with pytest.raises(ValueError, match=r"R must have shape \(S, A\) = \(4, 3\)"):
        TabularMDP(P, R[:, :2], 0.9)
    with pytest.raises(ValueError, match=r"gamma must be a number in \[0, 1\], got 1.5"):
        TabularMDP(P, R, 1.5)
    with pytest.raises(ValueError, match="gamma"):
        TabularMDP(P, R, -0.1)
    with pytest.raises(ValueError, match="s0 must be a state"):
        TabularMDP(P, R, 0.9, s0=7)
    with pytest.raises(ValueError, match="s0 must be a state .* or a distribution"):
        TabularMDP(P, R, 0.9, s0=[0.5, 0.6, 0, 0])
    with pytest.raises(ValueError, match="horizon must be a positive int"):
        TabularMDP(P, R, 0.9, horizon=0)
    with pytest.raises(ValueError, match=r"sparse P must have shape \(S\*A, S\)"):
        TabularMDP(sp.csr_array(np.eye(3)[:2]), np.zeros((3, 1)), 0.9)


def test_gridworld_structure():
    m = TabularMDP.gridworld()
    assert (m.S, m.A) == (12, 4)
    # terminals +1 (0,3), -1 (1,3) and the wall (1,1) are absorbing and rewardless
    assert sorted(np.flatnonzero(m.terminal)) == [3, 5, 7]
    P = m.dense_P()
    # from the start (2,0) going up (3): 0.8 up to (1,0), 0.1 left bumps (stay), 0.1 right to (2,1)
    np.testing.assert_allclose(P[8, 3, [4, 8, 9]], [0.8, 0.1, 0.1])
    # entering the +1 cell pays living reward + 1
    np.testing.assert_allclose(m.r[2, 2], 0.8 * (1 - 0.04) + 0.1 * -0.04 + 0.1 * -0.04)
    assert m.s0[8] == 1.0
    with pytest.raises(ValueError, match="outside shape"):
        TabularMDP.gridworld(walls=[(5, 5)])


def expected_from_gym_P(Pg, S, A):
    """Brute force: P and r(s,a) accumulated directly from the env's (prob, s', r, done) lists."""
    P, r = np.zeros((S, A, S)), np.zeros((S, A))
    for s in range(S):
        for a in range(A):
            for p, s2, rew, _ in Pg[s][a]:
                P[s, a, s2] += p
                r[s, a] += p * rew
    return P, r


@pytest.mark.parametrize("env_id, kwargs", [("FrozenLake-v1", {}), ("FrozenLake-v1", {"map_name": "8x8"}),
                                             ("CliffWalking-v1", {}), ("Taxi-v4", {})])
def test_from_gymnasium_matches_env_P_off_terminals(env_id, kwargs):
    env = gym.make(env_id, **kwargs)
    m = TabularMDP.from_gymnasium(env, gamma=0.95)
    S, A = env.observation_space.n, env.action_space.n
    P, r = expected_from_gym_P(env.unwrapped.P, S, A)
    live = ~m.terminal
    np.testing.assert_allclose(m.dense_P()[live], P[live], atol=1e-12)
    np.testing.assert_allclose(m.r[live], r[live], atol=1e-12)
    # every state the env enters with terminated=True is absorbing here
    ends = {s2 for s in range(S) for a in range(A) for p, s2, _, d in env.unwrapped.P[s][a] if d and p > 0}
    assert set(np.flatnonzero(m.terminal)) == ends
    np.testing.assert_allclose(m.s0, env.unwrapped.initial_state_distrib)


def test_from_gymnasium_frozenlake_terminals():
    m = TabularMDP.from_gymnasium(gym.make("FrozenLake-v1"))
    assert list(np.flatnonzero(m.terminal)) == [5, 7, 11, 12, 15]  # holes and the goal


def test_from_gymnasium_sink_adds_one_absorbing_state():
    env = gym.make("Taxi-v4")
    m = TabularMDP.from_gymnasium(env, terminal="sink")
    assert m.S == 501 and list(np.flatnonzero(m.terminal)) == [500]


class FakeToyText:
    """0 -a0-> 1 (terminated); 0 -a1-> 2 -> 1 without terminating: "absorb" would change this env."""

    def __init__(self):
        self.observation_space, self.action_space = gym.spaces.Discrete(3), gym.spaces.Discrete(2)
        self.unwrapped, self.spec = self, None
        self.initial_state_distrib = np.array([1.0, 0, 0])
        self.P = {0: {0: [(1.0, 1, 1.0, True)], 1: [(1.0, 2, 0.0, False)]},
                  1: {0: [(1.0, 0, 0.0, False)], 1: [(1.0, 0, 0.0, False)]},
                  2: {0: [(1.0, 1, 0.0, False)], 1: [(1.0, 1, 0.0, False)]}}


def test_from_gymnasium_refuses_inconsistent_absorb_and_sink_handles_it():
    with pytest.raises(ValueError, match="state 2 enters terminal state 1 without terminating.*terminal='sink'"):
        TabularMDP.from_gymnasium(FakeToyText())
    m = TabularMDP.from_gymnasium(FakeToyText(), terminal="sink")
    P = m.dense_P()
    assert P[0, 0, 3] == 1.0 and P[2, 0, 1] == 1.0 and m.r[0, 0] == 1.0


def test_from_gymnasium_merges_duplicate_successors():
    # slippery FrozenLake lists s'=0 twice for (0, LEFT): probabilities add up, rewards average
    m = TabularMDP.from_gymnasium(gym.make("FrozenLake-v1"))
    np.testing.assert_allclose(m.dense_P()[0, 0, [0, 4]], [2 / 3, 1 / 3])


def test_random_mdp_is_seeded_and_sparse():
    a, b = TabularMDP.random(200, 5, seed=3), TabularMDP.random(200, 5, seed=3)
    assert (a.P != b.P).nnz == 0 and np.array_equal(a.r, b.r)
    assert not np.array_equal(a.r, TabularMDP.random(200, 5, seed=4).r)
    assert a.P.shape == (1000, 200) and 4.5 * 1000 <= a.P.nnz <= 5 * 1000
    np.testing.assert_allclose(a.P.sum(axis=1), 1.0)


def test_forest_and_two_state_match_pymdptoolbox_arrays():
    # mdptoolbox.example.forest() docstring: P[0] = [[.1,.9,0],[.1,0,.9],[.1,0,.9]], P[1] = [[1,0,0]]*3,
    # R = [[0,0],[0,1],[4,2]]
    m = TabularMDP.forest()
    P = m.dense_P()
    np.testing.assert_allclose(P[:, 0], [[0.1, 0.9, 0], [0.1, 0, 0.9], [0.1, 0, 0.9]])
    np.testing.assert_allclose(P[:, 1], [[1, 0, 0]] * 3)
    np.testing.assert_allclose(m.r, [[0, 0], [0, 1], [4, 2]])
    t = TabularMDP.two_state()
    np.testing.assert_allclose(t.dense_P()[:, 0], [[0.5, 0.5], [0.8, 0.2]])
    np.testing.assert_allclose(t.dense_P()[:, 1], [[0, 1], [0.1, 0.9]])
    np.testing.assert_allclose(t.r, [[5, 10], [-1, 2]])


def test_to_env_samples_P_and_R():
    P, R = small_mdp(2)
    m = TabularMDP(P, R, 0.9, s0=1)
    env = m.to_env(max_episode_steps=5)
    counts = np.zeros(4)
    s, _ = env.reset(seed=0)
    n = 20000
    for _ in range(n):
        env.unwrapped.s = 2
        s2, rew, term, trunc, _ = env.step(1)
        counts[s2] += 1
        assert rew == pytest.approx(R[2, 1, s2]) and not term
    # 4 sigma of a binomial proportion
    assert np.all(np.abs(counts / n - P[2, 1]) < 4 * np.sqrt(P[2, 1] * (1 - P[2, 1]) / n) + 1e-12)
    s, _ = env.reset(seed=0)
    assert s == 1
    steps = 0
    while True:
        *_, term, trunc, _ = env.step(0)
        steps += 1
        if term or trunc:
            break
    assert trunc and steps == 5  # TimeLimit truncates the continuing MDP


def test_to_env_terminates_on_terminal_states():
    m = TabularMDP.gridworld(noise=0.0)
    env = m.to_env()
    env.reset(seed=0)
    env.unwrapped.s = 2  # left of +1
    s2, rew, term, trunc, _ = env.step(2)
    assert s2 == 3 and term and not trunc and rew == pytest.approx(1 - 0.04)
