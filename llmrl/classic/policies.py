"""Actor and critic networks of the policy-gradient agents: an MLP policy pi_theta(a|s) with a Categorical head
(discrete actions) or a diagonal-Gaussian head (continuous actions), and an MLP state-value function V_phi(s).

The actor's forward pass returns the distribution's parameters (logits, or mean and log-std side by side). A
rollout stores them, so the exact KL(pi_old(.|s) || pi_theta(.|s)) of KL-PPO and TRPO comes from
torch.distributions instead of a sampled estimate.
"""
from __future__ import annotations

import math
from typing import Sequence

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal, kl_divergence

from ..objectives import entropy

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def obs_dim(space: gym.Space) -> int:
    """Input width for an observation space: a Box is flattened, a Discrete state is one-hot encoded."""
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    raise ValueError(f"observation space {space} is not supported (need Box or Discrete)")


def encode_obs(space: gym.Space, obs: Tensor) -> Tensor:
    """Observations (..., *shape) as network inputs (..., obs_dim); Discrete states become one-hot rows."""
    if isinstance(space, gym.spaces.Discrete):
        # A comparison instead of F.one_hot, which reads the max value and so cannot run under torch.func.vmap.
        return (obs.long().unsqueeze(-1) == torch.arange(int(space.n), device=obs.device)).float()
    return obs.reshape(*obs.shape[:obs.dim() - len(space.shape)], -1)


def mlp(sizes: Sequence[int], activation: str, out_gain: float) -> nn.Sequential:
    """Linear layers with `activation` between them; orthogonal init with gain sqrt(2) on hidden layers and
    `out_gain` on the last (the init of SB3 / CleanRL: a near-uniform initial policy when out_gain = 0.01)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        linear = nn.Linear(n_in, n_out)
        nn.init.orthogonal_(linear.weight, out_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """pi_theta(a|s): Categorical over logits for Discrete actions; for Box actions a diagonal Gaussian
    N(mu_theta(s), diag(exp(2 log_std))) with a state-independent learned log-std (PPO/TRPO papers' choice)."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, hidden_sizes: Sequence[int],
                 activation: str = "tanh", log_std_init: float = 0.0):
        super().__init__()
        self.observation_space, self.action_space = observation_space, action_space
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.discrete:
            out = int(action_space.n)
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            out = action_space.shape[0]
            self.log_std = nn.Parameter(torch.full((out,), float(log_std_init)))
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32))
        else:
            raise ValueError(f"action space {action_space} is not supported (need Discrete or 1-D Box)")
        self.net = mlp([obs_dim(observation_space), *hidden_sizes, out], activation, out_gain=0.01)

    def forward(self, obs: Tensor) -> Tensor:
        """Distribution parameters (..., P): logits (P = A), or [mean, log_std] (P = 2 D)."""
        out = self.net(encode_obs(self.observation_space, obs))
        if self.discrete:
            return out
        return torch.cat([out, self.log_std.expand_as(out)], dim=-1)

    def distribution(self, params: Tensor) -> Distribution:
        """The torch distribution of actions for parameters (..., P); log_prob/entropy are per state (...)."""
        if self.discrete:
            return Categorical(logits=params, validate_args=False)
        mean, log_std = params.chunk(2, dim=-1)
        return Independent(Normal(mean, log_std.exp(), validate_args=False), 1, validate_args=False)

    # The three methods below equal the distribution's; for Categorical they skip its construction (a
    # normalization and bookkeeping), whose per-call overhead dominates training tiny MLPs on CPU.
    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        """log pi(a|s) per state, (...)."""
        if self.discrete:  # log softmax(logits)[a] = -cross-entropy(logits, a): one fused op, forward and backward
            flat = -F.cross_entropy(params.reshape(-1, params.shape[-1]), actions.reshape(-1).long(), reduction="none")
            return flat.view(actions.shape)
        return self.distribution(params).log_prob(actions)

    def entropy(self, params: Tensor) -> Tensor:
        """H(pi(.|s)) per state, (...)."""
        return entropy(params) if self.discrete else self.distribution(params).entropy()

    def sample(self, params: Tensor) -> Tensor:
        """a ~ pi(.|s); for logits by the Gumbel-max trick, argmax(logits - log E), E ~ Exp(1) (an exact sample).
        torch draws E = 0 exactly now and then: -log 0 = inf would pick its action whatever its probability (NaN
        for a -inf logit), so E is floored at the smallest normal float, a Gumbel draw of at most ~87 (float32)."""
        if self.discrete:
            noise = torch.empty_like(params).exponential_().clamp_(min=torch.finfo(params.dtype).tiny)
            return (params - noise.log()).argmax(-1)
        mean, log_std = params.chunk(2, dim=-1)
        return mean + log_std.exp() * torch.randn_like(mean)

    def kl(self, old_params: Tensor, params: Tensor) -> Tensor:
        """Exact KL(pi_old(.|s) || pi_theta(.|s)) per state, (...); old_params are treated as constants."""
        return kl_divergence(self.distribution(old_params.detach()), self.distribution(params))

    def env_action(self, action: Tensor) -> np.ndarray:
        """A sampled action as the env takes it: Gaussian samples are clipped to the action bounds (the log-prob
        stays that of the unclipped sample, as in SB3 / CleanRL)."""
        if self.discrete:
            return action.numpy()
        return torch.maximum(torch.minimum(action, self.high), self.low).numpy()

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Action for one observation: the mode (argmax / mean) when deterministic, else a sample."""
        params = self(torch.as_tensor(obs, dtype=torch.float32))
        if deterministic:
            action = params.argmax(-1) if self.discrete else params.chunk(2, dim=-1)[0]
        else:
            action = self.sample(params)
        return self.env_action(action)


class Critic(nn.Module):
    """State-value function V_phi(s), (..., *obs_shape) -> (...)."""

    def __init__(self, observation_space: gym.Space, hidden_sizes: Sequence[int], activation: str = "tanh"):
        super().__init__()
        self.observation_space = observation_space
        self.net = mlp([obs_dim(observation_space), *hidden_sizes, 1], activation, out_gain=1.0)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(encode_obs(self.observation_space, obs)).squeeze(-1)


def build_actor_critic(cfg, env: gym.Env | gym.vector.VectorEnv, critic: bool = True) -> tuple[Actor, Critic | None]:
    """Actor (and critic) for the env's spaces, sized by the config's hidden_sizes / activation / log_std_init."""
    obs_space = getattr(env, "single_observation_space", env.observation_space)
    act_space = getattr(env, "single_action_space", env.action_space)
    actor = Actor(obs_space, act_space, cfg.hidden_sizes, cfg.activation, cfg.log_std_init)
    return actor, (Critic(obs_space, cfg.hidden_sizes, cfg.activation) if critic else None)

