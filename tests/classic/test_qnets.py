"""Q-networks: NoisyLinear noise statistics against their closed form, deterministic eval mode, the dueling head."""
import math

import pytest
import torch
from torch import nn

from llmrl.classic.qnets import NoisyLinear, QNetwork


def test_noisy_linear_output_mean_and_variance_match_closed_form():
    # y_i = mu_i.x + mu_b_i + f(a_i) (sum_j s_ij f(b_j) x_j + sb_i) with a, b ~ N(0, 1) i.i.d.:
    # E[f(a)] = 0 and E[f(a)^2] = E|a| = sqrt(2/pi), so E y_i = mu_i.x + mu_b_i and
    # Var y_i = sqrt(2/pi) (sqrt(2/pi) sum_j s_ij^2 x_j^2 + sb_i^2).
    torch.manual_seed(0)
    layer = NoisyLinear(6, 3, sigma0=0.5)
    with torch.no_grad():
        layer.weight_sigma.uniform_(0.1, 0.6)
        layer.bias_sigma.uniform_(0.1, 0.6)
    x = torch.randn(6)
    samples = []
    with torch.no_grad():
        for _ in range(5000):
            layer.reset_noise()
            samples.append(layer(x))
    y = torch.stack(samples)
    c = math.sqrt(2 / math.pi)
    mean = layer.weight_mu @ x + layer.bias_mu
    var = c * (c * (layer.weight_sigma ** 2 * x ** 2).sum(-1) + layer.bias_sigma ** 2)
    se = (var / 5000).sqrt()
    assert ((y.mean(0) - mean).abs() < 5 * se).all()
    torch.testing.assert_close(y.var(0), var.detach(), rtol=0.08, atol=0.0)


def test_noisy_linear_factorized_noise_and_init():
    torch.manual_seed(1)
    layer = NoisyLinear(16, 4, sigma0=0.5)
    bound = 1 / math.sqrt(16)
    assert layer.weight_mu.abs().max() <= bound and layer.bias_mu.abs().max() <= bound
    torch.testing.assert_close(layer.weight_sigma, torch.full((4, 16), 0.5 * bound))
    # The weight noise is the rank-one outer product f(eps_out) f(eps_in)^T.
    layer.reset_noise()
    x = torch.eye(16)
    noise = (layer(x) - nn.functional.linear(x, layer.weight_mu, layer.bias_mu)
             - layer.bias_sigma * layer.eps_out).T / layer.weight_sigma
    torch.testing.assert_close(noise, torch.outer(layer.eps_out, layer.eps_in))
    assert torch.linalg.matrix_rank(noise.detach()) == 1


def test_noisy_linear_eval_mode_is_deterministic_and_uses_the_means():
    torch.manual_seed(2)
    layer = NoisyLinear(5, 2)
    x = torch.randn(7, 5)
    layer.train()
    a = layer(x)
    layer.reset_noise()
    assert not torch.equal(a, layer(x))  # training mode: the noise changes the output
    layer.eval()
    b = layer(x)
    layer.reset_noise()
    assert torch.equal(b, layer(x))
    torch.testing.assert_close(b, x @ layer.weight_mu.T + layer.bias_mu)


def test_dueling_head_aggregates_value_and_mean_centred_advantage():
    torch.manual_seed(3)
    net = QNetwork(4, 3, hidden=(8, 8), dueling=True)
    obs = torch.randn(10, 4)
    z = net.torso(obs)
    V, A = net.value_head(z), net.advantage_head(z)
    torch.testing.assert_close(net(obs), V + A - A.mean(-1, keepdim=True))
    torch.testing.assert_close(net(obs).mean(-1, keepdim=True), V)
    assert net(obs).shape == (10, 3)


@pytest.mark.parametrize("dueling", [False, True])
def test_noisy_q_network_makes_every_layer_after_the_first_noisy(dueling):
    torch.manual_seed(4)
    net = QNetwork(4, 2, hidden=(8, 8), dueling=dueling, noisy=True)
    assert type(net.torso[0]) is nn.Linear and sum(type(m) is nn.Linear for m in net.modules()) == 1
    assert sum(isinstance(m, NoisyLinear) for m in net.modules()) == (3 if dueling else 2)
    obs = torch.randn(3, 4)
    before = net(obs)
    net.reset_noise()
    assert not torch.equal(before, net(obs))
    net.eval()
    out = net(obs)
    net.reset_noise()
    assert torch.equal(out, net(obs))


def test_plain_q_network_shapes_and_reset_noise_is_a_no_op():
    torch.manual_seed(5)
    net = QNetwork(4, 2, hidden=(8, 8))
    obs = torch.randn(3, 4)
    out = net(obs)
    net.reset_noise()
    assert torch.equal(out, net(obs)) and out.shape == (3, 2)


def test_network_wide_noise_draw_gives_each_layer_fresh_scaled_normals():
    # Every layer's eps must be f(z) = sgn(z) sqrt|z| of its own N(0, 1) draws: E f(z) = 0, E f(z)^2 = sqrt(2/pi),
    # and no two layers (or two draws) may share noise.
    torch.manual_seed(6)
    net = QNetwork(3, 2, hidden=(64, 64), dueling=True, noisy=True)
    layers = [m for m in net.modules() if isinstance(m, NoisyLinear)]
    draws = []
    for _ in range(300):
        net.reset_noise()
        draws.append(torch.cat([torch.cat([m.eps_in, m.eps_out]) for m in layers]))
    eps = torch.stack(draws)
    assert eps.mean().abs() < 0.01
    assert eps.pow(2).mean().item() == pytest.approx(math.sqrt(2 / math.pi), rel=0.02)
    assert eps[0].unique().numel() == eps.shape[1]  # all layers' entries are distinct draws
    assert not torch.equal(draws[0], draws[1])
