"""Dynamic programming checked against independent computations: brute-force enumeration of deterministic policies
with numpy linear solves, pymdptoolbox's published example values, and AIMA's 4x3 gridworld utilities."""
import itertools

import gymnasium as gym
import numpy as np
import pytest

from llmrl.classic.dp import (greedy_policy, policy_evaluation, policy_iteration, policy_matrices, proper_policy,
                              q_from_v, q_value_iteration, value_iteration)
from llmrl.classic.mdp import TabularMDP


def solve_dense(P, r, gamma, pi):
    """V^pi by numpy's dense solve of (I - gamma P_pi) V = r_pi; pi (S, A) probabilities."""
    S = P.shape[0]
    P_pi = np.einsum("sa,sat->st", pi, P)
    return np.linalg.solve(np.eye(S) - gamma * P_pi, (pi * r).sum(axis=1))


def brute_force_optimum(m):
    """V* as the elementwise max over all A^S deterministic policies (an optimal one is among them)."""
    P, best = m.dense_P(), np.full(m.S, -np.inf)
    for actions in itertools.product(range(m.A), repeat=m.S):
        best = np.maximum(best, solve_dense(P, m.r, m.gamma, np.eye(m.A)[list(actions)]))
    return best


@pytest.mark.parametrize("mdp", [TabularMDP.two_state(0.9), TabularMDP.forest(gamma=0.96),
                                 TabularMDP.random(5, 3, successors=3, gamma=0.9, seed=7)],
                         ids=["two_state", "forest", "random"])
def test_vi_pi_qvi_equal_brute_force_optimum(mdp):
    V_star = brute_force_optimum(mdp)
    tol = 1e-8
    for result in (value_iteration(mdp, tol=tol), value_iteration(mdp, tol=tol, stop="span"),
                   q_value_iteration(mdp, tol=tol), policy_iteration(mdp)):
        assert result.converged
        np.testing.assert_allclose(result.V, V_star, atol=tol)
        # the greedy policy's own value (exact solve) is optimal too
        pi = np.eye(mdp.A)[result.policy]
        np.testing.assert_allclose(solve_dense(mdp.dense_P(), mdp.r, mdp.gamma, pi), V_star, atol=tol)


def test_values_equal_exact_linear_solve_of_the_policy():
    m = TabularMDP.from_gymnasium(gym.make("FrozenLake-v1", map_name="8x8"), gamma=0.99)
    res = value_iteration(m, tol=1e-10)
    V_pi = solve_dense(m.dense_P(), m.r, m.gamma, np.eye(4)[res.policy])
    np.testing.assert_allclose(res.V, V_pi, atol=1e-10)
    np.testing.assert_allclose(policy_evaluation(m, res.policy), V_pi, atol=1e-12)
    np.testing.assert_allclose(res.Q, q_from_v(m, V_pi), atol=1e-10)


@pytest.mark.parametrize("stop", ["sup", "span"])
@pytest.mark.parametrize("gamma", [0.9, 0.99])
def test_stopping_rule_guarantees_tol(stop, gamma):
    m = TabularMDP.random(300, 4, gamma=gamma, seed=1)
    V_star = policy_iteration(m).V
    tol = 1e-3
    res = value_iteration(m, tol=tol, stop=stop)
    assert np.abs(res.V - V_star).max() < tol / 2
    assert (V_star - policy_evaluation(m, res.policy)).max() < tol  # the greedy policy is tol-optimal


def test_stochastic_policy_evaluation_equals_exact_solve():
    m = TabularMDP.random(30, 4, gamma=0.95, seed=2)
    pi = np.random.default_rng(0).dirichlet(np.ones(4), size=30)
    V = solve_dense(m.dense_P(), m.r, m.gamma, pi)
    np.testing.assert_allclose(policy_evaluation(m, pi), V, atol=1e-10)
    np.testing.assert_allclose(policy_evaluation(m, pi, method="iterative", tol=1e-9), V, atol=1e-9)
    # a deterministic policy as ints or as one-hot probabilities is the same policy
    det = np.arange(30) % 4
    np.testing.assert_allclose(policy_evaluation(m, det), policy_evaluation(m, np.eye(4)[det]), atol=1e-12)


