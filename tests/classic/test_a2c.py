"""A2C and the rollout collector it runs on: exact truncation bootstrapping, k-step / GAE advantages against
hand computations, and smoke / learning / determinism / save-load runs."""
import numpy as np
import pytest
import torch
from torch import nn

from llmrl.classic.a2c import A2CConfig, a2c_advantages, train_a2c
from llmrl.classic.common import make_vec_env
from llmrl.classic.policies import Actor
from llmrl.classic.rollout import RolloutCollector
from llmrl.classic.run import Run, load_agent

from .test_policies import (ALTERNATE_ID, HORIZON, TRACK_ID, assert_same_weights, register_toy_envs, run_recipe,
                           without_timings)


class LinearValue(nn.Module):
    """V(s) = w . s: a critic whose value of any observation the test can compute by hand."""

    w = torch.arange(1.0, HORIZON + 2)

    def forward(self, obs):
        return obs @ self.w


def _cfg(tmp_path, **kw):
    register_toy_envs()
    base = dict(output_dir=str(tmp_path), report_to="none", progress_bar=False, eval_episodes=2)
    return A2CConfig(**(base | kw))


def _collect(tmp_path, num_steps=12, num_envs=3):
    cfg = _cfg(tmp_path, env_id=ALTERNATE_ID, num_envs=num_envs)
    run = Run(cfg)
    run.start()
    envs = make_vec_env(ALTERNATE_ID, num_envs, seed=0)
    actor = Actor(envs.single_observation_space, envs.single_action_space, [])  # logits = W s + b
    with torch.no_grad():  # right action with probability sigmoid(3) = 0.95: episodes end both ways
        parity = torch.arange(HORIZON + 1) % 2
        actor.net[0].weight.copy_(torch.stack([1.5 - 3.0 * parity, 3.0 * parity - 1.5]))
        actor.net[0].bias.zero_()
    collector = RolloutCollector(envs, actor, LinearValue(), num_steps, run, seed=0)
    rollout = collector.collect()
    run.close()
    return collector, rollout, cfg


def test_collector_bootstraps_truncations_with_the_final_observation(tmp_path):
    collector, ro, _ = _collect(tmp_path)
    V = LinearValue()
    final_obs = torch.eye(HORIZON + 1)[HORIZON]  # AlternateEnv's observation after H steps
    N, T = ro.rewards.shape
    assert ro.dones.sum() > 0 and (ro.dones - ro.terminated).sum() > 0  # both kinds of episode end happened
    for i in range(N):
        for t in range(T):
            obs = ro.obs[i, t]
            assert ro.values[i, t] == V(obs)
            assert ro.rewards[i, t] == float(ro.actions[i, t] == obs.argmax() % 2)  # the env's rule
            assert ro.terminated[i, t] == 1 - ro.rewards[i, t]  # a wrong action terminates
            if ro.terminated[i, t]:
                expected = 0.0
            elif ro.dones[i, t]:  # truncated by the time limit: V(final_obs), not V(the next reset)
                expected = V(final_obs)
            else:
                expected = V(ro.obs[i, t + 1]) if t + 1 < T else V(collector.obs[i])
            assert ro.next_values[i, t] == expected, (i, t)
    # The log-probs and distribution parameters are those of the actor that acted.
    torch.testing.assert_close(ro.dist_params, collector.actor(ro.obs))
    torch.testing.assert_close(ro.logp, collector.actor.distribution(collector.actor(ro.obs)).log_prob(ro.actions))
    assert collector.run.step == N * T


def test_k_step_and_gae_advantages_match_hand_computation(tmp_path):
    _, ro, cfg = _collect(tmp_path, num_steps=6, num_envs=2)
    g = cfg.gamma
    adv, ret = a2c_advantages(ro, A2CConfig(**(vars(cfg) | {"advantage": "nstep", "n_step": 2})))
    for i in range(2):
        for t in range(6):
            # G^(2)_t = r_t + g r_{t+1} + g^2 V(s_{t+2}), cut at an episode end or the window end
            G = ro.rewards[i, t]
            if ro.dones[i, t] or t == 5:
                G = G + g * ro.next_values[i, t]
            else:
                G = G + g * ro.rewards[i, t + 1] + g ** 2 * ro.next_values[i, t + 1]
            torch.testing.assert_close(ret[i, t], G)
            torch.testing.assert_close(adv[i, t], G - ro.values[i, t])
    adv, ret = a2c_advantages(ro, A2CConfig(**(vars(cfg) | {"advantage": "gae", "gae_lambda": 0.0})))
    torch.testing.assert_close(adv, ro.rewards + g * ro.next_values - ro.values)  # lambda = 0: the TD error


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("advantage", ["nstep", "gae"])
def test_smoke_discrete_and_continuous(tmp_path, env_id, advantage):
    res = train_a2c(_cfg(tmp_path, env_id=env_id, total_timesteps=512, advantage=advantage, optimizer="rmsprop"))
    assert res.total_timesteps == 512 and np.isfinite(res.eval_mean_return)


def test_learns_tiny_envs(tmp_path):
    res = train_a2c(_cfg(tmp_path / "d", env_id=ALTERNATE_ID, total_timesteps=1500, eval_episodes=1))
    assert res.eval_mean_return == 5.0, res.summary()
    res = train_a2c(_cfg(tmp_path / "c", env_id=TRACK_ID, total_timesteps=4000, eval_episodes=1,
                         learning_rate=3e-3, num_steps=5))
    assert res.eval_mean_return > -0.3, res.summary()


def test_same_seed_same_result_and_save_load(tmp_path):
    a = train_a2c(_cfg(tmp_path / "a", env_id=TRACK_ID, total_timesteps=640, seed=5))
    b = train_a2c(_cfg(tmp_path / "b", env_id=TRACK_ID, total_timesteps=640, seed=5))
    assert without_timings(a) == without_timings(b)
    loaded, loaded_b = load_agent(str(tmp_path / "a")), load_agent(str(tmp_path / "b"))
    assert type(loaded.config) is A2CConfig and loaded.config.seed == 5 and loaded.config.env_id == TRACK_ID
    assert_same_weights(*((loaded.networks[k], loaded_b.networks[k]) for k in ("actor", "critic")))
    c = train_a2c(_cfg(tmp_path / "c", env_id=TRACK_ID, total_timesteps=640, seed=6))
    assert c.eval_mean_return != a.eval_mean_return


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="advantage"):
        A2CConfig(advantage="td")
    with pytest.raises(ValueError, match="n_step"):
        A2CConfig(n_step=0)
    with pytest.raises(ValueError, match="gamma"):
        A2CConfig(gamma=1.5)


@pytest.mark.slow
def test_recipe_defaults_solve_cartpole(tmp_path):
    res = run_recipe("a2c_cartpole", tmp_path)
    assert res["steps_to_solve"] is not None and res["eval_mean_return"] >= 475, res
