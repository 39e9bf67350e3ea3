"""Trust-region updates of an LLM policy: TRPO (Schulman et al. 2015; seed Algorithm 9) and the natural policy
gradient (Kakade 2001), on the trainable parameters (LoRA, or all weights of a small model). `GRPOTrainer.optimize`
hands a generation batch here when config.optimizer is trpo or npg.

One update, top to bottom (`trust_region_update`):
  1. gradient  g of the surrogate -rho A (TRPO's objective) with the loss_type's aggregation and normalizers,
               accumulated over micro-batches, averaged over processes (as DDP averages AdamW's gradients)
  2. F v       the Fisher of the mean token KL(pi_old || pi_theta) over the batch's completion tokens times v,
               summed over micro-batches (each weighted by 1 / the global token count), summed over processes
  3. CG        x = (F + cg_damping I)^-1 (-g), scaled to the trust region: 1/2 s^T F s = max_kl (undamped: the
               Fisher's scale depends on the model and the adapter, so a fixed damping must not shrink the step)
  4. search    trpo: step fractions 1, backtrack_coef, ... until the EXACT mean token KL (full vocabulary) is
               <= max_kl and the surrogate improves; none: no update. npg: the full step.
  5. stats     loss, grad_norm, entropy (and the KL to the reference when it is in the rewards), trust_region/*
Steps 3-4 are `objectives.trust_region_step`, the same function the gym TRPO agent uses.

Why the Fisher goes through the model's own forward, not the trainer's log-prob path: the trainer's
`_ChunkedLogprobs` has a hand-written backward that cannot be differentiated again, and gives only the sampled
token's log-prob, while the Fisher of the KL needs the whole softmax at every completion position. The
Gauss-Newton form F v = J^T (diag p - p p^T) J v (`objectives.softmax_fisher_vector_product`) needs no double
backward: J v is one forward-mode pass (jvp, no autograd graph) and J^T u one ordinary forward and backward. It runs
through the HF forward (each completion with its own copy of the prompt), which returns the full-vocabulary
logits; in the forward-mode pass attention runs on PyTorch's math SDPA backend, the one with forward-mode
derivatives. Cost: one F v is about 2.5 gradient passes, and an update takes cg_iters + 1 of them.
"""
from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from .. import objectives
from .logprobs import prompt_positions
from .trainer import out_of_memory_hint

if TYPE_CHECKING:
    from .trainer import GRPOTrainer, RolloutBatch

