"""Reward shaping for LLM policy gradients: a KL penalty to the reference policy folded into the reward.

Per-token tensors are (N, T) with a completion mask (N, T), 1 = a real token.
"""
from __future__ import annotations

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
