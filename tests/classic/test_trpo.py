"""TRPO: the policy step stays inside the trust region (exact KL), improves the surrogate, follows the natural
gradient; smoke / learning / determinism / save-load runs."""
import numpy as np
import pytest
import torch
from torch.nn.utils import parameters_to_vector

from llmrl.classic.common import make_vec_env
from llmrl.classic.rollout import RolloutCollector
from llmrl.classic.run import Run, load_agent
from llmrl.classic.trpo import TRPOConfig, train_trpo, trpo_policy_step
from llmrl.objectives import gae, surrogate_loss, whiten

from .test_policies import ALTERNATE_ID, TRACK_ID, assert_same_weights, register_toy_envs, run_recipe, without_timings


def _cfg(tmp_path, **kw):
    register_toy_envs()
    base = dict(output_dir=str(tmp_path), report_to="none", progress_bar=False, eval_episodes=2)
    return TRPOConfig(**(base | kw))


def _rollout(cfg):
    with Run(cfg) as run:
        envs = make_vec_env(cfg.env_id, cfg.num_envs, cfg.seed)
        networks = cfg.build_networks(envs)
        actor, critic = networks["actor"], networks["critic"]
        run.start()
        ro = RolloutCollector(envs, actor, critic, cfg.num_steps, run, cfg.seed).collect()
    adv, _ = gae(ro.rewards, ro.values, ro.next_values, ro.dones, cfg.gamma, cfg.gae_lambda, ro.terminated)
    return actor, ro.flat(), whiten(adv.flatten())


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("max_kl", [1e-3, 0.05])
def test_step_respects_max_kl_and_improves_the_surrogate(tmp_path, env_id, max_kl):
    cfg = _cfg(tmp_path, env_id=env_id, num_envs=4, num_steps=32, max_kl=max_kl)
    actor, data, adv = _rollout(cfg)
    mask = torch.ones_like(adv)
    with torch.no_grad():
        before = surrogate_loss(actor.distribution(actor(data.obs)).log_prob(data.actions), data.logp, adv, mask)
    theta_old = parameters_to_vector(actor.parameters()).clone()
    stats = trpo_policy_step(actor, data, adv, cfg)
    with torch.no_grad():
        kl = actor.kl(data.dist_params, actor(data.obs)).mean().item()  # exact KL(pi_old || pi_new)
        after = surrogate_loss(actor.distribution(actor(data.obs)).log_prob(data.actions), data.logp, adv, mask)
    assert stats["accepted"]
    assert 0 < kl <= max_kl and kl == pytest.approx(stats["kl"], rel=1e-4)
    assert after < before
    # The quadratic model KL ~ 1/2 s^T F s puts the full step on the trust-region boundary; the accepted
    # step is that one shrunk by backtrack_coef^k, so its KL is near max_kl * frac^2.
    assert kl == pytest.approx(max_kl * stats["step_frac"] ** 2, rel=0.5)
    assert not torch.equal(parameters_to_vector(actor.parameters()), theta_old)


def test_rejected_step_restores_the_parameters(tmp_path):
    cfg = _cfg(tmp_path, num_envs=2, num_steps=16, backtrack_iters=1)
    actor, data, adv = _rollout(cfg)
    theta_old = parameters_to_vector(actor.parameters()).clone()
    stats = trpo_policy_step(actor, data, -adv * 0, cfg)  # a zero advantage can never improve the surrogate
    assert not stats["accepted"]
    assert torch.equal(parameters_to_vector(actor.parameters()), theta_old)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_smoke_discrete_and_continuous(tmp_path, env_id):
    res = train_trpo(_cfg(tmp_path, env_id=env_id, total_timesteps=1024, value_epochs=2))
    assert res.total_timesteps == 1024 and np.isfinite(res.eval_mean_return)


def test_learns_tiny_envs(tmp_path):
    res = train_trpo(_cfg(tmp_path / "d", env_id=ALTERNATE_ID, total_timesteps=1536, num_steps=16, max_kl=0.05,
                          eval_episodes=1))
    assert res.eval_mean_return == 5.0, res.summary()
    res = train_trpo(_cfg(tmp_path / "c", env_id=TRACK_ID, total_timesteps=3072, num_steps=16, max_kl=0.05,
                          eval_episodes=1))
    assert res.eval_mean_return > -0.3, res.summary()


def test_same_seed_same_result_and_save_load(tmp_path):
    kw = dict(env_id=ALTERNATE_ID, total_timesteps=512, num_steps=16, seed=2)
    a = train_trpo(_cfg(tmp_path / "a", **kw))
    b = train_trpo(_cfg(tmp_path / "b", **kw))
    assert without_timings(a) == without_timings(b)
    loaded, loaded_b = load_agent(str(tmp_path / "a")), load_agent(str(tmp_path / "b"))
    assert type(loaded.config) is TRPOConfig and loaded.config.seed == 2 and loaded.config.num_steps == 16
    assert_same_weights(*((loaded.networks[k], loaded_b.networks[k]) for k in ("actor", "critic")))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="max_kl"):
        TRPOConfig(max_kl=0.0)
    with pytest.raises(ValueError, match="backtrack_coef"):
        TRPOConfig(backtrack_coef=1.0)


@pytest.mark.slow
def test_recipe_defaults_solve_cartpole(tmp_path):
    res = run_recipe("trpo_cartpole", tmp_path)
    assert res["steps_to_solve"] is not None and res["eval_mean_return"] >= 475, res
