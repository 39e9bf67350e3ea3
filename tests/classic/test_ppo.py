"""PPO-clip and KL-penalized PPO: the first minibatch (ratio 1) is the vanilla policy gradient, the target-KL
stop and the adaptive beta rule, and smoke / learning / determinism / save-load runs."""
import json
import os

import numpy as np
import pytest
import torch

from llmrl.classic.common import flat_parameters, make_vec_env
from llmrl.classic.critic_process import CriticProcess
from llmrl.classic.policies import build_actor_critic
from llmrl.classic.ppo import PPOConfig, load_ppo, ppo_loss, train_ppo
from llmrl.classic.rollout import OnPolicyRun, RolloutCollector
from llmrl.objectives import gae, policy_gradient_loss, whiten

from .test_policies import ALTERNATE_ID, TRACK_ID, assert_same_weights, register_toy_envs, run_recipe, without_timings


def _cfg(tmp_path, **kw):
    register_toy_envs()
    base = dict(run_dir=str(tmp_path), tensorboard=False, progress=False, eval_episodes=2)
    return PPOConfig(**(base | kw))


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("loss", ["clip", "kl"])
def test_first_minibatch_at_ratio_one_is_the_vanilla_policy_gradient(tmp_path, env_id, loss):
    cfg = _cfg(tmp_path, env_id=env_id, loss=loss, num_envs=4, num_steps=16, batch_size=64, vf_coef=0.0,
               ent_coef=0.0, kl_beta=3.0)
    run = OnPolicyRun(cfg)
    envs = make_vec_env(env_id, cfg.num_envs, cfg.seed)
    actor, critic = build_actor_critic(cfg, envs)
    ro = RolloutCollector(envs, actor, critic, cfg.num_steps, run, cfg.seed).collect()
    adv, ret = gae(ro.rewards, ro.values, ro.next_values, ro.dones, cfg.gamma, cfg.gae_lambda, ro.terminated)
    data, adv, ret = ro.flat(), whiten(adv.flatten()), ret.flatten()

    loss_value, stats = ppo_loss(actor, critic, data, adv, ret, cfg, beta=cfg.kl_beta)
    ppo_grads = torch.autograd.grad(loss_value, list(actor.parameters()))
    # Nothing is clipped at ratio 1, and the KL penalty is at its minimum (zero gradient) there.
    pg = policy_gradient_loss(actor.distribution(actor(data.obs)).log_prob(data.actions), adv, torch.ones_like(adv))
    pg_grads = torch.autograd.grad(pg, list(actor.parameters()))
    for g_ppo, g_pg in zip(ppo_grads, pg_grads):
        torch.testing.assert_close(g_ppo, g_pg, rtol=1e-5, atol=1e-7)
    assert torch.allclose(stats["ratio_mean"], torch.tensor(1.0))


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("loss", ["clip", "kl"])
def test_smoke_discrete_and_continuous(tmp_path, env_id, loss):
    res = train_ppo(_cfg(tmp_path, env_id=env_id, loss=loss, total_steps=512, num_epochs=2, batch_size=64,
                         clip_value=0.2, ent_coef=0.01, anneal_lr=True))
    assert res["total_steps"] == 512 and np.isfinite(res["eval_mean_return"])


def test_target_kl_stops_after_the_first_epoch_that_moves_the_policy(tmp_path):
    train_ppo(_cfg(tmp_path, total_steps=768, num_epochs=10, target_kl=1e-9))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    # Epoch 1's last minibatch is measured before its update, at KL 0 when it is also the first one; the
    # policy has moved by epoch 2, whose KL exceeds any tiny target.
    assert [r["epochs"] for r in rows if "epochs" in r] == [2, 2, 2]


def test_adaptive_beta_follows_the_1_5_rule(tmp_path):
    train_ppo(_cfg(tmp_path, loss="kl", total_steps=768, num_epochs=2, kl_beta=1.0, kl_target=10.0))
    rows = [r for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if "beta" in r]
    # KL far below target / 1.5: beta is divided by 1.5 after every iteration.
    assert [r["beta"] for r in rows] == pytest.approx([1.5 ** -k for k in (1, 2, 3)])
    assert all(0 < r["kl_rollout"] < 10.0 / 1.5 for r in rows)


