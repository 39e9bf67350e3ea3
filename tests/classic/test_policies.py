"""Actor/critic heads against closed forms, and the tiny envs and recipe runner the policy-gradient agent tests
share."""
import json
import math
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmrl.classic.policies import Actor, Critic, encode_obs
from llmrl.objectives import entropy

HORIZON = 5
ALTERNATE_ID = "llmrl-test/Alternate-v0"
TRACK_ID = "llmrl-test/Track-v0"


class _ClockEnv(gym.Env):
    """Observation = one-hot of the step t (0..H), deterministic; subclasses define the reward."""

    observation_space = gym.spaces.Box(0.0, 1.0, (HORIZON + 1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def _obs(self):
        return np.eye(HORIZON + 1, dtype=np.float32)[self.t]


class AlternateEnv(_ClockEnv):
    """Discrete toy task: action t mod 2 earns 1, any other action terminates, and a time limit of H steps
    truncates (optimal return H; the initial near-uniform policy is right at all H steps by chance 2^-H).
    Deterministic observations make the final observation at truncation known: e_H."""

    action_space = gym.spaces.Discrete(2)

    def step(self, action):
        correct = int(action) == self.t % 2
        self.t += 1
        return self._obs(), float(correct), not correct, False, {}


class TrackEnv(_ClockEnv):
    """Continuous toy task: target c_t = +0.5 at even t and -0.5 at odd t; reward -(a - c_t)^2, never
    terminates, truncated at H (optimal return 0; the initial mean action ~0 scores -1.25)."""

    action_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)

    def step(self, action):
        target = 0.5 if self.t % 2 == 0 else -0.5
        self.t += 1
        return self._obs(), -float((np.asarray(action).reshape(-1)[0] - target) ** 2), False, False, {}


def register_toy_envs() -> None:
    """Register the toy envs (idempotent) with reward thresholds, so the agents' solved tracker works."""
    for env_id, cls, threshold in [(ALTERNATE_ID, AlternateEnv, 4.9), (TRACK_ID, TrackEnv, -0.5)]:
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=cls, max_episode_steps=HORIZON, reward_threshold=threshold)


