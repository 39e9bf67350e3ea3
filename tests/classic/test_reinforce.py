"""REINFORCE: the agent's estimator against the exact gradient of a tabular MDP, its variance report, the
episode collector, and smoke / learning / determinism / save-load runs."""
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from llmrl.classic.policies import Actor, Critic
from llmrl.classic.reinforce import (BASELINES, ReinforceConfig, gradient_variance, per_step_scores,
                                     reinforce_advantages, reinforce_loss, train_reinforce)
from llmrl.classic.rollout import EpisodeCollector
from llmrl.classic.run import Run, load_agent
from llmrl.objectives import discounted_returns
from llmrl.objectives.baselines import policy_gradient_estimate

from .test_policies import ALTERNATE_ID, TRACK_ID, assert_same_weights, register_toy_envs, run_recipe, without_timings

TOY_ID = "llmrl-test/ToyMDP-v0"
GAMMA = 0.8
# 3 states + an absorbing terminal (index 3), 2 actions; every step ends the episode with probability >= 0.25.
P = np.array([[[0.10, 0.50, 0.15, 0.25], [0.40, 0.05, 0.25, 0.30]],
              [[0.30, 0.10, 0.20, 0.40], [0.05, 0.35, 0.35, 0.25]],
              [[0.20, 0.20, 0.10, 0.50], [0.45, 0.15, 0.10, 0.30]]])
R = np.array([[1.0, 3.0], [2.5, 0.5], [4.0, 1.5]])  # all positive: without a baseline the variance is large
MU0 = np.array([0.6, 0.3, 0.1])


class ToyMDP(gym.Env):
    """The tabular MDP (P, R, MU0) above as a gymnasium env with Discrete states."""

    observation_space = gym.spaces.Discrete(3)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.s = int(self.np_random.choice(3, p=MU0))
        return self.s, {}

    def step(self, action):
        r = R[self.s, int(action)]
        self.s = int(self.np_random.choice(4, p=P[self.s, int(action)]))
        terminated = self.s == 3
        if terminated:
            self.s = 0  # any valid observation; it is never acted on
        return self.s, r, terminated, False, {}


def exact_values(actor: Actor) -> torch.Tensor:
    """V^pi = (I - gamma P_pi)^-1 r_pi (S,), differentiable in the actor's parameters."""
    pi = torch.softmax(actor(torch.arange(3)).double(), -1)  # (S, A)
    P_pi = torch.einsum("sa,sat->st", pi, torch.as_tensor(P[:, :, :3]))
    r_pi = (pi * torch.as_tensor(R)).sum(-1)
    return torch.linalg.solve(torch.eye(3, dtype=torch.float64) - GAMMA * P_pi, r_pi)


def exact_gradient(actor: Actor) -> torch.Tensor:
    """grad_theta J for J = mu0^T V^pi, by autograd through the linear solve."""
    J = torch.as_tensor(MU0) @ exact_values(actor)
    return torch.cat([g.flatten() for g in torch.autograd.grad(J, list(actor.parameters()))]).float()


def _toy_setup(tmp_path, num_envs):
    if TOY_ID not in gym.registry:
        gym.register(TOY_ID, entry_point=ToyMDP)
    cfg = ReinforceConfig(env_id=TOY_ID, output_dir=str(tmp_path), report_to="none", progress_bar=False,
                          gamma=GAMMA, hidden_sizes=[])
    run = Run(cfg)
    run.start()
    torch.manual_seed(1)
    actor = Actor(ToyMDP.observation_space, ToyMDP.action_space, hidden_sizes=[])  # tabular softmax
    with torch.no_grad():
        actor.net[0].weight.normal_(0, 0.7)  # a non-uniform policy, so the gradient is not symmetric
    critic = Critic(ToyMDP.observation_space, [])  # V(s) = w_s: set to the true V^pi, fixed during the test
    with torch.no_grad():
        critic.net[0].weight.copy_(exact_values(actor).float()[None])
    envs = [gym.wrappers.RecordEpisodeStatistics(ToyMDP()) for _ in range(num_envs)]
    return EpisodeCollector(envs, actor, run, seed=3), actor, critic


