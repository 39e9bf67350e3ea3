"""Sample-based tabular RL checked against exact DP: Q-learning recovers Q* / the optimal policy, TD(0) converges to
V^pi, and the terminal-vs-truncated rule is checked on hand-computable one-step episodes."""
import gymnasium as gym
import numpy as np
import pytest

from llmrl.classic.dp import greedy_policy, policy_evaluation, q_value_iteration, value_iteration
from llmrl.classic.mdp import TabularMDP
from llmrl.classic.schedules import constant_schedule, linear_schedule, power_schedule
from llmrl.classic.td import (epsilon_greedy, epsilon_greedy_policy, q_learning, run_episodes, sample_action,
                              td0_evaluation, td_policy_improvement)


def test_schedules():
    assert constant_schedule(0.3)(1000) == 0.3
    lin = linear_schedule(1.0, 0.1, 10)
    assert lin(0) == 1.0 and lin(5) == pytest.approx(0.55) and lin(10) == pytest.approx(0.1) == lin(99)
    pw = power_schedule(0.5 + 1e-9, c=2.0)
    assert pw(0) == 2.0 and pw(3) == pytest.approx(2.0 / 4 ** 0.5)
    for bad in (0.5, 1.5):  # sum alpha^2 = inf at p = 1/2; sum alpha < inf above 1
        with pytest.raises(ValueError, match=r"p must be in \(0.5, 1\]"):
            power_schedule(bad)
    with pytest.raises(ValueError, match="duration"):
        linear_schedule(1, 0, 0)


def test_epsilon_greedy_frequencies_match_its_probabilities():
    rng = np.random.default_rng(0)
    Q = np.array([[1.0, 3.0, 3.0, 0.0]])  # two tied maximizers
    probs = epsilon_greedy_policy(Q, 0.2)[0]
    np.testing.assert_allclose(probs, [0.05, 0.45, 0.45, 0.05])
    n = 40_000
    counts = np.bincount([epsilon_greedy(Q[0], 0.2, rng) for _ in range(n)], minlength=4) / n
    assert np.all(np.abs(counts - probs) < 4 * np.sqrt(probs * (1 - probs) / n))
    assert all(epsilon_greedy(np.array([0.0, 5.0, 1.0]), 0.0, rng) == 1 for _ in range(100))


def test_sample_action_never_draws_an_action_of_probability_zero():
    # u = 0 (numpy's random() can return it) and u just below 1 are the two ends of the inverse CDF.
    probs = np.array([0.0, 0.3, 0.0, 0.7, 0.0])
    assert sample_action(probs, 0.0) == 1
    assert sample_action(probs, np.nextafter(1.0, 0.0)) == 3
    assert sample_action(probs, 0.3) == 3  # the boundary u = cdf(1) belongs to the next positive action
    rng = np.random.default_rng(0)
    counts = np.bincount([sample_action(probs, rng.random()) for _ in range(20_000)], minlength=5) / 20_000
    assert counts[[0, 2, 4]].sum() == 0 and abs(counts[1] - 0.3) < 0.02


def test_run_episodes_counts_steps_and_completed_episodes():
    # Deterministic 2-step episodes (one_step_env below has 1-step ones): 7 steps = 3 whole episodes + 1 cut.
    env = TabularMDP(np.array([[[0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]], [[0.0, 0.0, 1.0]]]),
                     np.array([[1.0], [2.0], [0.0]]), 1.0, s0=0).to_env()
    seen = []
    returns, lengths = run_episodes(env, 7, seed=0, act=lambda s, t: 0,
                                    update=lambda *transition: seen.append(transition))
    assert returns.tolist() == [3.0, 3.0, 3.0] and lengths.tolist() == [2, 2, 2]
    assert seen[:2] == [(0, 0, 1.0, 1, False), (1, 0, 2.0, 2, True)] and len(seen) == 7


def one_step_env(terminal_next: bool):
    """s=0 --a--> s=1 with reward 1; s=1 is terminal (absorbing) or not; episodes of one step (TimeLimit)."""
    P = np.zeros((2, 1, 2))
    P[0, 0, 1] = 1.0
    P[1, 0, 1 if terminal_next else 0] = 1.0
    r = np.array([[1.0], [0.0]])
    return TabularMDP(P, r, 0.9, s0=0).to_env(max_episode_steps=1)


def test_q_learning_bootstraps_at_truncation_not_at_termination():
    Q0 = np.array([[0.0], [10.0]])
    # truncated after one step: target = r + gamma max Q(s') = 1 + 0.9 * 10
    res = q_learning(one_step_env(terminal_next=False), 1, gamma=0.9, alpha=1.0, epsilon=0.0, Q0=Q0)
    assert res.Q[0, 0] == pytest.approx(1 + 0.9 * 10)
    # terminated: target = r
    res = q_learning(one_step_env(terminal_next=True), 1, gamma=0.9, alpha=1.0, epsilon=0.0, Q0=Q0)
    assert res.Q[0, 0] == pytest.approx(1.0)
    V0 = np.array([0.0, 10.0])
    res = td0_evaluation(one_step_env(False), np.array([0, 0]), 1, gamma=0.9, alpha=1.0, V0=V0)
    assert res.V[0] == pytest.approx(10.0)
    res = td0_evaluation(one_step_env(True), np.array([0, 0]), 1, gamma=0.9, alpha=1.0, V0=V0)
    assert res.V[0] == pytest.approx(1.0)


