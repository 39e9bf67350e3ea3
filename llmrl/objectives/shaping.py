"""Reward shaping for LLM policy gradients: a KL penalty to the reference policy folded into the reward (per
sequence, or per token beside the score at the last token), and DAPO's length penalty for completions that run into
the token limit.

Per-token tensors are (N, T) with a completion mask (N, T), 1 = a real token.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .kl import kl_estimate


def kl_shaped_rewards(rewards: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor, beta: float,
                      estimator: str = "k1") -> tuple[Tensor, Tensor]:
    """r_i - beta * sum_t KL_t: the sequence reward with a KL(pi || pi_ref) penalty (Ziegler et al. 2019; the
    PPO-RLHF reward of Ouyang et al. 2022 eq. 2); rewards (N,), logp/ref_logp/mask (N, T) -> (shaped (N,),
    per-token KL values (N, T), zero on padding).

    The penalty enters the REWARD, so its gradient comes through the policy-gradient (score-function) estimator:
    only k1 makes that an unbiased estimate of grad KL(pi || pi_ref) (sum_t k1_t = log pi(y)/pi_ref(y)); the
    trainer refuses k2/k3 here.
    """
    kl = kl_estimate(logp, ref_logp, estimator) * mask.to(logp.dtype)
    return rewards - beta * kl.sum(-1), kl


def token_level_rewards(scores: Tensor, mask: Tensor, kl: Tensor | None = None, beta: float = 0.0) -> Tensor:
    """Per-token rewards r_t = 1[t = last completion token] s_i - beta KL_t: the sequence score at the completion's
    last token, a KL(pi || pi_ref) penalty at every token (Ziegler et al. 2019; Ouyang et al. 2022, PPO-RLHF;
    REINFORCE++, Hu 2025); scores (N,), mask (N, T) (1 = a completion token), kl (N, T) -> (N, T), zero on padding.

    Summed over t (gamma = 1) they are kl_shaped_rewards' sequence reward. As there, only a k1 KL keeps the
    score-function gradient of the penalty unbiased.
    """
    m = mask.to(scores.dtype)
    if scores.dim() != 1 or m.shape[:1] != scores.shape:
        raise ValueError(f"token_level_rewards: scores {tuple(scores.shape)} must be (N,) for a mask (N, T), got "
                         f"mask {tuple(mask.shape)}")
    empty = (m.sum(-1) == 0).nonzero()
    if len(empty):
        raise ValueError(f"token_level_rewards: completion {int(empty[0])} has no token (its mask is all zeros)")
    last = (torch.arange(m.shape[-1], device=m.device) * (m != 0)).argmax(-1)
    rewards = torch.zeros_like(m)
    rewards[torch.arange(len(scores), device=m.device), last] = scores
    if kl is not None and beta != 0:
        rewards = rewards - beta * kl.to(m.dtype) * m
    return rewards


def overlong_penalty(lengths: Tensor, max_len: int, buffer: int) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): 0 up to L_max - L_cache tokens, then falling
    linearly to -1 at L_max, -1 beyond; lengths (N,) in tokens -> (N,) in reward units (add it to the reward).
    L_max = max_len, L_cache = buffer (1 <= buffer <= max_len)."""
    if not 1 <= buffer <= max_len:
        raise ValueError(f"overlong buffer must be in [1, max_len={max_len}], got {buffer}")
    free = max_len - buffer
    lengths = lengths.to(torch.float32)
    ramp = (free - lengths) / buffer
    return torch.where(lengths <= free, torch.zeros_like(lengths), torch.where(lengths <= max_len, ramp, -1.0))