def run_recipe(name: str, output_dir, *args: str) -> dict:
    """Run recipes/NAME.py with its defaults (plus `args`) in a subprocess; its JSON summary (last stdout line)."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "recipes" / f"{name}.py"), "--output_dir", str(output_dir),
                          "--no_progress_bar", "--report_to", "none", *args],
                         capture_output=True, text=True, check=True, cwd=root)
    return json.loads(out.stdout.strip().splitlines()[-1])


def assert_same_weights(*pairs) -> None:
    """Every (module, module) pair has identical state dicts."""
    for m, m_b in pairs:
        assert m.state_dict().keys() == m_b.state_dict().keys()
        for k, v in m.state_dict().items():
            assert torch.equal(v, m_b.state_dict()[k]), k


def without_timings(result) -> dict:
    """A run's summary without its wall / CPU times and output_dir (what must be identical across runs with the
    same seed)."""
    return {k: v for k, v in result.summary().items() if k not in ("wall_s", "cpu_s", "output_dir")}


def _actor(action_space, hidden=(16,), obs_space=None):
    torch.manual_seed(0)
    obs_space = obs_space or gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    return Actor(obs_space, action_space, hidden, log_std_init=-0.3)


def test_categorical_head_matches_closed_forms():
    actor = _actor(gym.spaces.Discrete(4))
    obs = torch.randn(6, 3)
    logits = actor(obs)
    dist = actor.distribution(logits)
    actions = dist.sample()
    torch.testing.assert_close(dist.log_prob(actions), F.log_softmax(logits, -1).gather(-1, actions[:, None])[:, 0])
    torch.testing.assert_close(dist.entropy(), entropy(logits))
    new = logits + torch.randn_like(logits)
    p, q = F.softmax(logits, -1), F.softmax(new, -1)
    torch.testing.assert_close(actor.kl(logits, new), (p * (p.log() - q.log())).sum(-1))
    torch.testing.assert_close(actor.kl(logits, logits), torch.zeros(6), atol=1e-6, rtol=0)
    assert (actor.act(obs[0].numpy()) == logits[0].argmax().numpy()).all()


def test_gaussian_head_matches_closed_forms():
    space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    actor = _actor(space)
    obs = torch.randn(5, 3)
    params = actor(obs)
    mean, log_std = params.chunk(2, -1)
    torch.testing.assert_close(log_std, actor.log_std.expand(5, 2))
    dist = actor.distribution(params)
    a = torch.randn(5, 2)
    log_pdf = -0.5 * ((a - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(dist.log_prob(a), log_pdf.sum(-1))
    torch.testing.assert_close(dist.entropy(), (0.5 + 0.5 * math.log(2 * math.pi) + log_std).sum(-1))
    # KL of diagonal Gaussians: sum log(s2/s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2
    new = torch.cat([mean + 0.3, log_std - 0.2], -1)
    s1, s2 = log_std.exp(), (log_std - 0.2).exp()
    kl = (torch.log(s2 / s1) + (s1 ** 2 + 0.3 ** 2) / (2 * s2 ** 2) - 0.5).sum(-1)
    torch.testing.assert_close(actor.kl(params, new), kl)
    # Sampled actions are clipped to the bounds for the env; the deterministic action is the mean.
    assert actor.env_action(torch.tensor([[3.0, -3.0]])).tolist() == [[1.0, -1.0]]
    torch.testing.assert_close(torch.as_tensor(actor.act(obs[0].numpy())), mean[0].clamp(-1, 1))


@pytest.mark.parametrize("action_space", [gym.spaces.Discrete(3), gym.spaces.Box(-1.0, 1.0, (2,), np.float32)])
def test_fast_paths_equal_the_torch_distribution(action_space):
    actor = _actor(action_space)
    params = actor(torch.randn(4, 3))
    dist = actor.distribution(params)
    actions = dist.sample((5,))  # (5, 4, ...): several actions per state
    torch.testing.assert_close(actor.log_prob(params.expand(5, *params.shape), actions), dist.log_prob(actions))
    torch.testing.assert_close(actor.entropy(params), dist.entropy())
    # Sampling: empirical moments of 40k draws for 4 states against the distribution's.
    torch.manual_seed(0)
    draws = actor.sample(params.expand(40_000, *params.shape)).float()
    if actor.discrete:
        freq = torch.stack([(draws == a).float().mean(0) for a in range(3)], -1)
        torch.testing.assert_close(freq, dist.probs, atol=0.012, rtol=0)
    else:
        torch.testing.assert_close(draws.mean(0), dist.mean, atol=0.02, rtol=0)
        torch.testing.assert_close(draws.std(0), dist.stddev, atol=0.02, rtol=0)


def test_sampling_never_draws_an_action_of_probability_zero(monkeypatch):
    # torch's exponential_ returns exact zeros now and then (a uniform draw of 0); forced here for action 1. Its
    # Gumbel noise -log 0 = inf used to win the argmax whatever the logit: action 1, of probability 0 in float32
    # (exp(-200) underflows), or NaN (argmax picks it) for a -inf logit. Correct: action 0, the only possible one.
    actor = _actor(gym.spaces.Discrete(2))
    monkeypatch.setattr(torch.Tensor, "exponential_", lambda self: self.copy_(torch.tensor([1.0, 0.0])))
    for logits in ([0.0, -200.0], [0.0, float("-inf")]):
        params = torch.tensor(logits)
        assert torch.softmax(params, -1)[1] == 0
        assert actor.sample(params).item() == 0, logits
    # Otherwise the noise is untouched: an exponential draw of 1 gives the Gumbel value -log 1 = 0.
    monkeypatch.setattr(torch.Tensor, "exponential_", lambda self: self.fill_(1.0))
    assert actor.sample(torch.tensor([0.0, 1.0])).item() == 1


def test_kl_gradient_flows_only_through_new_params():
    actor = _actor(gym.spaces.Discrete(3))
    params = actor(torch.randn(4, 3))
    old = params.detach().clone().requires_grad_(True)
    actor.kl(old, params + 0.1).sum().backward()
    assert old.grad is None and actor.net[0].weight.grad is not None


def test_discrete_observations_are_one_hot():
    space = gym.spaces.Discrete(3)
    torch.testing.assert_close(encode_obs(space, torch.tensor([2.0, 0.0])), torch.tensor([[0., 0., 1.], [1., 0., 0.]]))
    actor = Actor(space, gym.spaces.Discrete(2), hidden_sizes=[])  # a tabular softmax policy
    assert actor(torch.arange(3)).shape == (3, 2)
    assert Critic(space, [8])(torch.arange(3)).shape == (3,)


def test_unsupported_spaces_are_named():
    with pytest.raises(ValueError, match="action space"):
        Actor(gym.spaces.Box(-1, 1, (2,)), gym.spaces.MultiBinary(3), [8])
    with pytest.raises(ValueError, match="activation"):
        Actor(gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(2), [8], activation="gelu")


def test_toy_envs_behave_as_documented():
    register_toy_envs()
    env = gym.make(ALTERNATE_ID)
    obs, _ = env.reset(seed=0)
    total, done = 0.0, False
    while not done:
        obs, r, term, trunc, _ = env.step(int(obs.argmax()) % 2)
        total += r
        done = term or trunc
    assert total == HORIZON and trunc and not term and obs.argmax() == HORIZON
    env = gym.make(TRACK_ID)
    env.reset(seed=0)
    assert env.step(np.array([0.5]))[1] == 0.0 and env.step(np.array([0.5]))[1] == -1.0