def test_q_learning_recovers_optimal_policy_of_deterministic_frozenlake():
    env = gym.make("FrozenLake-v1", is_slippery=False)
    mdp = TabularMDP.from_gymnasium(env, gamma=0.99)
    opt = value_iteration(mdp, tol=1e-12)
    res = q_learning(env, 20_000, gamma=0.99, alpha=1.0, epsilon=linear_schedule(1.0, 0.05, 15_000), seed=0)
    live = ~mdp.terminal
    np.testing.assert_allclose(res.Q[live], opt.Q[live], atol=1e-9)  # deterministic env + alpha = 1: exact
    pi = greedy_policy(res.Q)
    optimal_actions = opt.Q >= opt.Q.max(axis=1, keepdims=True) - 1e-9
    assert optimal_actions[np.arange(mdp.S), pi][live].all()
    np.testing.assert_allclose(policy_evaluation(mdp, pi)[0], opt.V[0], atol=1e-12)
    assert res.lengths.sum() <= 20_000 and res.returns[-200:].mean() > 0.8


def test_q_learning_is_seeded():
    env = gym.make("FrozenLake-v1")
    a = q_learning(env, 2000, alpha=0.5, epsilon=0.3, seed=3)
    b = q_learning(env, 2000, alpha=0.5, epsilon=0.3, seed=3)
    np.testing.assert_array_equal(a.Q, b.Q)
    np.testing.assert_array_equal(a.returns, b.returns)


def test_q_learning_converges_to_q_star_on_a_continuing_mdp_with_time_limits():
    # Continuing MDP cut into 10-step episodes: only bootstrapping at truncation gives Q*.
    mdp = TabularMDP.random(6, 2, successors=3, gamma=0.8, seed=1)
    res = q_learning(mdp.to_env(max_episode_steps=10), 20_000, gamma=0.8, alpha=power_schedule(0.7),
                     epsilon=1.0, seed=0)  # off-policy: a uniform behaviour policy still learns Q*
    Q_star = q_value_iteration(mdp, tol=1e-10).Q
    assert np.abs(res.Q - Q_star).max() < 0.1  # |Q*| ~ 3-4; treating truncation as terminal is off by > 1


def test_td0_converges_to_v_pi_on_a_continuing_mdp_with_time_limits():
    mdp = TabularMDP.random(6, 2, successors=3, gamma=0.8, seed=1)
    pi = np.array([0, 1, 0, 1, 1, 0])
    res = td0_evaluation(mdp.to_env(max_episode_steps=10), pi, 20_000, gamma=0.8,
                         alpha=power_schedule(0.8), seed=0)
    assert np.abs(res.V - policy_evaluation(mdp, pi)).max() < 0.1


def test_td0_converges_to_v_pi_of_a_stochastic_policy_on_the_gridworld():
    mdp = TabularMDP.gridworld(gamma=0.9)
    pi = epsilon_greedy_policy(value_iteration(mdp).Q, 0.3)  # stochastic, so every cell gets visited
    res = td0_evaluation(mdp.to_env(max_episode_steps=100), pi, 40_000, gamma=0.9,
                         alpha=power_schedule(0.8), seed=0)
    assert np.abs(res.V - policy_evaluation(mdp, pi)).max() < 0.06


def test_td_policy_improvement_finds_the_optimal_greedy_policy():
    env = gym.make("FrozenLake-v1", is_slippery=False)
    mdp = TabularMDP.from_gymnasium(env, gamma=0.99)
    res = td_policy_improvement(env, 15_000, steps_per_round=1000, gamma=0.99, alpha=0.5, epsilon=0.2, seed=0)
    assert res.policy.shape == (16, 4) and np.allclose(res.policy.sum(axis=1), 1)
    np.testing.assert_allclose(policy_evaluation(mdp, greedy_policy(res.Q))[0], value_iteration(mdp).V[0],
                               atol=1e-6)


def test_non_discrete_env_and_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="Discrete observation and action spaces"):
        q_learning(gym.make("CartPole-v1"), 1)
    env = gym.make("FrozenLake-v1")
    with pytest.raises(ValueError, match=r"epsilon must be in \[0.0, 1.0\]"):
        q_learning(env, 1, epsilon=1.5)
    with pytest.raises(ValueError, match="alpha_by"):
        q_learning(env, 1, alpha_by="episodes")
    with pytest.raises(ValueError, match="total_timesteps"):
        q_learning(env, 0)
    with pytest.raises(ValueError, match=r"policy must be ints in \[0, 4\)"):
        td0_evaluation(env, np.full(16, 4), 1)
