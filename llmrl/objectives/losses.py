"""Policy-gradient losses: REINFORCE, PPO-clip, KL-penalized PPO, GRPO; loss aggregation; entropy; Huber.

Per-token tensors are (B, T) with a mask (B, T), 1 = a real token/step. Advantages are (B, T) or (B,) (one per
sequence, broadcast over its tokens). Every loss is to be MINIMIZED (it is minus the surrogate objective).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from typing import NamedTuple

from .kl import kl_estimate, kl_penalty

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm", "sum")


class LossType(NamedTuple):
    """An LLM loss_type: how per-token losses are reduced (`aggregate` mode), and whether the token count that
    normalizes them is over the batch of ALL processes (else this process's batch)."""
    mode: str
    global_token_count: bool = False


# TRL's loss_type names. grpo: mean over each sequence's tokens, then over sequences (Shao et al. 2024); bnpo: mean
# over this process's tokens; dr_grpo: sum / (sequences * max_new_tokens) (Liu et al. 2025); dapo: mean over the
# tokens of all processes (Yu et al. 2025).
LOSS_TYPES = {"grpo": LossType("seq_mean_token_mean"), "bnpo": LossType("token_mean"),
              "dr_grpo": LossType("seq_mean_token_sum_norm"), "dapo": LossType("token_mean", True)}


def aggregate(per_token: Tensor, mask: Tensor | None, mode: str = "token_mean", max_len: int | None = None,
              num_tokens: float | Tensor | None = None, num_seqs: float | None = None) -> Tensor:
    """Reduce a per-token loss (B, T) with mask (B, T) (None: every position is real) to a scalar:

    - "token_mean"              sum(l m) / sum(m)                          (DAPO; every token weighs the same)
    - "seq_mean_token_mean"     1/B sum_i [sum_t l m / sum_t m]            (GRPO; every sequence weighs the same)
    - "seq_mean_token_sum_norm" sum(l m) / (B * max_len)                   (Dr. GRPO; a constant normalizer)
    - "sum"                     sum(l m)

    `num_tokens` / `num_seqs` replace sum(m) / B by totals over a larger batch, so that summing the losses of
    micro-batches gives exactly the loss of the whole batch (gradient accumulation, several processes).
    `max_len` defaults to T.
    """
    if mask is None:  # no padding: the same reductions without the mask's multiply and count (tiny-MLP agents)
        B, T = per_token[..., 0].numel(), per_token.shape[-1]
        if mode == "token_mean":
            return per_token.mean() if num_tokens is None else per_token.sum() / num_tokens
        if mode == "seq_mean_token_mean":
            return per_token.mean() if num_seqs is None else per_token.mean(-1).sum() / num_seqs
        if mode == "seq_mean_token_sum_norm":
            return per_token.sum() / ((B if num_seqs is None else num_seqs) * (T if max_len is None else max_len))
        if mode == "sum":
            return per_token.sum()
        raise ValueError(f"aggregation mode must be one of {AGGREGATIONS}, got {mode!r}")
    m = mask.to(per_token.dtype)
    if per_token.shape != m.shape:
        raise ValueError(f"per_token {tuple(per_token.shape)} and mask {tuple(m.shape)} must have the same shape")
    if mode == "token_mean":
        denom = m.sum().clamp(min=1) if num_tokens is None else num_tokens
        return (per_token * m).sum() / denom
    if mode == "seq_mean_token_mean":
        seq = (per_token * m).sum(-1) / m.sum(-1).clamp(min=1)
        return seq.sum() / (seq.numel() if num_seqs is None else num_seqs)
    if mode == "seq_mean_token_sum_norm":
        B = per_token[..., 0].numel() if num_seqs is None else num_seqs
        return (per_token * m).sum() / (B * (per_token.shape[-1] if max_len is None else max_len))
    if mode == "sum":
        return (per_token * m).sum()
    raise ValueError(f"aggregation mode must be one of {AGGREGATIONS}, got {mode!r}")


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Token-weighted mean sum(x m) / sum(m) of a per-token quantity (statistics for logging); (..., T) -> ()."""
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def _per_token(advantages: Tensor, like: Tensor) -> Tensor:
    return advantages.unsqueeze(-1).expand_as(like) if advantages.dim() == like.dim() - 1 else advantages


def policy_gradient_loss(logp: Tensor, advantages: Tensor, mask: Tensor | None, mode: str = "token_mean",
                         **agg) -> Tensor:
    """REINFORCE -sum_t A_t log pi(a_t|s_t) (seed Algorithm 7); logp (B, T), advantages (B, T) or (B,)."""
    return aggregate(-_per_token(advantages, logp).detach() * logp, mask, mode, **agg)


def surrogate_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor | None, mode: str = "token_mean",
                   **agg) -> Tensor:
    """Importance-sampled surrogate -rho A, rho = pi/pi_old (Kakade & Langford 2002; TRPO's objective, seed
    Algorithm 9); (B, T). At pi = pi_old its gradient is the policy gradient."""
    ratio = torch.exp(logp - old_logp.detach())
    return aggregate(-ratio * _per_token(advantages, logp).detach(), mask, mode, **agg)


def log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor | None, level: str = "token") -> Tensor:
    """log pi/pi_old per token, or per sequence (GSPO, Zheng et al. 2025: mean token log-ratio) broadcast; (B, T)."""
    lr = logp - old_logp
    if level == "token":
        return lr
    if level == "sequence":
        m = torch.ones_like(lr) if mask is None else mask.to(lr.dtype)
        seq = (lr * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1)
        return seq.expand_as(lr)
    raise ValueError(f"ratio_level must be 'token' or 'sequence', got {level!r}")


def ppo_clip_objective(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor | None,
                       clip_low: float = 0.2, clip_high: float | None = None,
                       ratio_level: str = "token") -> tuple[Tensor, dict]:
    """Per-token -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A) (PPO eq. 7; seed eq. 26, whose sign we correct
    so that the loss is minimized; DAPO's clip-higher); (B, T).

    Returns the unreduced loss and detached per-token statistics (ratio, low/high clipping indicators). The mask is
    read only by ratio_level="sequence".
    """
    clip_high = clip_low if clip_high is None else clip_high
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low and clip_high must be >= 0, got {clip_low}, {clip_high}")
    A = _per_token(advantages, logp).detach()
    ratio = torch.exp(log_ratio(logp, old_logp.detach(), mask, ratio_level))
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = -torch.minimum(ratio * A, clipped * A)
    with torch.no_grad():
        stats = {"ratio": ratio.detach(),
                 "clipped_low": ((ratio < 1.0 - clip_low) & (A < 0)),   # the bound that stops pushing pi down
                 "clipped_high": ((ratio > 1.0 + clip_high) & (A > 0))}  # the bound that stops pushing pi up
    return loss, stats


def token_means(stats: dict[str, Tensor], mask: Tensor | None) -> dict[str, Tensor]:
    """Token-mean of each per-token statistic of a PPO/GRPO loss (ratio, clipping indicators, KL), with the clip
    fractions under their logged names (clip_frac_low/high/clip_frac, ratio_mean, kl); (B, T) each -> scalars."""
    with torch.no_grad():
        dtype = stats["ratio"].dtype
        out = {"clip_frac_low": masked_mean(stats["clipped_low"].to(dtype), mask),
               "clip_frac_high": masked_mean(stats["clipped_high"].to(dtype), mask),
               "ratio_mean": masked_mean(stats["ratio"], mask)}
        out["clip_frac"] = out["clip_frac_low"] + out["clip_frac_high"]
        if "kl" in stats:
            out["kl"] = masked_mean(stats["kl"], mask)
        return out


def ppo_clip_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor | None, clip_low: float = 0.2,
                  clip_high: float | None = None, ratio_level: str = "token", mode: str = "token_mean",
                  **agg) -> tuple[Tensor, dict]:
    """PPO-clip loss, aggregated (Schulman 2017 eq. 7, seed eq. 26); (B, T) -> (scalar, stats); mask None: no
    padding. Stats: token means of the clip fractions and ratio, and approx_kl = k3 estimate of KL(old || new)."""
    per_token, stats = ppo_clip_objective(logp, old_logp, advantages, mask, clip_low, clip_high, ratio_level)
    out = token_means(stats, mask)
    out["approx_kl"] = masked_mean(kl_estimate(old_logp.detach(), logp.detach(), "k3"), mask)
    return aggregate(per_token, mask, mode, **agg), out


def kl_penalized_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor | None, beta: float,
                      kl: Tensor | None = None, mode: str = "token_mean", **agg) -> tuple[Tensor, dict]:
    """KL-penalized surrogate -(rho A - beta KL(pi_old || pi)) (PPO-penalty, seed Algorithm 10); (B, T).

    `kl` is the per-step KL(pi_old(.|s) || pi(.|s)); pass the exact one when the full distributions are at hand
    (gym agents), else it is estimated from the sampled actions with k3. Differentiating that k3 is right here: the
    samples come from pi_old, the FIXED first argument, so E_old[grad k3] = grad KL(pi_old || pi) exactly.
    """
    A = _per_token(advantages, logp).detach()
    ratio = torch.exp(logp - old_logp.detach())
    kl = kl_estimate(old_logp.detach(), logp, "k3") if kl is None else kl
    loss = aggregate(-(ratio * A) + beta * kl, mask, mode, **agg)
    m = torch.ones_like(logp) if mask is None else mask.to(logp.dtype)
    with torch.no_grad():
        stats = {"kl": (kl.detach() * m).sum() / m.sum().clamp(min=1),
                 "ratio_mean": (ratio.detach() * m).sum() / m.sum().clamp(min=1)}
    return loss, stats


def grpo_loss(logp: Tensor, old_logp: Tensor, ref_logp: Tensor | None, advantages: Tensor, mask: Tensor,
              beta: float, clip_low: float = 0.2, clip_high: float | None = None, ratio_level: str = "token",
              kl_estimator: str = "k3", mode: str = "seq_mean_token_mean", kl_gradient: str = "unbiased",
              entropy: Tensor | None = None, entropy_coef: float = 0.0, **agg) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO loss: per-token PPO-clip + beta * KL(pi || pi_ref) penalty (Shao et al. 2024 eq. 3), aggregated.

    logp/old_logp/ref_logp/mask (B, T), advantages (B,) or (B, T) -> (scalar loss, per-token detached stats:
    ratio, clipped_low, clipped_high and, with a penalty, kl = the estimator's value; reduce them with
    `token_means`). The penalty is `kl_penalty(logp, ref_logp, kl_estimator, kl_gradient, old_logp)`: by default
    its gradient is an unbiased estimate of grad KL(pi || pi_ref) whatever the estimator (see kl_penalty). The seed's
    GRPO objective writes the ratio against pi_ref; the ratio is against pi_old, as in the paper.
    With beta = 0 or ref_logp None the KL term is skipped (no reference model is needed).
    With entropy_coef = c2 > 0, the entropy bonus -c2 H(pi(.|s_t)) joins every token's loss (PPO eq. 9, seed eq. 26's
    c2 S term); `entropy` (B, T) is the policy's entropy at each position, differentiable.
    """
    per_token, stats = ppo_clip_objective(logp, old_logp, advantages, mask, clip_low, clip_high, ratio_level)
    if beta != 0 and ref_logp is not None:
        kl = kl_penalty(logp, ref_logp, kl_estimator, kl_gradient, old_logp)
        per_token = per_token + beta * kl
        stats["kl"] = kl.detach()
    if entropy_coef != 0:
        if entropy is None:
            raise ValueError("grpo_loss: entropy_coef is set but no per-token entropy was given")
        per_token = per_token - entropy_coef * entropy
    return aggregate(per_token, mask, mode, **agg), stats


def entropy(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Entropy H = -sum_a p log p of softmax(logits) per position; logits (..., A) -> (...), zero where mask = 0."""
    # Upcast half precision but keep float64; -inf (masked-out actions) -> finfo.min so 0 * log 0 is 0, not NaN.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    logp = F.log_softmax(logits.clamp(min=torch.finfo(logits.dtype).min), dim=-1)
    h = -(logp.exp() * logp).sum(-1)
    return h if mask is None else h * mask.to(h.dtype)


def huber_loss(x: Tensor, delta: float = 1.0) -> Tensor:
    """Huber 1/2 x^2 for |x| <= delta, delta (|x| - delta/2) beyond (DQN's TD-error loss, seed eq. 12); elementwise."""
    a = x.abs()
    return torch.where(a <= delta, 0.5 * x ** 2, delta * (a - 0.5 * delta))