def test_krylov_path_for_large_S_matches_iterative():
    m = TabularMDP.random(3000, 2, gamma=0.95, seed=5)  # above DIRECT_MAX_STATES: BiCGSTAB
    pi = np.arange(3000) % 2
    np.testing.assert_allclose(policy_evaluation(m, pi), policy_evaluation(m, pi, method="iterative", tol=1e-10),
                               atol=1e-9)


@pytest.mark.parametrize("mdp", [
    TabularMDP.from_gymnasium(gym.make("FrozenLake-v1", map_name="8x8"), gamma=0.99),
    TabularMDP.from_gymnasium(gym.make("Taxi-v4"), gamma=0.95),
    TabularMDP.gridworld(gamma=0.9),
    TabularMDP.random(500, 6, gamma=0.95, seed=3),
], ids=["frozenlake8x8", "taxi", "gridworld", "random"])
def test_vi_and_pi_agree_on_the_optimal_policy(mdp):
    vi = value_iteration(mdp, tol=1e-9)
    pi = policy_iteration(mdp)
    pi_iter = policy_iteration(mdp, evaluation="iterative")
    np.testing.assert_allclose(vi.V, pi.V, atol=1e-9)
    np.testing.assert_allclose(pi_iter.V, pi.V, atol=1e-8)
    Q = pi.Q
    gap = np.sort(Q, axis=1)[:, -1] - np.sort(Q, axis=1)[:, -2]
    unique = gap > 1e-6  # where the optimal action is unique, all three pick it
    assert unique.sum() > 0
    np.testing.assert_array_equal(vi.policy[unique], pi.policy[unique])
    np.testing.assert_array_equal(pi_iter.policy[unique], pi.policy[unique])


def test_finite_horizon_increases_toward_v_star():
    m = TabularMDP.from_gymnasium(gym.make("FrozenLake-v1"), gamma=0.95)  # rewards >= 0: V_H grows with H
    V_star = value_iteration(m, tol=1e-12).V
    previous = np.zeros(m.S)
    for H in (1, 2, 5, 10, 20, 50, 100, 200):
        res = value_iteration(m, horizon=H)
        assert res.V.shape == (H + 1, m.S) and res.policy.shape == (H, m.S) and res.Q.shape == (H, m.S, m.A)
        V_H = res.V[0]
        assert np.all(V_H >= previous - 1e-15) and np.all(V_H <= V_star + 1e-12)
        assert np.abs(V_star - V_H).max() <= m.gamma ** H * np.abs(V_star).max() + 1e-12  # ||T^H 0 - V*|| bound
        previous = V_H
    assert np.abs(V_star - previous).max() < 1e-4


def test_finite_horizon_backward_induction_by_hand():
    m = TabularMDP.two_state(gamma=1.0)  # finite horizon allows gamma = 1
    res = value_iteration(m, horizon=2)
    V1 = m.r.max(axis=1)  # one step to go
    Q0 = m.r + m.dense_P() @ V1
    np.testing.assert_allclose(res.V, [Q0.max(axis=1), V1, [0, 0]])
    np.testing.assert_array_equal(res.policy, [Q0.argmax(axis=1), m.r.argmax(axis=1)])
    # the MDP's own horizon is used when none is passed
    np.testing.assert_allclose(value_iteration(TabularMDP(m.dense_P(), m.r, 1.0, horizon=2)).V, res.V)


# ---- pymdptoolbox's published example values (mdptoolbox/mdp.py docstrings, pymdptoolbox 4.0b3)
def test_pymdptoolbox_forest_policy_iteration():
    # PolicyIteration(P, R, 0.9): V = (26.244000000000014, 29.484000000000016, 33.484000000000016), policy (0,0,0)
    res = policy_iteration(TabularMDP.forest(gamma=0.9))
    np.testing.assert_allclose(res.V, [26.244000000000014, 29.484000000000016, 33.484000000000016], atol=1e-12)
    np.testing.assert_array_equal(res.policy, [0, 0, 0])