def _estimates(collector, actor, critic, num_batches, episodes, baselines=BASELINES, discount_weighting=True):
    """Per-batch gradient estimates (B, P) of each baseline, and each baseline's gradient variance."""
    estimates = {b: [] for b in baselines}
    variances = {b: [] for b in baselines}
    for _ in range(num_batches):
        batch = collector.collect(episodes)
        returns = discounted_returns(batch.rewards, GAMMA, batch.dones)
        with torch.no_grad():
            values = critic(batch.obs)
        scores = per_step_scores(actor, batch)
        advs = {b: reinforce_advantages(returns, batch.mask, GAMMA, b, values, scores,
                                        discount_weighting=discount_weighting) for b in baselines}
        for b, adv in advs.items():
            estimates[b].append(policy_gradient_estimate(scores, adv, batch.mask))
        for b, v in gradient_variance(scores, advs).items():
            variances[b].append(v)
    return {b: torch.stack(e) for b, e in estimates.items()}, {b: float(np.mean(v)) for b, v in variances.items()}


def test_estimator_is_unbiased_for_every_baseline_and_baselines_reduce_variance(tmp_path):
    collector, actor, critic = _toy_setup(tmp_path, num_envs=16)
    exact = exact_gradient(actor)
    estimates, variances = _estimates(collector, actor, critic, num_batches=200, episodes=32)
    for b, est in estimates.items():
        z = (est.mean(0) - exact) / (est.std(0) / len(est) ** 0.5)
        assert z.abs().max() < 4.5, f"baseline {b}: z-scores {z.tolist()} (exact {exact.tolist()})"
    for b in BASELINES[1:]:
        assert variances[b] < 0.8 * variances["none"], variances
    # The same test has the power to catch a bias: dropping gamma^t is not the gradient of J for gamma < 1.
    biased = _estimates(collector, actor, critic, num_batches=150, episodes=32, baselines=["value"],
                        discount_weighting=False)[0]["value"]
    z = (biased.mean(0) - exact) / (biased.std(0) / len(biased) ** 0.5)
    assert z.abs().max() > 5, z.tolist()


def _per_step_autograd(actor, batch):
    """Score vectors of every step by one autograd call each: (N, T, P), 0 on padding."""
    N, T = batch.mask.shape
    out = torch.zeros(N, T, sum(p.numel() for p in actor.parameters()))
    for i in range(N):
        for t in range(int(batch.mask[i].sum())):
            logp = actor.distribution(actor(batch.obs[i, t])).log_prob(batch.actions[i, t])
            out[i, t] = torch.cat([g.flatten() for g in torch.autograd.grad(logp, list(actor.parameters()))])
    return out


def test_scores_estimates_and_variance_match_per_step_autograd(tmp_path):
    collector, actor, critic = _toy_setup(tmp_path, num_envs=4)
    batch = collector.collect(6)
    returns = discounted_returns(batch.rewards, GAMMA, batch.dones)
    scores = _per_step_autograd(actor, batch)
    torch.testing.assert_close(per_step_scores(actor, batch), scores)
    # With a per-step advantage the estimate is minus the gradient of the loss the agent backpropagates.
    adv = reinforce_advantages(returns, batch.mask, GAMMA, "time_dependent")
    grads = torch.autograd.grad(reinforce_loss(actor, batch, adv), list(actor.parameters()))
    torch.testing.assert_close(policy_gradient_estimate(scores, adv, batch.mask),
                               -torch.cat([g.flatten() for g in grads]))
    # Variance: of the single-episode estimates g_i = sum_t s_t A_t, over the episodes, summed over parameters.
    per_episode = torch.stack([(scores[i] * adv[i, :, None]).sum(0) for i in range(6)])
    assert gradient_variance(scores, {"t": adv})["t"] == pytest.approx(per_episode.var(0).sum().item(), rel=1e-5)


def test_optimal_baseline_is_per_parameter(tmp_path):
    # The seed's minimum-variance baseline, b_tk = sum_j s_jtk^2 G_jt / sum_j s_jtk^2 for each parameter k, over
    # the other episodes j != i (leave-one-out), computed here by loops over episodes, steps and parameters.
    collector, actor, critic = _toy_setup(tmp_path, num_envs=4)
    batch = collector.collect(5)
    returns = discounted_returns(batch.rewards, GAMMA, batch.dones)
    scores = _per_step_autograd(actor, batch)
    N, T, P = scores.shape
    expected = torch.zeros(N, T, P)
    for i in range(N):
        for t in range(int(batch.mask[i].sum())):
            others = [j for j in range(N) if j != i and batch.mask[j, t]]
            for k in range(P):
                num = sum(float(scores[j, t, k]) ** 2 * float(returns[j, t]) for j in others)
                den = sum(float(scores[j, t, k]) ** 2 for j in others)
                expected[i, t, k] = (returns[i, t] - (num / den if den > 0 else 0.0)) * GAMMA ** t
    adv = reinforce_advantages(returns, batch.mask, GAMMA, "optimal", scores=per_step_scores(actor, batch),
                               discount_weighting=True)
    assert adv.shape == (N, T, P)
    torch.testing.assert_close(adv, expected)
    # ...and the b_tk differ across parameters (a single number per step would not).
    assert (adv[0, 0] - adv[0, 0].mean()).abs().max() > 1e-3


