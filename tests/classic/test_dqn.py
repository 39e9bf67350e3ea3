"""The DQN agent: every switch combination runs, a CPU run is reproducible, time-limit truncation bootstraps,
a tiny env is learned within a small budget, save/load round-trips, the config validates and parses."""
import itertools
import json
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

from llmrl.classic.dqn import DQNConfig, train_dqn
from llmrl.classic.run import load_agent
from llmrl.utils import parse_config


class ConstantEnv(gym.Env):
    """Never terminates: one observation, two actions, reward 1 every step (truncated by a TimeLimit)."""
    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 1.0, False, False, {}


class ChainEnv(gym.Env):
    """Positions 0..4 (one-hot), start at 0; action 1 moves right, 0 left; reaching 4 pays 1 and terminates.
    The optimal greedy policy reaches the goal in 4 steps; the TimeLimit (20) ends the others at return 0."""
    observation_space = gym.spaces.Box(0.0, 1.0, (5,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = 0
        return self._obs(), {}

    def _obs(self):
        obs = np.zeros(5, np.float32)
        obs[self.pos] = 1.0
        return obs

    def step(self, action):
        self.pos = max(self.pos + (1 if action == 1 else -1), 0)
        done = self.pos == 4
        return self._obs(), float(done), done, False, {}


for env_id, cls, limit in [("llmrl-test/Constant-v0", ConstantEnv, 5), ("llmrl-test/Chain-v0", ChainEnv, 20)]:
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=cls, max_episode_steps=limit)

TINY = dict(env_id="CartPole-v1", total_timesteps=300, learning_starts=100, train_freq=50, gradient_steps=2,
            target_update_interval=2, batch_size=16, buffer_size=1000, hidden_sizes=[16], eval_episodes=1,
            progress_bar=False, report_to="none", overwrite_output_dir=True)


def tiny(output_dir, **kw):
    return DQNConfig(**{**TINY, "output_dir": str(output_dir), **kw})


def q_values(agent, obs):
    with torch.no_grad():
        return agent.networks["q_net"](torch.as_tensor(obs)).numpy()


@pytest.mark.parametrize("double,dueling,prioritized,noisy", list(itertools.product([False, True], repeat=4)))
def test_every_switch_combination_trains(tmp_path, double, dueling, prioritized, noisy):
    # n-step, num_envs, RMSProp and Polyak averaging ride along on alternate combinations.
    odd = (double + dueling + prioritized + noisy) % 2 == 1
    cfg = tiny(tmp_path, double=double, dueling=dueling, prioritized=prioritized, noisy=noisy,
               n_step=3 if odd else 1, num_envs=2 if dueling else 1, optimizer="rmsprop" if odd else "adam",
               tau=0.5 if noisy else 1.0)
    res = train_dqn(cfg)
    assert all(torch.isfinite(p).all() for p in res.agent.networks["q_net"].parameters())
    # Update rounds: every 50 vector steps once more than 100 env steps are stored, 2 gradient steps each.
    rounds = sum(1 for i in range(1, 300 // cfg.num_envs + 1) if i % 50 == 0 and i * cfg.num_envs > 100)
    assert res.total_timesteps == 300 and res.info["gradient_steps"] == 2 * rounds > 0
    assert len(res.episode_returns) == len(res.episode_end_steps) > 0
    assert len(res.eval_returns) == 1 and res.eval_returns[0] >= 1


def test_same_seed_gives_identical_run_and_other_seed_differs(tmp_path):
    cfg = tiny(tmp_path, total_timesteps=600, n_step=2)
    a, b = train_dqn(cfg), train_dqn(cfg)
    c = train_dqn(tiny(tmp_path, total_timesteps=600, n_step=2, seed=2))
    assert a.episode_returns == b.episode_returns and a.eval_returns == b.eval_returns
    for p, q in zip(a.agent.networks["q_net"].parameters(), b.agent.networks["q_net"].parameters()):
        assert torch.equal(p, q)
    assert a.episode_returns != c.episode_returns


def test_truncation_bootstraps_to_the_infinite_horizon_value(tmp_path):
    # Rewards 1 forever, cut by the 5-step TimeLimit: the value is 1/(1-gamma) = 10. Treating the cut as a
    # termination would give the fixed point of Q = 1 + gamma (4/5) Q, i.e. 1/(1-0.72) ~ 3.6.
    cfg = tiny(tmp_path, env_id="llmrl-test/Constant-v0", total_timesteps=500, learning_starts=50, train_freq=5,
               gradient_steps=5, target_update_interval=5, batch_size=32, buffer_size=1000, gamma=0.9,
               learning_rate=1e-2, hidden_sizes=[16], double=False, dueling=False, prioritized=False,
               noisy=False, n_step=1, eval_episodes=0)
    q = q_values(train_dqn(cfg).agent, np.zeros(1, np.float32))
    assert q == pytest.approx([10.0, 10.0], rel=0.05)


@pytest.mark.parametrize("combined", [False, True])
def test_learns_a_tiny_chain_within_a_small_budget(tmp_path, combined):
    cfg = tiny(tmp_path, env_id="llmrl-test/Chain-v0", total_timesteps=1500, learning_starts=200, train_freq=20,
               gradient_steps=10, target_update_interval=20, batch_size=32, buffer_size=2000, gamma=0.9,
               learning_rate=3e-3, hidden_sizes=[32], exploration_fraction=0.5, double=combined,
               dueling=combined, prioritized=combined, noisy=combined, n_step=1, eval_episodes=3)
    res = train_dqn(cfg)
    assert res.eval_returns == [1.0, 1.0, 1.0]
    # The greedy policy walks straight right, and the values are Q*: Q*(pos, right) = gamma^(3 - pos), and
    # Q*(0, left) = gamma Q*(0, right) (bumping into the wall wastes a step).
    q = q_values(res.agent, np.eye(5, dtype=np.float32)[:4])
    assert (q.argmax(-1) == 1).all()
    np.testing.assert_allclose(q[:, 1], [0.9 ** 3, 0.9 ** 2, 0.9, 1.0], atol=0.03)
    assert q[0, 0] == pytest.approx(0.9 ** 4, abs=0.03)


def test_save_load_round_trip_and_output_dir(tmp_path):
    output_dir = tmp_path / "run"
    res = train_dqn(tiny(output_dir, noisy=True, dueling=True, log_interval=1, eval_interval=150,
                         report_to="tensorboard"))
    assert [step for step, _ in res.info["evaluations"]] == [150, 300]
    loaded = load_agent(str(output_dir))
    assert loaded.config == res.agent.config
    obs = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    np.testing.assert_array_equal(q_values(loaded, obs), q_values(res.agent, obs))
    assert [loaded.act(o) for o in obs] == [res.agent.act(o) for o in obs]
    rows = [json.loads(line) for line in open(os.path.join(output_dir, "metrics.jsonl"))]
    assert all(any(k in r for r in rows) for k in ("episode_return", "loss", "eval_mean_return"))
    assert os.listdir(os.path.join(output_dir, "tb"))
    other = str(tmp_path / "copy")
    loaded.save(other)
    np.testing.assert_array_equal(q_values(load_agent(other), obs), q_values(loaded, obs))


def test_config_parses_from_cli_and_validates():
    cfg = parse_config(DQNConfig, ["--double", "false", "--n_step", "3", "--hidden_sizes", "32", "32",
                                   "--optimizer", "rmsprop", "--output_dir", "runs/x", "--n_envs", "2"])
    assert (cfg.double, cfg.n_step, cfg.hidden_sizes, cfg.optimizer, cfg.output_dir, cfg.num_envs) == (
        False, 3, [32, 32], "rmsprop", "runs/x", 2)
    assert cfg.dueling and cfg.prioritized and cfg.noisy  # the defaults are the combined agent
    for bad, field in [(dict(n_step=0), "n_step"), (dict(optimizer="sgd"), "optimizer"), (dict(tau=0.0), "tau"),
                       (dict(gamma=1.5), "gamma"), (dict(batch_size=64, buffer_size=32), "batch_size"),
                       (dict(exploration_final_eps=2.0), "exploration_final_eps")]:
        with pytest.raises(ValueError, match=field):
            DQNConfig(**bad)


def test_unsupported_env_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="Discrete"):
        train_dqn(tiny(tmp_path / "x", env_id="Pendulum-v1"))
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_default_config_solves_cartpole(tmp_path):
    res = train_dqn(DQNConfig(seed=1, output_dir=str(tmp_path), progress_bar=False))
    assert res.steps_to_solve is not None and res.steps_to_solve <= 50_000
    assert np.mean(res.eval_returns) >= 475
