"""The critic of PPO with a value model (advantage=gae; InstructGPT, Ouyang et al. 2022; Ziegler et al. 2019; the
c1 term of the seed's eq. 26): per-token values V(s_t) from a scalar head on a causal-LM backbone, with its own
LoRA adapter and its own AdamW. The trainer calls it at three places: `values` in the rollout (V(s_t) at sampling,
for GAE and for clipping), `update` once per optimization pass, and the checkpoint (its weights, optimizer and
schedule).

- Built from the policy (default: a copy of the policy's model as it starts, adapter folded in, with a new head) or
  from a reward model (`critic_model`: its backbone and its trained head, as OpenRLHF does), through
  llmrl.llm.reward_model, whose scalar-head models it shares (`score_parts`).
- V(s_t) for completion token t is the head on the hidden state of the position BEFORE y_t: the state s_t = prompt +
  y_<t in which y_t is chosen, the same hidden state the policy's log pi(y_t | s_t) reads.
- Its loss is vf_coef * `objectives.value_loss` (clipped around the values at sampling by cliprange_value) on the
  GAE returns, token-averaged over the whole batch of every process (exact over micro-batches).
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .. import objectives
from . import engines
from .activation_memory import lean_training_modules
from .logprobs import prompt_positions, run_decoder
from .model import LoraSettings, lora_targets
from .reward_model import _head_dtype, add_reward_lora, load_reward_model, score_parts

if TYPE_CHECKING:
    from .trainer import GRPOTrainer, RolloutBatch


def completion_values(model, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                      completion_mask: Tensor, group_index: Tensor) -> Tensor:
    """V(s_t) at every completion token of a scalar-head model: each left-padded prompt (P_n, P) + its right-padded
    completion (N, C) as one sequence (position ids count real tokens), the head on the hidden state that precedes
    each completion token; (N, C) fp32, junk on padding."""
    backbone, head = score_parts(model)
    mask = torch.cat([prompt_mask[group_index], completion_mask.to(prompt_mask.dtype)], 1)
    h, _ = run_decoder(backbone, torch.cat([prompt_ids[group_index], completion_ids], 1), mask,
                       prompt_positions(mask))
    states = h[:, prompt_ids.shape[1] - 1:-1]
    return head(states.to(_head_dtype(head))).squeeze(-1).float()


class ValueModel(nn.Module):
    """The critic as a module whose forward returns V(s_t) (N, C), so that DDP (which synchronizes gradients through
    its wrapped module's forward) sees the whole computation."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, prompt_ids, prompt_mask, completion_ids, completion_mask, group_index):
        return completion_values(self.model, prompt_ids, prompt_mask, completion_ids, completion_mask, group_index)


def value_model_from_policy(policy, dtype: torch.dtype):
    """A scalar-head model (transformers *ForSequenceClassification, num_labels=1) whose backbone is a copy of the
    policy's as it is now (a LoRA adapter folded in), with a new randomly initialized head."""
    from transformers import AutoModelForSequenceClassification

    from .trainer import merged_copy

    plain = merged_copy(policy)
    config = copy.deepcopy(plain.config)
    config.num_labels = 1
    try:
        critic = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    except ValueError as e:
        raise ValueError(f"advantage=gae: transformers has no scalar-head class for model type "
                         f"{config.model_type!r} to build the critic from; give critic_model (a reward model)") from e
    backbone, _ = score_parts(critic)
    backbone.load_state_dict(plain.get_decoder().state_dict())
    return critic


def load_critic_model(cfg, policy, tokenizer, dtype: torch.dtype):
    """The critic's scalar-head model: from cfg.critic_model or the policy, with its own LoRA adapter
    (cfg.critic_lora_r, the head trained fully) or every weight trained (fp32 master weights)."""
    lora = LoraSettings(cfg.critic_lora_r, 2 * cfg.critic_lora_r, 0.0, lora_targets(cfg.lora_target_modules)) \
        if cfg.critic_lora_r else None
    dtype = dtype if lora is not None else torch.float32
    if cfg.critic_model is None:
        model = value_model_from_policy(policy, dtype)
        return add_reward_lora(model, lora) if lora is not None else model
    model, own = load_reward_model(cfg.critic_model, lora, dtype)
    if own.get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"critic_model {cfg.critic_model!r} has another tokenizer than the policy; the critic "
                         f"values the policy's own tokens, so start it from a model with the policy's tokenizer")
    return model