def trust_region_update(tr: GRPOTrainer, batch: RolloutBatch) -> dict:
    """One TRPO (cfg.optimizer="trpo") or NPG ("npg") update of tr.model's trainable parameters in place on the
    generation batch; returns the trainer's statistics plus trust_region/* (CG iterations and relative residual,
    the step's KL, accepted fraction of the full step, surrogate improvement, rejected)."""
    # (engines that shard parameters or partition gradients are refused when the trainer is built: engines.check)
    cfg, acc = tr.cfg, tr.acc
    names, params = zip(*[(n, p) for n, p in tr.model.named_parameters() if p.requires_grad])
    agg = tr._loss_normalizers(batch)
    n_tokens = _process_sum(acc, batch.completion_mask.sum().float()).clamp(min=1)  # the KL's token count
    try:
        # 1. the policy gradient at theta_old (micro-batches, processes)
        loss, g, old_logp, entropy = _policy_gradient(tr, batch, params, agg)
        stats = {"loss": loss, "grad_norm": float(g.norm()), "skipped_updates": 0}
        per_token = {"entropy": entropy, "kl": _reference_kl(tr, batch, old_logp)}
        stats.update(tr._token_means({k: torch.cat(v) for k, v in per_token.items() if v is not None},
                                     batch.loss_mask))
        if not (math.isfinite(loss) and stats["grad_norm"] < math.inf):  # no update (counts toward the stop rule)
            stats.update({f"trust_region/{k}": math.nan for k in TRUST_REGION_STATS}, skipped_updates=1)
            return dict(stats, **{"trust_region/rejected": 1.0})
        # 2.-4. CG on the Fisher-vector product, scaling to max_kl, line search (npg: none), in objectives
        theta_old = {n: p.detach().clone() for n, p in zip(names, params)}
        step = objectives.trust_region_step(
            params, max_kl=cfg.max_kl, damping=cfg.cg_damping, cg_iters=cfg.cg_iters,
            backtrack_iters=cfg.backtrack_iters, backtrack_coef=cfg.backtrack_coef, accept_ratio=cfg.accept_ratio,
            loss_and_grad=(loss, g), fvp=fisher_vector_product(tr, batch, names, params, n_tokens),
            evaluate=lambda: surrogate_and_kl(tr, batch, theta_old, agg, n_tokens),
            line_search=cfg.optimizer == "trpo", damped_scaling=False,  # the KL's own model: F's scale is unknown
            cg_tol=1e-10 * float(g @ g))  # CG to a relative residual 1e-5
    except RuntimeError as e:
        raise (out_of_memory_hint(e, "training") or e) from e
    # 5. statistics
    stats.update({"trust_region/cg_iterations": step["cg_iterations"], "trust_region/cg_residual": step["cg_residual"],
                  "trust_region/step_kl": step["kl"], "trust_region/step_frac": step["step_frac"],
                  "trust_region/surrogate_improvement": step["improvement"],
                  "trust_region/expected_improvement": step["expected_improvement"],
                  "trust_region/rejected": float(not step["accepted"])})
    return stats


TRUST_REGION_STATS = ("cg_iterations", "cg_residual", "step_kl", "step_frac", "surrogate_improvement",
                      "expected_improvement")


def _policy_gradient(tr: GRPOTrainer, batch: RolloutBatch, params, agg: dict):
    """(surrogate loss, flat gradient) at theta = theta_old, both averaged over processes, and the per-micro-batch
    log pi_old of the sampled tokens and entropies; through the trainer's own log-prob path (unwrapped from DDP:
    the gradient is averaged here, outside DDP's hooks)."""
    module = tr.acc.unwrap_model(tr.policy)
    loss, g = 0.0, torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
    old_logp, entropy = [], []
    for sl in tr._micro_batches(len(batch)):
        logp, ent = tr._logp_of(module, batch, sl)
        # rho = pi / pi_old = 1 here; its gradient is the policy gradient of the loss_type's aggregation
        mb_loss = objectives.surrogate_loss(logp, logp.detach(), batch.advantages[sl], batch.loss_mask[sl],
                                            **agg)
        g += torch.cat([x.reshape(-1) for x in torch.autograd.grad(mb_loss, params, materialize_grads=True)])
        loss += mb_loss.item()
        old_logp.append(logp.detach())
        entropy.append(ent)
    both = _process_mean(tr.acc, torch.cat([g, g.new_tensor([loss])]))
    return float(both[-1]), both[:-1], old_logp, entropy


def fisher_vector_product(tr: GRPOTrainer, batch: RolloutBatch, names, params, n_tokens: Tensor):
    """v -> F v, F the Hessian at theta_old of the mean token KL(pi_old || pi_theta) over the completion tokens of
    every process: per micro-batch `objectives.softmax_fisher_vector_product` with weights mask / n_tokens, summed
    over micro-batches and over processes (exact: the mean is a sum of per-token terms)."""
    T = tr.cfg.temperature

    def logits(sl: slice, tensors: list[Tensor]) -> Tensor:
        jvp = fwAD.unpack_dual(tensors[0]).tangent is not None
        # the forward-mode pass runs attention on the math SDPA backend, the one with forward-mode derivatives
        with sdpa_kernel(SDPBackend.MATH) if jvp else contextlib.nullcontext():
            return completion_logits(tr, batch, sl, T, dict(zip(names, tensors)))

    def fvp(v: Tensor) -> Tensor:
        out = torch.zeros_like(v)
        for sl in tr._micro_batches(len(batch)):
            weights = batch.completion_mask[sl].float() / n_tokens
            out += objectives.softmax_fisher_vector_product(lambda ts: logits(sl, ts), list(params), v, weights)
        return _process_sum(tr.acc, out)

    return fvp


