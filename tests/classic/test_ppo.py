"""PPO-clip and KL-penalized PPO: the first minibatch (ratio 1) is the vanilla policy gradient, the target-KL
stop and the adaptive beta rule, and smoke / learning / determinism / save-load runs."""
import json

import numpy as np
import pytest
import torch

from llmrl.classic.common import make_vec_env
from llmrl.classic.ppo import PPOConfig, ppo_loss, train_ppo
from llmrl.classic.rollout import RolloutCollector
from llmrl.classic.run import Run, load_agent
from llmrl.objectives import gae, policy_gradient_loss, value_loss, whiten

from .test_policies import ALTERNATE_ID, TRACK_ID, assert_same_weights, register_toy_envs, run_recipe, without_timings


def _cfg(tmp_path, **kw):
    register_toy_envs()
    base = dict(output_dir=str(tmp_path), report_to="none", progress_bar=False, eval_episodes=2)
    return PPOConfig(**(base | kw))


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("loss", ["clip", "kl"])
def test_first_minibatch_at_ratio_one_is_the_vanilla_policy_gradient(tmp_path, env_id, loss):
    # `ppo_loss` is what train_ppo's minibatch loop differentiates. At ratio 1 (the epoch's first minibatch)
    # nothing is clipped and the KL penalty is at its minimum (zero gradient), so its actor gradient is the vanilla
    # policy gradient; its critic gradient is vf_coef times that of 1/2 (V - G)^2; the entropy bonus adds
    # ent_coef grad H.
    cfg = _cfg(tmp_path, env_id=env_id, loss=loss, num_envs=4, num_steps=16, batch_size=64, vf_coef=0.7,
               ent_coef=0.3, kl_beta=3.0)
    with Run(cfg) as run:
        envs = make_vec_env(env_id, cfg.num_envs, cfg.seed)
        networks = cfg.build_networks(envs)
        actor, critic = networks["actor"], networks["critic"]
        run.start()
        ro = RolloutCollector(envs, actor, critic, cfg.num_steps, run, cfg.seed).collect()
    adv, ret = gae(ro.rewards, ro.values, ro.next_values, ro.dones, cfg.gamma, cfg.gae_lambda, ro.terminated)
    data, adv, ret = ro.flat(), whiten(adv.flatten()), ret.flatten()

    loss_value, stats = ppo_loss(actor, critic, data, adv, ret, cfg, beta=cfg.kl_beta)
    params = [*actor.parameters(), *critic.parameters()]
    ppo_grads = torch.autograd.grad(loss_value, params)
    dist = actor.distribution(actor(data.obs))  # the plain torch distribution, not the actor's fast paths
    expected = (policy_gradient_loss(dist.log_prob(data.actions), adv, torch.ones_like(adv))
                - 0.3 * dist.entropy().mean() + 0.7 * 0.5 * ((critic(data.obs) - ret) ** 2).mean())
    for g_ppo, g_ref in zip(ppo_grads, torch.autograd.grad(expected, params)):
        torch.testing.assert_close(g_ppo, g_ref, rtol=1e-5, atol=1e-7)
    assert torch.allclose(stats["ratio_mean"], torch.tensor(1.0))
    torch.testing.assert_close(stats["value_loss"], value_loss(critic(data.obs), ret).detach())


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("loss", ["clip", "kl"])
def test_smoke_discrete_and_continuous(tmp_path, env_id, loss):
    res = train_ppo(_cfg(tmp_path, env_id=env_id, loss=loss, total_timesteps=512, num_epochs=2, batch_size=64,
                         clip_value=0.2, ent_coef=0.01, anneal_lr=True))
    assert res.total_timesteps == 512 and np.isfinite(res.eval_mean_return)


def test_target_kl_stops_after_the_first_epoch_that_moves_the_policy(tmp_path):
    train_ppo(_cfg(tmp_path, total_timesteps=768, num_epochs=10, target_kl=1e-9))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    # Epoch 1's last minibatch is measured before its update, at KL 0 when it is also the first one; the
    # policy has moved by epoch 2, whose KL exceeds any tiny target.
    assert [r["epochs"] for r in rows if "epochs" in r] == [2, 2, 2]


def test_adaptive_beta_follows_the_1_5_rule(tmp_path):
    train_ppo(_cfg(tmp_path, loss="kl", total_timesteps=768, num_epochs=2, kl_beta=1.0, kl_target=10.0))
    rows = [r for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if "beta" in r]
    # KL far below target / 1.5: beta is divided by 1.5 after every iteration.
    assert [r["beta"] for r in rows] == pytest.approx([1.5 ** -k for k in (1, 2, 3)])
    assert all(0 < r["kl_rollout"] < 10.0 / 1.5 for r in rows)


def test_learns_tiny_envs(tmp_path):
    for loss in ("clip", "kl"):
        res = train_ppo(_cfg(tmp_path / loss, env_id=ALTERNATE_ID, loss=loss, total_timesteps=1536, num_steps=16,
                             batch_size=64, num_epochs=4, eval_episodes=1))
        assert res.eval_mean_return == 5.0, (loss, res.summary())
    res = train_ppo(_cfg(tmp_path / "c", env_id=TRACK_ID, total_timesteps=3072, num_steps=16, batch_size=64,
                         num_epochs=4, learning_rate=3e-3, eval_episodes=1))
    assert res.eval_mean_return > -0.3, res.summary()


def test_same_seed_same_result_and_save_load(tmp_path):
    kw = dict(env_id=TRACK_ID, total_timesteps=512, num_epochs=2, batch_size=64, seed=7)
    a = train_ppo(_cfg(tmp_path / "a", **kw))
    b = train_ppo(_cfg(tmp_path / "b", **kw))
    assert without_timings(a) == without_timings(b)
    loaded, loaded_b = load_agent(str(tmp_path / "a")), load_agent(str(tmp_path / "b" / "agent"))
    cfg = loaded.config
    assert type(cfg) is PPOConfig and cfg.seed == 7 and cfg.env_id == TRACK_ID and cfg.batch_size == 64
    assert_same_weights(*((loaded.networks[k], loaded_b.networks[k]) for k in ("actor", "critic")))
    assert_same_weights(*((loaded.networks[k], a.agent.networks[k]) for k in ("actor", "critic")))
    obs = np.eye(6, dtype=np.float32)[1]
    assert loaded.act(obs) == pytest.approx(a.agent.act(obs))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="loss"):
        PPOConfig(loss="penalty")
    with pytest.raises(ValueError, match="batch_size"):
        PPOConfig(num_envs=2, num_steps=8, batch_size=64)
    with pytest.raises(ValueError, match="gae_lambda"):
        PPOConfig(gae_lambda=1.2)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["ppo_cartpole", "kl_ppo_cartpole"])
def test_recipe_defaults_solve_cartpole(tmp_path, recipe):
    res = run_recipe(recipe, tmp_path)
    assert res["steps_to_solve"] is not None and res["eval_mean_return"] >= 475, res


@pytest.mark.slow
def test_pendulum_recipe_reaches_minus_300(tmp_path):
    res = run_recipe("ppo_pendulum", tmp_path)
    assert res["eval_mean_return"] > -300, res
