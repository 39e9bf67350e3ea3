"""Policy-gradient losses: REINFORCE, PPO-clip, KL-penalized PPO, GRPO; loss aggregation; entropy; Huber.

Per-token tensors are (B, T) with a mask (B, T), 1 = a real token/step. Advantages are (B, T) or (B,) (one per
sequence, broadcast over its tokens). Every loss is to be MINIMIZED (it is minus the surrogate objective).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .kl import kl_estimate

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm", "sum")


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
                       clip_low: float = 0.2, clip_high: float | None = None, ratio_level: str = "token",
                       with_stats: bool = True) -> tuple[Tensor, dict]:
    """Per-token -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A) (PPO eq. 26; DAPO's clip-higher); (B, T).

    Returns the unreduced loss and detached per-token statistics (ratio, low/high clipping indicators; {} when
    `with_stats` is False). The mask is read only by ratio_level="sequence".
    """
    clip_high = clip_low if clip_high is None else clip_high
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low and clip_high must be >= 0, got {clip_low}, {clip_high}")
    A = _per_token(advantages, logp).detach()
    ratio = torch.exp(log_ratio(logp, old_logp.detach(), mask, ratio_level))
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = -torch.minimum(ratio * A, clipped * A)
    if not with_stats:
        return loss, {}
    with torch.no_grad():
        stats = {"ratio": ratio.detach(),
                 "clipped_low": ((ratio < 1.0 - clip_low) & (A < 0)),   # the bound that stops pushing pi down
                 "clipped_high": ((ratio > 1.0 + clip_high) & (A > 0))}  # the bound that stops pushing pi up
    return loss, stats


def _summarize(stats: dict, logp: Tensor, old_logp: Tensor, mask: Tensor | None) -> dict:
    """Token-mean statistics for logging: clip fractions, ratio, approx KL(old || new) (k3)."""
    with torch.no_grad():
        m = torch.ones_like(logp) if mask is None else mask.to(logp.dtype)
        n = m.sum().clamp(min=1)
        mean = lambda x: (x.to(logp.dtype) * m).sum() / n  # noqa: E731
        low, high = mean(stats["clipped_low"]), mean(stats["clipped_high"])
        return {"clip_frac_low": low, "clip_frac_high": high, "clip_frac": low + high,
                "ratio_mean": mean(stats["ratio"]), "approx_kl": mean(kl_estimate(old_logp, logp.detach(), "k3"))}


def ppo_clip_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor | None, clip_low: float = 0.2,
                  clip_high: float | None = None, ratio_level: str = "token", mode: str = "token_mean",
                  with_stats: bool = True, **agg) -> tuple[Tensor, dict]:
    """PPO-clip loss, aggregated (Schulman 2017 eq. 7, seed eq. 26); (B, T) -> (scalar, stats); mask None: no
    padding. `with_stats=False` returns {} and skips the statistics' small ops (they dominate a tiny-MLP update)."""
    per_token, stats = ppo_clip_objective(logp, old_logp, advantages, mask, clip_low, clip_high, ratio_level,
                                          with_stats)
    return aggregate(per_token, mask, mode, **agg), _summarize(stats, logp, old_logp, mask) if with_stats else {}


def kl_penalized_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor | None, beta: float,
                      kl: Tensor | None = None, mode: str = "token_mean", **agg) -> tuple[Tensor, dict]:
    """KL-penalized surrogate -(rho A - beta KL(pi_old || pi)) (PPO-penalty, seed Algorithm 10); (B, T).

    `kl` is the per-step KL(pi_old(.|s) || pi(.|s)); pass the exact one when the full distributions are at hand
    (gym agents), else it is estimated from the sampled actions with k3 (samples come from pi_old).
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
              kl_estimator: str = "k3", mode: str = "seq_mean_token_mean", **agg) -> tuple[Tensor, dict]:
    """GRPO per-token loss PPO-clip + beta * KL_k3(pi || pi_ref) (Shao et al. 2024 eq. 3), aggregated; (B, T).

    With beta = 0 or ref_logp None the KL term is skipped (no reference model is needed).
    """
    per_token, stats = ppo_clip_objective(logp, old_logp, advantages, mask, clip_low, clip_high, ratio_level)
    out = _summarize(stats, logp, old_logp, mask)
    if beta != 0 and ref_logp is not None:
        kl = kl_estimate(logp, ref_logp.detach(), kl_estimator)
        per_token = per_token + beta * kl
        m = mask.to(logp.dtype)
        out["kl"] = (kl.detach() * m).sum() / m.sum().clamp(min=1)
    return aggregate(per_token, mask, mode, **agg), out


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