@torch.no_grad()
def surrogate_and_kl(tr: GRPOTrainer, batch: RolloutBatch, theta_old: dict, agg: dict,
                     n_tokens: Tensor) -> tuple[float, float]:
    """(surrogate loss, exact mean token KL(pi_old || pi_theta)) at the current parameters against theta_old, over
    every process; one forward per micro-batch at theta_old and one at theta (the full-vocabulary KL needs both)."""
    T = tr.cfg.temperature
    totals = torch.zeros(2, device=batch.completion_ids.device)
    for sl in tr._micro_batches(len(batch)):
        old = torch.log_softmax(completion_logits(tr, batch, sl, T, theta_old), -1)
        new = torch.log_softmax(completion_logits(tr, batch, sl, T), -1)
        mask, ids = batch.completion_mask[sl], batch.completion_ids[sl, :, None]
        kl = F.kl_div(new, old, reduction="none", log_target=True).sum(-1)  # sum_y p_old (log p_old - log p)
        totals[0] += objectives.surrogate_loss(new.gather(-1, ids)[..., 0], old.gather(-1, ids)[..., 0],
                                               batch.advantages[sl], batch.loss_mask[sl], **agg)
        totals[1] += (kl * mask).sum()
    totals = _process_sum(tr.acc, totals)
    return float(totals[0]) / tr.acc.num_processes, float(totals[1] / n_tokens)


def completion_logits(tr: GRPOTrainer, batch: RolloutBatch, sl: slice, temperature: float,
                      params: dict | None = None) -> Tensor:
    """Logits / T (n, C, V), at least fp32, at the positions that predict the completion tokens of slice `sl`: the
    model's own forward on each prompt + completion (optionally with `params` in place of its trainable ones)."""
    gi = batch.group_index[sl]
    ids = torch.cat([batch.prompt_ids[gi], batch.completion_ids[sl]], 1)
    mask = torch.cat([batch.prompt_mask[gi], batch.completion_mask[sl].to(batch.prompt_mask.dtype)], 1)
    kw = dict(input_ids=ids, attention_mask=mask, position_ids=prompt_positions(mask), use_cache=False,
              logits_to_keep=batch.completion_ids.shape[1] + 1)
    with tr._autocast():
        try:
            out = tr.model(**kw) if params is None else functional_call(tr.model, params, args=(), kwargs=kw)
        except NotImplementedError as e:  # an operation without a forward-mode derivative (F v's jvp)
            raise RuntimeError(f"optimizer={tr.cfg.optimizer}: the Fisher-vector product needs forward-mode "
                               f"derivatives of the model's forward: {str(e).splitlines()[0]} (load the model with "
                               f"attn_implementation='sdpa' or 'eager')") from e
    z = out.logits[:, :-1]
    return z.to(torch.promote_types(z.dtype, torch.float32)) / temperature


def _reference_kl(tr: GRPOTrainer, batch: RolloutBatch, old_logp: list[Tensor]) -> list[Tensor] | None:
    """The per-token KL to the reference (kl_in=reward), as the AdamW path reports it for logs and the controller."""
    if batch.ref_logp is None:
        return None
    return [objectives.kl_estimate(lp, batch.ref_logp[sl], tr.cfg.kl_estimator)
            for lp, sl in zip(old_logp, tr._micro_batches(len(batch)))]


def _process_sum(acc, x: Tensor) -> Tensor:
    return acc.reduce(x, "sum") if acc.num_processes > 1 else x


def _process_mean(acc, x: Tensor) -> Tensor:
    return acc.reduce(x, "mean") if acc.num_processes > 1 else x

