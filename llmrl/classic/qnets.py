"""Q-networks for the DQN family: an MLP Q(s, .) with an optional dueling head and optional noisy layers."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..objectives import dueling_q_values


def factorized_noise(z: Tensor) -> Tensor:
    """f(z) = sgn(z) sqrt|z|, the scaling of factorized Gaussian noise (Fortunato 2018)."""
    return z.sign() * z.abs().sqrt()


class NoisyLinear(nn.Module):
    """Factorized Gaussian noisy layer y = (mu_w + sigma_w * eps_w) x + mu_b + sigma_b * eps_b (NoisyNet,
    Fortunato 2018), eps_w = f(eps_out) f(eps_in)^T with f(x) = sgn(x) sqrt|x|.

    In training mode the layer uses the noise drawn by the last `reset_noise()`; in eval mode it uses the means
    only, so a trained agent acts deterministically.
    """

    def __init__(self, in_features: int, out_features: int, sigma0: float = 0.5):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_sigma = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.bias_sigma = nn.Parameter(torch.empty(out_features))
        # Buffers, not parameters: the noise is resampled, never learned; it moves with .to() but is not saved.
        self.register_buffer("eps_in", torch.zeros(in_features), persistent=False)
        self.register_buffer("eps_out", torch.zeros(out_features), persistent=False)
        # The paper's initialization for factorized noise: mu ~ U[-1/sqrt(p), 1/sqrt(p)], sigma = sigma0/sqrt(p).
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight_mu, -bound, bound)
        nn.init.uniform_(self.bias_mu, -bound, bound)
        nn.init.constant_(self.weight_sigma, sigma0 * bound)
        nn.init.constant_(self.bias_sigma, sigma0 * bound)
        self.reset_noise()

    def reset_noise(self) -> None:
        """Draw new noise from p + q standard normals instead of p * q (the point of factorizing)."""
        eps = factorized_noise(torch.randn(self.in_features + self.out_features, device=self.weight_mu.device))
        self.set_noise(*eps.split([self.in_features, self.out_features]))

    @torch.no_grad()
    def set_noise(self, eps_in: Tensor, eps_out: Tensor) -> None:
        """Use the already scaled noise f(z_in) (in_features,), f(z_out) (out_features,)."""
        self.eps_in.copy_(eps_in)
        self.eps_out.copy_(eps_out)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return nn.functional.linear(x, self.weight_mu, self.bias_mu)
        weight = self.weight_mu + self.weight_sigma * torch.outer(self.eps_out, self.eps_in)
        bias = self.bias_mu + self.bias_sigma * self.eps_out
        return nn.functional.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class QNetwork(nn.Module):
    """MLP Q(s, .): obs (B, obs_dim) -> (B, n_actions). ReLU hidden layers `hidden`; with `dueling` the last
    hidden layer feeds a value head V (1) and an advantage head A (n_actions) combined by `dueling_q_values`;
    with `noisy` every linear layer after the first is a `NoisyLinear` (the paper makes the fully connected
    layers after the convolutional feature extractor noisy; here the first layer plays that role)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: Sequence[int] = (256, 256), dueling: bool = False,
                 noisy: bool = False, sigma0: float = 0.5):
        super().__init__()
        self.dueling, self.noisy = dueling, noisy
        self.obs_dim, self.n_actions = obs_dim, n_actions

        def linear(i: int, o: int) -> nn.Module:
            return NoisyLinear(i, o, sigma0) if noisy else nn.Linear(i, o)

        layers, width = [], obs_dim
        for k, h in enumerate(hidden):
            layers += [nn.Linear(width, h) if k == 0 else linear(width, h), nn.ReLU()]
            width = h
        self.torso = nn.Sequential(*layers)
        if dueling:
            self.value_head = linear(width, 1)
            self.advantage_head = linear(width, n_actions)
        else:
            self.q_head = linear(width, n_actions)

    def forward(self, obs: Tensor) -> Tensor:
        z = self.torso(obs)
        if self.dueling:
            return dueling_q_values(self.value_head(z), self.advantage_head(z))
        return self.q_head(z)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> int | np.ndarray:
        """The greedy action argmax_a Q(s, a) for one observation (obs_dim,), or actions for a batch (B, obs_dim);
        noisy layers act with their means (eval mode) whatever the network's mode, which is left as it was."""
        training = self.training
        q = self.eval()(torch.as_tensor(np.asarray(obs), dtype=torch.float32))
        self.train(training)
        actions = q.argmax(-1).numpy()
        return int(actions) if actions.ndim == 0 else actions

    def reset_noise(self) -> None:
        """Resample the noise of every NoisyLinear (a no-op without `noisy`)."""
        layers = [m for m in self.modules() if isinstance(m, NoisyLinear)]
        if not layers:
            return
        # One draw for the whole network: a handful of tensor ops per update instead of a dozen per layer.
        sizes = [n for m in layers for n in (m.in_features, m.out_features)]
        eps = factorized_noise(torch.randn(sum(sizes), device=layers[0].weight_mu.device)).split(sizes)
        for i, m in enumerate(layers):
            m.set_noise(eps[2 * i], eps[2 * i + 1])