def test_pymdptoolbox_forest_value_iteration():
    # ValueIteration(P, R, 0.96): V = (5.93215488, 9.38815488, 13.38815488), policy (0,0,0), iter 4. Its V is the
    # 4th backup from V = 0 (its span rule stopped after 4 sweeps), i.e. our horizon-4 V_0.
    m = TabularMDP.forest(gamma=0.96)
    np.testing.assert_allclose(value_iteration(m, horizon=4).V[0], [5.93215488, 9.38815488, 13.38815488],
                               atol=1e-12)
    res = value_iteration(m, tol=0.01, stop="span")  # the same rule: stops after the same 4 sweeps (+1 greedy)
    assert res.iterations - 1 == 4
    np.testing.assert_array_equal(res.policy, [0, 0, 0])
    np.testing.assert_allclose(res.V, policy_iteration(m).V, atol=0.01 / 2)  # but V shifted onto V*


def test_pymdptoolbox_forest_finite_horizon():
    # FiniteHorizon(P, R, 0.9, 3): V[:, n] for stages n = 0..3, policy[:, n]
    res = value_iteration(TabularMDP.forest(gamma=0.9), horizon=3)
    np.testing.assert_allclose(res.V.T, [[2.6973, 0.81, 0.0, 0.0], [5.9373, 3.24, 1.0, 0.0],
                                         [9.9373, 7.24, 4.0, 0.0]], atol=1e-12)
    np.testing.assert_array_equal(res.policy.T, [[0, 0, 0], [0, 0, 1], [0, 0, 0]])


def test_pymdptoolbox_two_state_value_iteration():
    # ValueIteration(P, R, 0.9) on the two-state example: V = (40.048625392716815, 33.65371175967546),
    # policy (1, 0), iter 26
    m = TabularMDP.two_state(0.9)
    np.testing.assert_allclose(value_iteration(m, horizon=26).V[0], [40.048625392716815, 33.65371175967546],
                               atol=1e-12)
    res = value_iteration(m, tol=0.01, stop="span")
    assert res.iterations - 1 == 26
    np.testing.assert_array_equal(res.policy, [1, 0])


def test_aima_gridworld_utilities():
    # AIMA 3rd ed. fig. 17.3: utilities of the 4x3 world, gamma = 1, R(s) = -0.04 (rows top to bottom)
    res = value_iteration(TabularMDP.gridworld(), tol=1e-10)
    expected = np.array([[0.812, 0.868, 0.918, 0.0], [0.762, 0.0, 0.660, 0.0], [0.705, 0.655, 0.611, 0.388]])
    np.testing.assert_allclose(res.V.reshape(3, 4), expected, atol=5e-4)
    # fig. 17.2 policy: up the left column, right along the top, and left at (row 2, col 3)
    assert list(res.policy[[8, 4, 0, 1, 2, 11]]) == [3, 3, 2, 2, 2, 0]


@pytest.mark.filterwarnings("ignore::scipy.sparse.SparseEfficiencyWarning")
def test_side_by_side_with_pymdptoolbox_when_installed():
    mdptoolbox = pytest.importorskip("mdptoolbox.mdp")
    import scipy.sparse as sp

    m = TabularMDP.random(60, 3, gamma=0.9, seed=11)
    P = [sp.csr_matrix(m.P[a * m.S:(a + 1) * m.S]) for a in range(m.A)]
    theirs = mdptoolbox.PolicyIteration(P, np.asarray(m.r), 0.9)
    theirs.run()
    ours = policy_iteration(m)
    np.testing.assert_allclose(ours.V, theirs.V, atol=1e-10)
    np.testing.assert_array_equal(ours.policy, theirs.policy)


def test_gamma_one_needs_horizon_or_terminals():
    with pytest.raises(ValueError, match="gamma=1 needs horizon= or an episodic MDP"):
        value_iteration(TabularMDP.two_state(gamma=1.0))
    with pytest.raises(ValueError, match="gamma=1"):
        q_value_iteration(TabularMDP.two_state(gamma=1.0))


def test_improper_policy_with_gamma_one_is_a_clear_error():
    m = TabularMDP.gridworld()  # gamma = 1; always-left never leaves column 0
    with pytest.raises(ValueError, match="proper policy"):
        policy_evaluation(m, np.zeros(m.S, dtype=int))


AIMA_UTILITIES = np.array([[0.812, 0.868, 0.918, 0.0], [0.762, 0.0, 0.660, 0.0], [0.705, 0.655, 0.611, 0.388]])