def test_learns_tiny_envs(tmp_path):
    for loss in ("clip", "kl"):
        res = train_ppo(_cfg(tmp_path / loss, env_id=ALTERNATE_ID, loss=loss, total_steps=1536, num_steps=16,
                             batch_size=64, num_epochs=4, eval_episodes=1))
        assert res["eval_mean_return"] == 5.0, (loss, res)
    res = train_ppo(_cfg(tmp_path / "c", env_id=TRACK_ID, total_steps=3072, num_steps=16, batch_size=64,
                         num_epochs=4, learning_rate=3e-3, eval_episodes=1))
    assert res["eval_mean_return"] > -0.3, res


def test_same_seed_same_result_and_save_load(tmp_path):
    kw = dict(env_id=TRACK_ID, total_steps=512, num_epochs=2, batch_size=64, seed=7)
    a = train_ppo(_cfg(tmp_path / "a", **kw))
    b = train_ppo(_cfg(tmp_path / "b", **kw))
    assert without_timings(a) == without_timings(b)
    actor, critic, cfg = load_ppo(str(tmp_path / "a" / "agent"))
    actor_b, critic_b, _ = load_ppo(str(tmp_path / "b" / "agent"))
    assert cfg.seed == 7 and cfg.env_id == TRACK_ID and cfg.batch_size == 64
    assert_same_weights((actor, actor_b), (critic, critic_b))
    obs = np.eye(6, dtype=np.float32)[1]
    assert actor.act(obs) == pytest.approx(actor_b.act(obs))


@pytest.mark.parametrize("batch_size", [64, 256])  # minibatches, and the full-batch path
def test_critic_process_gives_the_same_update(tmp_path, monkeypatch, batch_size):
    # The critic's half of the loss in a second process: the same gradients, so bit-identical weights and logs.
    start = CriticProcess.start

    def start_when_ready(self, rows):  # wait for the child's start-up, so that it computes every update's half
        if not self.ready:
            self.replies.poll(120)
        return start(self, rows)

    monkeypatch.setattr(CriticProcess, "start", start_when_ready)
    kw = dict(total_steps=1024, num_epochs=3, batch_size=batch_size, seed=3, clip_value=0.2, ent_coef=0.01)
    a = train_ppo(_cfg(tmp_path / "a", critic_process=True, **kw))
    b = train_ppo(_cfg(tmp_path / "b", critic_process=False, **kw))
    assert a.pop("critic_process_updates") == 4 * 3 * (256 // batch_size) and "critic_process_updates" not in b
    assert without_timings(a) == without_timings(b)
    (actor, critic, _), (actor_b, critic_b, _) = (load_ppo(str(tmp_path / x / "agent")) for x in "ab")
    assert_same_weights((actor, actor_b), (critic, critic_b))
    logs = [[{k: v for k, v in without_timings(json.loads(line)).items() if k not in ("steps_per_s", "time")}
             for line in open(tmp_path / x / "metrics.jsonl")] for x in "ab"]
    assert logs[0] == logs[1] and any("value_loss" in row for row in logs[0])


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


def _failing_critic_backward(critic, obs, returns, old_values, cfg):
    raise ValueError("boom in the critic's half")


def test_critic_process_reports_a_failure_in_the_child(tmp_path):
    cfg = _cfg(tmp_path)
    envs = make_vec_env(cfg.env_id, 2, 0)
    actor, critic = build_actor_critic(cfg, envs)
    flat = flat_parameters(actor, critic)
    worker = CriticProcess()
    try:
        worker.setup(cfg, critic, flat, sum(p.numel() for p in actor.parameters()), 4, (4,), _failing_critic_backward)
        worker.replies.poll(120)
        assert worker.start(None)
        with pytest.raises(RuntimeError, match="boom in the critic's half"):
            worker.wait()
    finally:
        worker.close()
    assert worker.process.poll() is not None and not os.path.exists(worker.directory)
