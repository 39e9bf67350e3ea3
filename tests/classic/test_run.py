"""The run convention every deep classic agent shares: one config vocabulary, an output_dir that is never mixed
with an earlier run, torch threads restored, one save layout and loader, one result type."""
import dataclasses
import json
import os

import pytest
import torch

from llmrl.classic import (A2CConfig, DQNConfig, PPOConfig, ReinforceConfig, RunConfig, RunResult, TRPOConfig,
                           load_agent, train_a2c, train_dqn, train_ppo, train_reinforce, train_trpo)

from .test_policies import ALTERNATE_ID, register_toy_envs

AGENTS = {"ppo": (PPOConfig, train_ppo), "a2c": (A2CConfig, train_a2c), "trpo": (TRPOConfig, train_trpo),
          "reinforce": (ReinforceConfig, train_reinforce), "dqn": (DQNConfig, train_dqn)}
TINY = {"ppo": dict(num_steps=16, batch_size=64), "trpo": dict(num_steps=16),
        "reinforce": dict(episodes_per_batch=4), "dqn": dict(learning_starts=50, train_freq=16, batch_size=16),
        "a2c": {}}


def _cfg(name, output_dir, **kw):
    register_toy_envs()
    cls, _ = AGENTS[name]
    return cls(**(dict(env_id=ALTERNATE_ID, total_timesteps=200, output_dir=str(output_dir), progress_bar=False,
                       report_to="none", eval_episodes=1) | TINY[name] | kw))


def test_every_agent_config_shares_the_run_fields():
    shared = {f.name for f in dataclasses.fields(RunConfig)}
    assert {"env_id", "seed", "total_timesteps", "output_dir", "overwrite_output_dir", "progress_bar",
            "torch_threads", "report_to", "save"} <= shared
    for cls, _ in AGENTS.values():
        assert issubclass(cls, RunConfig) and cls().seed == 0 and cls().torch_threads == 1 and cls().progress_bar
    with pytest.raises(ValueError, match="report_to"):
        PPOConfig(report_to=["wandb"])
    assert PPOConfig(report_to="none").report_to == ["none"]  # TRL's string form


@pytest.mark.parametrize("name", list(AGENTS))
def test_same_layout_result_and_loader_for_every_agent(tmp_path, name):
    torch.set_num_threads(2)
    try:
        res = AGENTS[name][1](_cfg(name, tmp_path, report_to="tensorboard"))
        assert torch.get_num_threads() == 2  # torch_threads=1 for the run, then restored
    finally:
        torch.set_num_threads(1)
    assert isinstance(res, RunResult) and res.total_timesteps >= 200
    assert len(res.episode_returns) == len(res.episode_end_steps) > 0 and len(res.eval_returns) == 1
    assert sorted(os.listdir(tmp_path)) == ["agent", "metrics.jsonl", "tb"]
    assert sorted(os.listdir(tmp_path / "agent")) == ["agent.pt", "config.json"]
    summary = res.summary()
    assert json.loads(json.dumps(summary)) == summary and summary["output_dir"] == str(tmp_path)
    agent = load_agent(str(tmp_path))
    assert agent.config == res.agent.config and list(agent.networks) == list(res.agent.networks)
    for key, net in agent.networks.items():
        for (k, v), v2 in zip(net.state_dict().items(), res.agent.networks[key].state_dict().values()):
            assert torch.equal(v, v2), (key, k)
    obs = [0.0] * 6
    assert agent.act(obs) == res.agent.act(obs)


def test_a_rerun_into_the_same_output_dir_is_refused_before_anything_is_written(tmp_path):
    train_ppo(_cfg("ppo", tmp_path, report_to="tensorboard"))
    before = {p: os.path.getmtime(os.path.join(dp, p)) for dp, _, files in os.walk(tmp_path) for p in files}
    with pytest.raises(FileExistsError, match="already holds a run.*--overwrite_output_dir"):
        train_ppo(_cfg("ppo", tmp_path, report_to="tensorboard", seed=1))
    after = {p: os.path.getmtime(os.path.join(dp, p)) for dp, _, files in os.walk(tmp_path) for p in files}
    assert after == before
    # --overwrite_output_dir replaces the run: one run's metrics and one set of TensorBoard events
    train_ppo(_cfg("ppo", tmp_path, report_to="tensorboard", seed=1, overwrite_output_dir=True))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert sum("eval_mean_return" in r for r in rows) == 1
    assert len(os.listdir(tmp_path / "tb")) == 1
    assert load_agent(str(tmp_path)).config.seed == 1


def test_setup_errors_come_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="env_id='NoSuchEnv-v0'"):
        train_a2c(_cfg("a2c", tmp_path / "a", env_id="NoSuchEnv-v0"))
    with pytest.raises(ValueError, match="Discrete actions"):
        train_dqn(_cfg("dqn", tmp_path / "b", env_id="Pendulum-v1"))
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_load_agent_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no saved agent"):
        load_agent(str(tmp_path))
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "agent.pt").write_bytes(b"")
    (tmp_path / "agent" / "config.json").write_text(json.dumps({"class": "os.system", "env_id": "x"}))
    with pytest.raises(ValueError, match="names no llmrl agent config"):
        load_agent(str(tmp_path))