def test_policy_iteration_at_gamma_one_from_the_default_start():
    # The default start used to be greedy on r, which on the 4x3 world (every r = -0.04) is "left" everywhere:
    # improper, and its evaluation failed with "I - gamma P_pi is singular".
    m = TabularMDP.gridworld()
    res = policy_iteration(m)
    assert res.converged
    np.testing.assert_allclose(res.V.reshape(3, 4), AIMA_UTILITIES, atol=5e-4)  # AIMA fig. 17.3, by hand
    np.testing.assert_allclose(res.V, value_iteration(m, tol=1e-12).V, atol=1e-9)
    assert list(res.policy[[8, 4, 0, 1, 2, 11]]) == [3, 3, 2, 2, 2, 0]  # AIMA fig. 17.2


@pytest.mark.parametrize("map_name", ["4x4", "8x8"])
@pytest.mark.parametrize("slippery", [True, False])
def test_policy_iteration_at_gamma_one_on_frozenlake(map_name, slippery):
    # Undiscounted FrozenLake: V*(s) = the highest probability of reaching the goal; loops pay 0 there.
    m = TabularMDP.from_gymnasium(gym.make("FrozenLake-v1", map_name=map_name, is_slippery=slippery), gamma=1.0)
    res = policy_iteration(m)
    np.testing.assert_allclose(res.V, value_iteration(m, tol=1e-13, max_iters=10**6).V, atol=1e-8)
    assert (res.V >= -1e-12).all() and (res.V <= 1 + 1e-9).all()
    if not slippery:  # the goal is reached for sure by walking there
        assert res.V[0] == pytest.approx(1.0)


def test_proper_policy_reaches_a_terminal_state_with_probability_one():
    for m in (TabularMDP.gridworld(),
              TabularMDP.from_gymnasium(gym.make("FrozenLake-v1", map_name="8x8"), gamma=1.0)):
        pi = proper_policy(m)
        live = ~m.terminal
        P_live = policy_matrices(m, pi)[0].toarray()[np.ix_(live, live)]
        # P(still among the live states after n steps) = P_live^n 1 -> 0 iff the spectral radius is below 1
        assert np.abs(np.linalg.eigvals(P_live)).max() < 1 - 1e-6
        steps_to_end = np.linalg.solve(np.eye(live.sum()) - P_live, np.ones(live.sum()))  # expected episode length
        assert np.isfinite(steps_to_end).all() and (steps_to_end >= 1).all()
    # a state that no action can move out of, with reward: no proper policy exists
    P = np.zeros((3, 2, 3))
    P[0, :, 2] = 1.0
    P[1, :, 1] = 1.0
    P[2, :, 2] = 1.0
    stuck = TabularMDP(P, np.array([[1.0, 1.0], [-1.0, -1.0], [0.0, 0.0]]), 1.0)
    with pytest.raises(ValueError, match=r"from states \[1\]"):
        proper_policy(stuck)


def test_bad_arguments_raise_clear_errors():
    m = TabularMDP.two_state()
    with pytest.raises(ValueError, match=r"policy must be an int array of shape \(2,\)"):
        policy_evaluation(m, np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match=r"policy actions must be in \[0, 2\)"):
        policy_evaluation(m, np.array([0, 2]))
    with pytest.raises(ValueError, match=r"pi\(\.\|s=1\)"):
        policy_evaluation(m, np.array([[0.5, 0.5], [0.7, 0.7]]))
    with pytest.raises(ValueError, match="method must be 'exact' or 'iterative'"):
        policy_evaluation(m, np.array([0, 1]), method="lu")
    with pytest.raises(ValueError, match="stop must be 'sup' or 'span'"):
        value_iteration(m, stop="l2")
    with pytest.raises(ValueError, match="tol must be > 0"):
        value_iteration(m, tol=0)


def test_max_iters_warns_and_flags_not_converged():
    with pytest.warns(RuntimeWarning, match="max_iters=3"):
        res = value_iteration(TabularMDP.forest(gamma=0.99), max_iters=3)
    assert not res.converged


def test_greedy_policy_lowest_index_on_ties():
    np.testing.assert_array_equal(greedy_policy(np.array([[1.0, 1.0], [0.0, 2.0]])), [0, 1])