class Critic:
    """PPO's value model: `values(batch)` at sampling, `update(batch)` once per pass, `state_dict` for checkpoints."""

    def __init__(self, trainer: GRPOTrainer, policy):
        from transformers import get_scheduler

        # (engines that shard or partition state are refused when the trainer is built: engines.check)
        cfg, acc = trainer.cfg, trainer.acc
        self.tr, self.cfg = trainer, cfg
        model = load_critic_model(cfg, policy, trainer.tok, trainer.dtype).to(acc.device)
        if not engines.gathers_per_submodule(acc):  # as for the policy (activation_memory.py)
            lean_training_modules(model)
        self.is_peft = hasattr(model, "disable_adapter")
        # as for the policy: full training keeps fp32 master weights and computes in bf16 under autocast
        self.autocast_dtype = torch.bfloat16 if (trainer.dtype == torch.bfloat16 and not self.is_peft) else None
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.critic_learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                weight_decay=cfg.weight_decay)
        # the policy's schedule (not prepared by accelerate, for the same reason as the policy's)
        self.sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=cfg.warmup_steps,
                                   num_training_steps=cfg.max_steps * cfg.num_iterations)
        self.module, self.opt = acc.prepare(ValueModel(model), opt)
        self.model = model  # unwrapped (checkpoints)

    def _values_of(self, module, batch: RolloutBatch, sl: slice) -> Tensor:
        autocast = torch.autocast(self.tr.acc.device.type, dtype=self.autocast_dtype) \
            if self.autocast_dtype is not None else contextlib.nullcontext()
        with autocast:
            return module(*self.tr._micro_batch_inputs(batch, sl))

    @torch.no_grad()
    def values(self, batch: RolloutBatch) -> Tensor:
        """V(s_t) of every completion token of the batch (N, C), fp32 (junk on padding)."""
        return torch.cat([self._values_of(self.module, batch, sl) for sl in self.tr._micro_batches(len(batch))])

    def update(self, batch: RolloutBatch) -> dict:
        """One pass over the batch: the value loss vf_coef * value_loss(V, returns, V_old, cliprange_value) over the
        tokens of every process, gradient accumulated over micro-batches, clipped to max_grad_norm, one AdamW step
        (skipped when not finite). Returns critic/* statistics and critic/skipped_updates."""
        cfg, acc, tr = self.cfg, self.tr.acc, self.tr
        mbs = tr._micro_batches(len(batch))
        # token mean over the whole batch: each micro-batch's mean is weighted by its share of the tokens (the count
        # of all processes averaged over them, as DDP averages their gradients)
        n_tokens = batch.loss_mask.sum().float()
        if acc.num_processes > 1:
            n_tokens = acc.reduce(n_tokens, "sum") / acc.num_processes
        clip = cfg.cliprange_value or None
        loss_sum = 0.0
        for j, sl in enumerate(mbs):
            with acc.no_sync(self.module) if j < len(mbs) - 1 else contextlib.nullcontext():
                v, mask = self._values_of(self.module, batch, sl), batch.loss_mask[sl]
                share = mask.sum() / n_tokens.clamp(min=1)
                loss = objectives.value_loss(v, batch.returns[sl], batch.values[sl], clip, mask) * share
                acc.backward(cfg.vf_coef * loss)
            loss_sum += loss.item()
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = float(acc.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")))
        skipped = not (math.isfinite(norm) and math.isfinite(loss_sum))
        if not skipped:
            self.opt.step()
            self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        stats = tr._token_means({"critic/values_mean": batch.values, "critic/returns_mean": batch.returns},
                                batch.loss_mask)
        stats.update({"critic/value_loss": tr._mean_over_processes(loss_sum), "critic/grad_norm": norm,
                      "critic/skipped_updates": int(skipped)})
        return stats