def test_episode_collector_returns_whole_episodes(tmp_path):
    collector, actor, _ = _toy_setup(tmp_path, num_envs=3)
    batch = collector.collect(7)
    lengths = batch.lengths
    assert batch.mask.shape == (7, int(lengths.max())) and len(collector.run.tracker.returns) == 7
    for i, L in enumerate(lengths.tolist()):
        assert batch.mask[i, :L].all() and not batch.mask[i, L:].any()
        assert batch.dones[i].nonzero().flatten().tolist() == [L - 1] and batch.terminated[i, L - 1] == 1
    # Each episode's undiscounted return is one of the tracked episode returns.
    assert sorted(batch.rewards.sum(1).tolist()) == pytest.approx(sorted(collector.run.tracker.returns))
    assert collector.run.step == int(lengths.sum())


def _cfg(tmp_path, **kw):
    register_toy_envs()
    base = dict(output_dir=str(tmp_path), report_to="none", progress_bar=False, eval_episodes=2)
    return ReinforceConfig(**(base | kw))


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_smoke_discrete_and_continuous(tmp_path, env_id):
    res = train_reinforce(_cfg(tmp_path, env_id=env_id, total_timesteps=600, episodes_per_batch=2, num_envs=2,
                               report_variance=True))
    assert res.total_timesteps >= 600 and np.isfinite(res.eval_mean_return)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert any("grad_var/value" in r and "grad_var/optimal" in r for r in rows)


@pytest.mark.parametrize("baseline", BASELINES)
def test_every_baseline_trains(tmp_path, baseline):
    res = train_reinforce(_cfg(tmp_path, env_id=ALTERNATE_ID, total_timesteps=300, baseline=baseline,
                               episodes_per_batch=4))
    assert len(res.episode_returns) > 0


def test_learns_tiny_envs(tmp_path):
    res = train_reinforce(_cfg(tmp_path / "d", env_id=ALTERNATE_ID, total_timesteps=1500, episodes_per_batch=8,
                               learning_rate=1e-2, eval_episodes=1))
    assert res.eval_mean_return == 5.0, res.summary()
    res = train_reinforce(_cfg(tmp_path / "c", env_id=TRACK_ID, total_timesteps=6000, episodes_per_batch=8,
                               learning_rate=1e-2, eval_episodes=1))
    assert res.eval_mean_return > -0.3, res.summary()


def test_same_seed_same_result_and_save_load(tmp_path):
    a = train_reinforce(_cfg(tmp_path / "a", env_id=ALTERNATE_ID, total_timesteps=500, seed=3))
    b = train_reinforce(_cfg(tmp_path / "b", env_id=ALTERNATE_ID, total_timesteps=500, seed=3))
    assert without_timings(a) == without_timings(b)
    loaded, loaded_b = load_agent(str(tmp_path / "a")), load_agent(str(tmp_path / "b"))
    cfg_a, cfg_b = loaded.config, loaded_b.config
    assert cfg_a.output_dir.endswith("a")
    assert cfg_a == ReinforceConfig(**(vars(cfg_b) | {"output_dir": cfg_a.output_dir}))
    assert_same_weights(*((loaded.networks[k], loaded_b.networks[k]) for k in ("actor", "critic")))
    obs = np.eye(6, dtype=np.float32)[1]
    assert loaded.act(obs) == loaded_b.act(obs)
    # without the value baseline there is no critic to save or load
    c = train_reinforce(_cfg(tmp_path / "c", env_id=ALTERNATE_ID, total_timesteps=100, baseline="optimal"))
    assert list(c.agent.networks) == list(load_agent(str(tmp_path / "c")).networks) == ["actor"]


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="baseline"):
        ReinforceConfig(baseline="mean")
    with pytest.raises(ValueError, match="episodes_per_batch"):
        ReinforceConfig(episodes_per_batch=1)


@pytest.mark.slow
def test_recipe_defaults_solve_cartpole(tmp_path):
    res = run_recipe("reinforce_cartpole", tmp_path)
    assert res["steps_to_solve"] is not None and res["eval_mean_return"] >= 475, res
