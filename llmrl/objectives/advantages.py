"""Advantages for LLM policy gradients: sequence-level (GRPO, Dr. GRPO, RLOO, REINFORCE), token-level (PPO's GAE
with a critic, REINFORCE++) and whitening.

Rewards arrive flat, (N,) with N = B * G: the G completions of a prompt are contiguous, as the trainer samples
them. Group statistics need a whole group in one tensor; batch statistics need the whole batch (of all processes:
the trainer gathers the rewards first).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .returns import discounted_returns, token_gae
from .shaping import token_level_rewards

SCALES = ("group", "batch", "none")
# advantage estimators over one scalar reward per completion (`sequence_advantages`)
SEQUENCE_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce")
# advantage estimators over per-token rewards (`token_advantages`; verl's names)
TOKEN_ESTIMATORS = ("gae", "reinforce_plus_plus", "reinforce_plus_plus_baseline")


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B*G,), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"group_size={group_size} must divide the number of rewards ({rewards.numel()})")
    return rewards.view(-1, group_size)


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> Tensor:
    """GRPO A_i = (r_i - mean_group) / (std + eps) (Shao et al. 2024); (B*G,) -> (B*G,).

    scale="group": std of the prompt's group (unbiased, as torch.std); "batch": std of the whole batch;
    "none": no division (Dr. GRPO, Liu et al. 2025). A group whose rewards are all equal gets exactly 0.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    r = _groups(rewards, group_size)
    if scale != "none" and (group_size < 2 if scale == "group" else rewards.numel() < 2):
        raise ValueError(f"scale={scale!r} needs at least 2 rewards per std, got group_size={group_size}")
    centered = r - r.mean(dim=1, keepdim=True)
    if scale == "group":
        centered = centered / (r.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centered = centered / (rewards.std() + eps)
    # The float mean of equal rewards can miss them by an ulp, which the division by (std + eps) turns into a
    # spurious advantage (3e-4 in float32, NaN with eps=0): an all-equal group is set to exactly 0.
    constant = (r == r[:, :1]).all(dim=1, keepdim=True)
    return centered.masked_fill(constant, 0.0).reshape(-1)


def leave_one_out_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO A_i = r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean) (Ahmadian et al. 2024); (B*G,) -> (B*G,)."""
    if group_size < 2:
        raise ValueError(f"leave_one_out_advantages needs group_size >= 2, got {group_size}")
    r = _groups(rewards, group_size)
    adv = group_size / (group_size - 1) * (r - r.mean(dim=1, keepdim=True))
    return adv.masked_fill((r == r[:, :1]).all(dim=1, keepdim=True), 0.0).reshape(-1)  # exact 0, as above


def zero_std_groups(rewards: Tensor, group_size: int) -> Tensor:
    """Which groups have identical rewards (they carry no learning signal); (B*G,) -> (B,) bool."""
    r = _groups(rewards, group_size)
    return (r == r[:, :1]).all(dim=1)


def whiten(x: Tensor, mask: Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalize to zero mean, unit variance over valid entries, (x - mu) / (sigma + eps); any shape -> same."""
    m = torch.ones_like(x) if mask is None else mask.to(x.dtype)
    n = m.sum().clamp(min=1)
    mean = (x * m).sum() / n
    var = ((x - mean) ** 2 * m).sum() / n
    out = (x - mean) / (var.sqrt() + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def sequence_advantages(rewards: Tensor, group_size: int, estimator: str = "grpo", scale: str = "group") -> Tensor:
    """One advantage per completion from one reward per completion; (B*G,) -> (B*G,).

    grpo: group_advantages(scale) (Shao et al. 2024); dr_grpo: group mean removed, no std (Liu et al. 2025);
    rloo: leave-one-out mean removed (Ahmadian et al. 2024); reinforce: the batch mean removed (REINFORCE with a
    constant baseline, seed Algorithm 7). Pass the whole batch (all processes) for "batch"/"reinforce" statistics.
    """
    if estimator == "grpo":
        return group_advantages(rewards, group_size, scale)
    if estimator == "dr_grpo":
        return group_advantages(rewards, group_size, "none")
    if estimator == "rloo":
        return leave_one_out_advantages(rewards, group_size)
    if estimator == "reinforce":
        if rewards.dim() != 1:
            raise ValueError(f"rewards must be 1-D (B*G,), got shape {tuple(rewards.shape)}")
        return rewards - rewards.mean()
    raise ValueError(f"advantage estimator must be one of {SEQUENCE_ESTIMATORS}, got {estimator!r}")


def token_advantages(scores: Tensor, mask: Tensor, estimator: str, group_size: int = 1, kl: Tensor | None = None,
                     beta: float = 0.0, gamma: float = 1.0, lam: float = 0.95, values: Tensor | None = None,
                     whiten_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Per-token advantages from one score per completion and a per-token KL, whitened over the batch; scores (N,),
    mask/kl/values (N, T) -> (advantages (N, T), returns (N, T) for estimator "gae", else None).

    The rewards are `token_level_rewards` (the score at the last completion token, -beta KL_t at every token), then:
    - gae: `token_gae` with the critic's values V(s_t) (PPO-RLHF, Ouyang et al. 2022); the returns A + V are the
      critic's regression targets;
    - reinforce_plus_plus: the discounted return G_t = sum_{k>=t} gamma^(k-t) r_k (REINFORCE++, Hu 2025);
    - reinforce_plus_plus_baseline: the same after subtracting each prompt group's mean score (Hu 2025's group
      baseline; groups of `group_size` contiguous completions, as in `group_advantages`).
    Advantages are whitened (`whiten`: zero mean, unit variance) over `whiten_mask` (default `mask`); pass the whole
    batch (all processes) so that the statistics are global.
    """
    if estimator not in TOKEN_ESTIMATORS:
        raise ValueError(f"token advantage estimator must be one of {TOKEN_ESTIMATORS}, got {estimator!r}")
    if estimator == "reinforce_plus_plus_baseline":
        scores = group_advantages(scores, group_size, "none")
    rewards = token_level_rewards(scores, mask, kl, beta)
    returns = None
    if estimator == "gae":
        if values is None:
            raise ValueError("token_advantages: estimator 'gae' needs the critic's values (N, T)")
        adv, returns = token_gae(rewards, values, mask, gamma, lam)
    else:
        adv = discounted_returns(rewards, gamma) * mask.to(rewards.dtype)  # rewards are 0 past the last token
    return whiten(adv, mask if whiten_mask is None else whiten_mask), returns
