"""Returns and advantage estimators: reward-to-go, k-step targets, TD targets, GAE (and GAE over padded tokens).

Conventions (shared by every function here): the time axis is the LAST dimension, batch dimensions lead; an
empty window (T = 0) gives empty outputs.
`dones[..., t] = 1` means the episode ended right after step t (terminated OR truncated): no sum crosses it.
`terminated[..., t] = 1` means s_{t+1} is a true terminal state, whose value is zero. A time-limit truncation is
done but not terminated: the tail is bootstrapped with V(s_{t+1}) instead of being cut to zero.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _as_float(x: Tensor | None, like: Tensor) -> Tensor:
    if x is None:
        return torch.zeros_like(like)
    return torch.as_tensor(x, device=like.device).to(like.dtype).expand_as(like)


def discounted_returns(rewards: Tensor, gamma: float, dones: Tensor | None = None,
                       bootstrap: Tensor | None = None) -> Tensor:
    """Reward-to-go G_t = sum_{k>=t} gamma^(k-t) r_k (REINFORCE, seed ch. 7); rewards (..., T) -> (..., T).

    The sum stops after a step with dones=1. `bootstrap` (...,) is V(s_T) for a trajectory cut by the window
    (it is used only where the last step is not done), giving G_t = ... + gamma^(T-t) V(s_T).
    """
    dones = _as_float(dones, rewards)
    batch = rewards.shape[:-1]  # (not rewards[..., 0], which does not exist when T = 0)
    G = rewards.new_zeros(batch) if bootstrap is None else \
        torch.as_tensor(bootstrap, device=rewards.device).to(rewards.dtype).expand(batch).clone()
    out = torch.empty_like(rewards)
    for t in reversed(range(rewards.shape[-1])):
        G = rewards[..., t] + gamma * (1.0 - dones[..., t]) * G
        out[..., t] = G
    return out


def td_target(rewards: Tensor, next_values: Tensor, terminated: Tensor, gamma: float) -> Tensor:
    """One-step TD target y = r + gamma (1 - terminated) V(s') (TD(0) eq. 11 / DQN eq. 12); any shape, elementwise."""
    return rewards + gamma * (1.0 - terminated.to(rewards.dtype)) * next_values


def double_q_values(next_q_online: Tensor, next_q_target: Tensor) -> Tensor:
    """Double DQN bootstrap Q_target(s', argmax_a Q_online(s', a)) (van Hasselt 2016); (..., A) -> (...)."""
    a = next_q_online.argmax(dim=-1, keepdim=True)
    return next_q_target.gather(-1, a).squeeze(-1)


def n_step_returns(rewards: Tensor, next_values: Tensor, dones: Tensor | None, gamma: float, n: int | None,
                   terminated: Tensor | None = None) -> Tensor:
    """k-step target G_t^(n) = sum_{i<m} gamma^i r_{t+i} + gamma^m V(s_{t+m}) (A2C/A3C, seed eq. 23); (..., T).

    m = min(n, steps to the episode end, steps to the window end). `next_values[..., t]` = V(s_{t+1}); it is
    zeroed where `terminated` (default: `dones`) is 1, so a truncated episode bootstraps and a terminated one
    does not. n=None uses every remaining step of the window (the A2C rollout return).
    """
    T = rewards.shape[-1]
    if n is not None and n < 1:
        raise ValueError(f"n_step_returns: n must be >= 1, got {n}")
    if T == 0:
        return torch.zeros_like(rewards)
    n = T if n is None else n
    dones = _as_float(dones, rewards)
    terminated = dones if terminated is None else _as_float(terminated, rewards)
    boot = next_values * (1.0 - terminated)

    def shifted(x: Tensor, i: int, fill: float) -> Tensor:  # x[..., t + i], padded with `fill` past the window
        pad = torch.full_like(x[..., :i], fill)
        return torch.cat([x[..., i:], pad], dim=-1)

    window_end = (torch.arange(T, device=rewards.device) >= T - 1 - torch.arange(min(n, T))[:, None].to(rewards.device))
    out = torch.zeros_like(rewards)
    alive = torch.ones_like(rewards)  # 1 while step t+i still belongs to the sum for target t
    discount = 1.0
    for i in range(min(n, T)):
        out = out + alive * discount * shifted(rewards, i, 0.0)
        # Step t+i is the last one summed if the episode ends there, the window ends there, or i = n-1.
        last = torch.maximum(shifted(dones, i, 1.0), window_end[i].to(rewards.dtype))
        if i == n - 1:
            last = torch.ones_like(rewards)
        out = out + alive * last * discount * gamma * shifted(boot, i, 0.0)
        alive = alive * (1.0 - last)
        discount *= gamma
    return out


def gae(rewards: Tensor, values: Tensor, next_values: Tensor, dones: Tensor, gamma: float, lam: float,
        terminated: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation A_t = sum_l (gamma lam)^l delta_{t+l} (Schulman 2016, seed eq. 24).

    delta_t = r_t + gamma V(s_{t+1}) (1 - terminated_t) - V(s_t); the sum stops after dones_t = 1.
    All inputs (..., T); `terminated` defaults to `dones`. Returns (advantages, returns = advantages + values).
    """
    dones = _as_float(dones, rewards)
    terminated = dones if terminated is None else _as_float(terminated, rewards)
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values
    adv = torch.empty_like(rewards)
    A = rewards.new_zeros(rewards.shape[:-1])  # (not rewards[..., 0], which does not exist when T = 0)
    for t in reversed(range(rewards.shape[-1])):
        A = deltas[..., t] + gamma * lam * (1.0 - dones[..., t]) * A
        adv[..., t] = A
    return adv, adv + values


def token_gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """GAE over right-padded token sequences (PPO-RLHF, Ouyang et al. 2022; seed eq. 24 per token): `gae` with
    V(s_{t+1}) = the next token's value and each sequence terminated after its last real token, so nothing is
    bootstrapped past it; rewards/values/mask (..., T) -> (advantages, returns = advantages + values), zero on padding.

    The mask must be contiguous from t = 0 (a completion mask). A completion cut at the token limit ends there too:
    the reward function scored it as it stands and no reward follows, so its last token is terminal (as in TRL,
    OpenRLHF and verl); bootstrapping V there would count the future a second time on top of the score.
    """
    m = mask.to(rewards.dtype)
    values = values * m  # padding holds junk values
    zero = torch.zeros_like(m[..., :1])
    next_values = torch.cat([values[..., 1:], zero], dim=-1)
    dones = 1.0 - torch.cat([m[..., 1:], zero], dim=-1)  # 1 at the last real token (and on padding)
    adv, returns = gae(rewards * m, values, next_values, dones, gamma, lam)
    return adv * m, returns * m
