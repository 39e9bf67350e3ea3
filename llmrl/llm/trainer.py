"""GRPOTrainer: group-relative policy optimization (and Dr. GRPO / RLOO / REINFORCE, PPO with a critic, REINFORCE++)
for Hugging Face causal LMs.

One step, top to bottom (`GRPOTrainer.step`):
  rollout:  1. take B prompts; 2. sample G completions each; 3. score them with the reward functions;
            4. reference log-probs (and the KL-shaped reward); 5. advantages, per completion or per token (with
            advantage=gae, the critic's values V(s_t) first: llmrl/llm/critic.py)
  optimize: 6. mu passes of clipped-surrogate updates over micro-batches (exact gradient accumulation), each
            followed by one pass of the critic's value loss
  log:      7. metrics, completions, checkpoints.
Every equation is in llmrl.objectives; accelerate handles devices, processes and trackers.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .. import objectives
from ..utils import RunLogger, SetupError, end_process_group, seed_everything, set_threads, truncate_jsonl
from . import checkpoint as ckpt
from . import engines
from . import hub, tracking
from .activation_memory import lean_training_modules
from .config import REWARD_MODEL, GRPOConfig
from .data import PromptSampler, check_prompt_dataset, load_prompt_dataset, make_prompt, row_prompt
from .evaluation import eos_token_ids, evaluate_policy, load_eval_dataset, retire_eval_results
from .logprobs import completion_logprobs, completion_logprobs_naive
from .model import LoraSettings, add_lora, load_adapter, load_policy, lora_targets, resolve_dtype, unwrap_peft
from .reference import ReferencePolicy
from .rewards import required_columns, resolve_reward_functions, score_completions
from .sampling import check_logits_path, clock, decode_completions, sample_completions, tokenize_prompts

# The metrics that are wall times (or rates of them): two runs of the same training differ in these only.
# time/* split gen_time into phases: the sampler's setup, prefill, decode, the reference forward.
TIMING_METRICS = ("time", "tokens_per_s", "step_time", "gen_time", "sample_time", "optimize_time",
                  "time/sampler_setup", "time/prefill", "time/decode", "time/reference")


@dataclass
class RolloutBatch:
    """One generation batch on one process: B prompts, N = B*G completions, their rewards and advantages."""
    prompt_ids: Tensor          # (B, P) left-padded
    prompt_mask: Tensor         # (B, P)
    completion_ids: Tensor      # (N, C) right-padded
    completion_mask: Tensor     # (N, C), 1 up to and including EOS
    group_index: Tensor         # (N,) prompt row of each completion
    rewards: Tensor             # (N,) weighted total (+ shaping: overlong penalty, KL when kl_in = "reward")
    advantages: Tensor          # (N,), or (N, C) per token (advantage gae / reinforce_plus_plus*)
    ref_logp: Tensor | None = None   # (N, C) log pi_ref of the sampled tokens, when a KL term is on
    beta_loss: float = 0.0           # this step's KL coefficient in the loss (0 when kl_in = "reward")
    loss_mask: Tensor | None = None  # (N, C) tokens that count in the loss (default: completion_mask)
    values: Tensor | None = None     # (N, C) the critic's V(s_t) at sampling (advantage=gae)
    returns: Tensor | None = None    # (N, C) GAE returns A_t + V(s_t): the critic's targets (advantage=gae)
    info: dict = field(default_factory=dict)  # texts and per-function rewards, for logs

    def __len__(self) -> int:
        return len(self.group_index)

    def __post_init__(self):
        if self.loss_mask is None:
            self.loss_mask = self.completion_mask

    def select_groups(self, groups: list[int], G: int) -> RolloutBatch:
        """The batch of the given prompt rows (groups of G completions), in that order."""
        rows = torch.tensor(groups, dtype=torch.long, device=self.prompt_ids.device)
        comp = (rows[:, None] * G + torch.arange(G, device=rows.device)).flatten()
        pick = lambda x: x[comp] if isinstance(x, Tensor) else [x[i] for i in comp.tolist()]  # noqa: E731
        info = {"prompts": [self.info["prompts"][g] for g in groups], "texts": pick(self.info["texts"]),
                "per_func": {k: pick(v) for k, v in self.info["per_func"].items()},
                "truncated": pick(self.info["truncated"]), "raw_rewards": pick(self.info["raw_rewards"])}
        return RolloutBatch(self.prompt_ids[rows], self.prompt_mask[rows], self.completion_ids[comp],
                            self.completion_mask[comp], torch.arange(len(groups), device=rows.device).repeat_interleave(G),
                            self.rewards[comp], self.advantages[comp], beta_loss=self.beta_loss, info=info)

    @staticmethod
    def concat(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
        """One batch of several (before reference log-probs): prompts left-padded and completions right-padded
        to the longest."""
        P = max(b.prompt_ids.shape[1] for b in batches)
        C = max(b.completion_ids.shape[1] for b in batches)
        left = lambda x, v: torch.nn.functional.pad(x, (P - x.shape[1], 0), value=v)  # noqa: E731
        right = lambda x, v: torch.nn.functional.pad(x, (0, C - x.shape[1]), value=v)  # noqa: E731
        offsets = torch.tensor([0] + [len(b.prompt_ids) for b in batches[:-1]]).cumsum(0).tolist()
        cat = lambda key: torch.cat([b.info[key] for b in batches])  # noqa: E731
        info = {"prompts": sum((b.info["prompts"] for b in batches), []),
                "texts": sum((b.info["texts"] for b in batches), []),
                "per_func": {k: torch.cat([b.info["per_func"][k] for b in batches]) for k in batches[0].info["per_func"]},
                "truncated": cat("truncated"), "raw_rewards": cat("raw_rewards")}
        return RolloutBatch(torch.cat([left(b.prompt_ids, pad_id) for b in batches]),
                            torch.cat([left(b.prompt_mask, 0) for b in batches]),
                            torch.cat([right(b.completion_ids, pad_id) for b in batches]),
                            torch.cat([right(b.completion_mask, 0) for b in batches]),
                            torch.cat([b.group_index + o for b, o in zip(batches, offsets)]),
                            torch.cat([b.rewards for b in batches]), torch.cat([b.advantages for b in batches]),
                            beta_loss=batches[0].beta_loss, info=info)


class LogprobModel(nn.Module):
    """The policy as a module whose forward returns per-token log-probs of completions, so that DDP (which
    synchronizes gradients through its wrapped module's forward) sees the whole computation."""

    def __init__(self, model, temperature: float, chunk: int, shared_prefix: bool, checkpointed: bool = False):
        super().__init__()
        self.model, self.temperature, self.chunk = model, temperature, chunk
        self.fn = completion_logprobs if shared_prefix else completion_logprobs_naive
        self.checkpointed = checkpointed

    def forward(self, prompt_ids, prompt_mask, completion_ids, completion_mask, group_index):
        fn = self.fn
        if self.checkpointed and torch.is_grad_enabled():
            # Activation checkpointing drops (transformers) or replays into (torch's wrapper) the KV cache that the
            # shared prefix needs: gradient passes run every prompt + completion whole (no-grad passes recompute
            # nothing and keep the shared prefix)
            fn = completion_logprobs_naive
        return fn(self.model, prompt_ids, prompt_mask, completion_ids, completion_mask, group_index,
                  self.temperature, self.chunk)


def out_of_memory_hint(err: BaseException, phase: str) -> SetupError | None:
    """A clearer error for running out of memory, naming the knob to lower for the phase that failed."""
    text = str(err).lower()
    if not (isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text
            or "not enough memory" in text):
        return None
    knob = {"generation": "per_device_batch_size, num_generations or max_new_tokens",
            "training": "micro_batch_size (gradient accumulation keeps the update identical) or max_new_tokens",
            "evaluation": "eval_batch_size"}[phase]
    return SetupError(f"out of memory during {phase}: lower {knob}")


class GRPOTrainer:
    """GRPO-family policy-gradient fine-tuning of a causal LM (LoRA by default) with reward functions.

    `GRPOTrainer(config)` loads everything the config names; `model`, `tokenizer`, `reward_funcs`,
    `train_dataset` and `accelerator` replace what it would load. `train()` runs `step()` max_steps times:
    `rollout` (sample, score, reference log-probs, advantages) -> `optimize` (mu passes of the clipped surrogate)
    -> metrics, completions and checkpoints in config.output_dir.
    """

    def __init__(self, config: GRPOConfig | None = None, model=None, tokenizer=None, reward_funcs=None,
                 train_dataset=None, eval_dataset=None, accelerator=None, *, args: GRPOConfig | None = None,
                 processing_class=None, peft_config=None):
        from transformers import get_scheduler

        # TRL's keywords work too: args (the config), processing_class (the tokenizer), model as a hub id or
        # path, peft_config (a peft.LoraConfig for a new adapter)
        config, model, tokenizer = _trl_arguments(config, args, model, tokenizer, processing_class, peft_config)
        cfg = self.cfg = config
        if model is not None and peft_config is None and not hasattr(model, "peft_config") and cfg.lora_r:
            raise ValueError(f"GRPOTrainer: lora_r={cfg.lora_r} applies to a model llmrl loads (config.model); a "
                             f"model object trains as given: pass peft_config=peft.LoraConfig(...) or a peft model")
        if model is not None and cfg.model == "bundled":  # config.json, eval labels, the model card: what trains
            base = unwrap_peft(model)
            cfg.model = getattr(getattr(base, "config", None), "_name_or_path", "") or f"a {type(base).__name__} object"
        # Checks that can refuse the run come before anything is loaded or written.
        # (An output_dir holding a run is refused by train(), which can also resume it as TRL's
        # train(resume_from_checkpoint=...) does; the command line checks it before loading anything.)
        self._resume = ckpt.check_resume(cfg) if cfg.resume else None
        tracking.check_wandb_login(cfg.report_to)
        report_to = [t for t in cfg.report_to if t != "none"]
        # DDP, FSDP2 or DeepSpeed as the launch asked, or a one-line refusal (llmrl/llm/engines.py)
        self.acc = engines.accelerator(cfg, accelerator, log_with=report_to or None, project_dir=cfg.output_dir)
        set_threads(cfg.torch_threads)
        seed_everything(cfg.seed)
        self.dtype = resolve_dtype(cfg.dtype)
        # --- model: LoRA (new, or a trained adapter to continue) or full fine-tuning ---
        if model is None:
            model, tokenizer = self._load_model(peft_config)
        elif peft_config is not None:
            model = add_lora(model, peft_config)
        if tokenizer is None:
            tokenizer = _tokenizer_of(model)
        self.tok = tokenizer
        self.is_peft = hasattr(model, "disable_adapter")
        # pi_ref = the policy as it is now, before any update (llmrl/llm/reference.py); only with a KL term
        self.reference = ReferencePolicy(model) if cfg.beta > 0 else None
        self.autocast_dtype = torch.bfloat16 if (self.dtype == torch.bfloat16 and not self.is_peft) else None
        self.eos_ids = eos_token_ids(model, tokenizer)
        # --- rewards and data ---
        self.reward_funcs = self._reward_functions(reward_funcs)
        if train_dataset is None:
            train_dataset = load_prompt_dataset(cfg.dataset, cfg.dataset_split, cfg.dataset_config)
        cfg.resolve_max_steps(len(train_dataset), self.acc.num_processes)
        check_prompt_dataset(train_dataset, tokenizer, cfg.prompt_column, cfg.system_prompt,
                             required_columns(self.reward_funcs))
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.sampler = PromptSampler(len(train_dataset), cfg.prompts_per_step, self.acc.num_processes,
                                     self.acc.process_index, cfg.seed)
        self.gen = torch.Generator(device=self.acc.device).manual_seed(cfg.seed * 1000 + self.acc.process_index)
        # --- optimization ---
        model.to(self.acc.device)
        check_logits_path(model, cfg.sampler, cfg.shared_prefix)
        # same forward, less stored for backward (activation_memory.py); not for trpo/npg, whose Fisher-vector
        # products need forward-mode AD (these functions define none), nor where ZeRO-3 gathers per submodule
        if cfg.optimizer == "adamw" and not engines.gathers_per_submodule(self.acc):
            lean_training_modules(model)
        if cfg.gradient_checkpointing:
            engines.enable_gradient_checkpointing(model)
        if self.reference is not None and self.reference.copy is not None:
            self.reference.copy.to(self.acc.device)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("GRPOTrainer: the model has no trainable parameters")
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                weight_decay=cfg.weight_decay)
        sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=cfg.max_steps * cfg.num_iterations)
        # The scheduler is not prepared: accelerate's prepared scheduler steps once per process at every step(),
        # which would run the schedule num_processes times too fast.
        module = LogprobModel(model, cfg.temperature, cfg.logprob_chunk, cfg.shared_prefix,
                              checkpointed=engines.activation_checkpointing(self.acc, cfg))
        self.policy, self.opt = engines.prepare(self.acc, module, opt, cfg)
        self.sched = sched
        self.model = model  # the unwrapped policy (sampling, reference, saving)
        # PPO's value model (advantage=gae): its own model, adapter and optimizer (llmrl/llm/critic.py)
        self.critic = None
        if cfg.advantage == "gae":
            from .critic import Critic
            self.critic = Critic(self, model)
        self.kl_ctl = {"fixed": lambda: objectives.FixedKLController(cfg.beta),
                       "adaptive": lambda: objectives.AdaptiveKLController(cfg.beta, cfg.kl_target),
                       "proportional": lambda: objectives.ProportionalKLController(cfg.beta, cfg.kl_target,
                                                                                   cfg.kl_horizon)}[cfg.kl_controller]()
        self.step_count, self.nonfinite_in_a_row = 0, 0
        self.began = False  # train() has set up output_dir (fresh or resumed) and its loop
        self.logger = None
        self.last_eval: dict | None = None   # {"step", "eval/...": value} of the latest evaluation in train()
        self.best: dict | None = None        # the best checkpoint by metric_for_best_model (checkpoint.update_best)
        self.hub_repo_id: str | None = None  # where push_to_hub uploads, once check_push_to_hub has passed

    def _reward_functions(self, given) -> dict:
        """The run's reward functions (resolved in rewards.py), with config.reward_model scored as the reward
        named 'reward_model' (llmrl.llm.RewardModelScorer: its own tokenizer, the last real token's score)."""
        cfg = self.cfg
        if cfg.reward_model is None:
            return resolve_reward_functions(given, cfg.reward_weights, cfg.reward_funcs)
        if given is not None:
            raise ValueError("GRPOTrainer: reward functions are given to the trainer and config.reward_model is set; "
                             "give the reward model as RewardModelScorer(path) among the functions instead")
        from .reward_model import RewardModelScorer

        scorer = RewardModelScorer(cfg.reward_model, batch_size=cfg.reward_model_batch_size, device=self.acc.device,
                                   dtype=self.dtype)
        return resolve_reward_functions({n: scorer if n == REWARD_MODEL else n for n in cfg.reward_funcs},
                                        cfg.reward_weights)

    def _load_model(self, peft_config=None):
        """The policy from config.model: + a new LoRA adapter, + the trained adapter config.adapter, or all
        weights trainable (lora_r=0; fp32 master weights, bf16 autocast when dtype resolves to bf16)."""
        cfg = self.cfg
        if peft_config is not None:
            model, tok = load_policy(cfg.model, None, self.dtype)
            return add_lora(model, peft_config), tok
        if cfg.lora_r == 0:
            return load_policy(cfg.model, None, torch.float32)
        if cfg.adapter:
            model, tok = load_policy(cfg.model, None, self.dtype)
            model = load_adapter(model, cfg.adapter)
            own = model.peft_config[model.active_adapter]
            for name, value, theirs in (("lora_r", cfg.lora_r, own.r), ("lora_alpha", cfg.lora_alpha, own.lora_alpha)):
                if value is not None and value != theirs:
                    raise ValueError(f"GRPOConfig: {name}={value} but the adapter {cfg.adapter} has {theirs}; leave "
                                     f"{name} unset to continue that adapter")
            return model, tok
        r = 16 if cfg.lora_r is None else cfg.lora_r
        lora = LoraSettings(r, 2 * r if cfg.lora_alpha is None else cfg.lora_alpha, cfg.lora_dropout,
                            lora_targets(cfg.lora_target_modules))
        return load_policy(cfg.model, lora, self.dtype)

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.acc.device.type, dtype=self.autocast_dtype)

    def _tokenize_prompts(self, prompts: list) -> tuple[Tensor, Tensor]:
        return tokenize_prompts(self.tok, prompts, self.acc.device)

    def _micro_batches(self, n: int) -> list[slice]:
        return [slice(s, min(s + self.cfg.micro_batch_size, n)) for s in range(0, n, self.cfg.micro_batch_size)]

    def _micro_batch_inputs(self, batch: RolloutBatch, sl: slice) -> tuple[Tensor, ...]:
        """(prompt_ids, prompt_mask, completion_ids, completion_mask, group_index) of the completions in slice `sl`,
        with only the prompts they continue."""
        gi = batch.group_index[sl]
        first, last = int(gi[0]), int(gi[-1]) + 1
        return (batch.prompt_ids[first:last], batch.prompt_mask[first:last], batch.completion_ids[sl],
                batch.completion_mask[sl], gi - first)

    def _logp_of(self, module, batch: RolloutBatch, sl: slice) -> tuple[Tensor, Tensor]:
        """Log-probs and entropies of the completions in slice `sl`."""
        with self._autocast():
            return module(*self._micro_batch_inputs(batch, sl))

    @torch.no_grad()
    def _reference_logprobs(self, batch: RolloutBatch) -> Tensor:
        """log pi_ref of the sampled tokens (llmrl/llm/reference.py says which model pi_ref is)."""
        with self.reference.active() as module:
            # the prepared policy (its forward gathers sharded weights) unless pi_ref is a separate frozen copy
            ref = self.policy if module is self.model else LogprobModel(
                module, self.cfg.temperature, self.cfg.logprob_chunk, self.cfg.shared_prefix)
            return torch.cat([self._logp_of(ref, batch, sl)[0] for sl in self._micro_batches(len(batch))])

    def _global(self, x: Tensor) -> Tensor:
        """x of every process, concatenated in process order (each process holds whole groups)."""
        return self.acc.gather(x.contiguous()) if self.acc.num_processes > 1 else x

    def _local(self, x: Tensor) -> Tensor:
        """This process's rows of a tensor `_global` built."""
        n = len(x) // self.acc.num_processes
        return x[self.acc.process_index * n:(self.acc.process_index + 1) * n]

    def _global_tokens(self, x: Tensor) -> Tensor:
        """A per-token tensor (N, C) of every process, each right-padded with zeros to the longest C."""
        return self._global(self.acc.pad_across_processes(x, dim=1) if self.acc.num_processes > 1 else x)

    # ------------------------------------------------------------------ one step
    @torch.no_grad()
    def rollout(self, rows: list[dict]) -> RolloutBatch:
        """Steps 1-5: sample G completions per prompt and score them (with DAPO's dynamic sampling, more prompts
        until every group has a learning signal), reference log-probs, KL-shaped rewards, advantages."""
        cfg = self.cfg
        # this step's KL coefficient, in the reward or in the loss (the controller adapts it between steps)
        beta = self.kl_ctl.beta
        beta_reward, beta_loss = (beta, 0.0) if cfg.kl_in == "reward" else (0.0, beta)
        t0 = time.perf_counter()
        with engines.full_parameters(self.acc, self.policy):  # FSDP2 / ZeRO-3: each process samples from all weights
            batch = self._generate(rows, beta_loss)
            if cfg.dynamic_sampling:
                batch = self._dynamic_sampling(batch, beta_loss)
        if cfg.mask_truncated_completions:  # DAPO: a cut-off completion's tokens do not count in the loss
            batch.loss_mask = batch.completion_mask * ~batch.info["truncated"][:, None]
        t_sampled = time.perf_counter()
        # 4. reference log-probs; with kl_in = "reward", r_i <- r_i - beta * sum_t KL_t (log pi of the policy now)
        t_ref = clock(self.acc.device)
        if beta > 0:
            batch.ref_logp = self._reference_logprobs(batch)
        batch.info["times"]["reference"] = clock(self.acc.device) - t_ref
        scores, kl = batch.rewards, None
        if beta_reward > 0:
            logp = torch.cat([self._logp_of(self.policy, batch, sl)[0] for sl in self._micro_batches(len(batch))])
            batch.rewards, kl = objectives.kl_shaped_rewards(batch.rewards, logp, batch.ref_logp, batch.completion_mask,
                                                             beta_reward, cfg.kl_estimator)
        # 5. advantages: per completion, or per token (the score at the last token, the KL at every token)
        if cfg.advantage in objectives.TOKEN_ESTIMATORS:
            batch.values = self.critic.values(batch) if self.critic is not None else None
            batch.advantages, batch.returns = self.token_advantages(batch, scores, kl, beta_reward)
        else:
            batch.advantages = self.advantages(batch.rewards)
        batch.info["sample_time"], batch.info["after_sample_time"] = t_sampled - t0, time.perf_counter() - t_sampled
        return batch

    def _generate(self, rows: list[dict], beta_loss: float) -> RolloutBatch:
        """Steps 2-3 for these prompts: G completions each, scored (the weighted reward functions, plus DAPO's
        overlong penalty when overlong_buffer > 0). No collective operation: processes may call it unequally."""
        from transformers import TrainerState

        cfg, G = self.cfg, self.cfg.num_generations
        prompts = [make_prompt(row, cfg.prompt_column, cfg.system_prompt) for row in rows]
        prompt_ids, prompt_mask = self._tokenize_prompts(prompts)
        self.model.eval()
        try:
            with self._autocast():
                comp = sample_completions(self.model, prompt_ids, prompt_mask, G, cfg.max_new_tokens, self.eos_ids,
                                          self.tok.pad_token_id, cfg.temperature, cfg.top_p, cfg.top_k, self.gen,
                                          engine=cfg.sampler)
        except RuntimeError as e:
            raise (out_of_memory_hint(e, "generation") or e) from e
        self.model.train()
        texts = decode_completions(self.tok, comp)
        # 3. rewards: each dataset column travels to the reward functions, repeated for the G completions
        columns = {k: [row[k] for row in rows for _ in range(G)] for k in rows[0] if k != "prompt"}
        rep_prompts = [row_prompt(row, cfg.prompt_column) for row in rows for _ in range(G)]
        completion_ids = [ids[m.bool()].tolist() for ids, m in zip(comp.ids, comp.mask)]
        total, per_func = score_completions(self.reward_funcs, cfg.reward_weights, rep_prompts, texts, columns,
                                            completion_ids, TrainerState(global_step=self.step_count,
                                                                         max_steps=cfg.max_steps),
                                            [p for p in prompts for _ in range(G)])
        dev = prompt_ids.device
        rewards = total.to(dev)
        if cfg.overlong_buffer > 0:
            penalty = objectives.overlong_penalty(comp.mask.sum(-1).to(dev), cfg.max_new_tokens, cfg.overlong_buffer)
            rewards = rewards + cfg.overlong_penalty_factor * penalty
            per_func["overlong_penalty"] = penalty.float().cpu()
        return RolloutBatch(prompt_ids, prompt_mask, comp.ids, comp.mask,
                            torch.arange(len(rows), device=dev).repeat_interleave(G), rewards,
                            torch.zeros(len(texts), device=dev), beta_loss=beta_loss,
                            info={"prompts": prompts, "texts": texts, "per_func": per_func,
                                  "truncated": comp.truncated, "raw_rewards": total, "times": comp.times})

    def _dynamic_sampling(self, batch: RolloutBatch, beta_loss: float) -> RolloutBatch:
        """DAPO's dynamic sampling (Yu et al. 2025): drop the groups whose rewards are all equal (their advantages
        are 0: no learning signal) and sample more prompts until this process has its B groups again. All processes
        take the same number of rounds (agreed after each round), so their data order stays aligned. After
        `dynamic_sampling_max_rounds` extra rounds the batch is filled up with dropped groups (counted in logs)."""
        cfg, B, G = self.cfg, len(batch.prompt_ids), self.cfg.num_generations
        kept, dropped, rounds = [], [], 0
        times = Counter(batch.info["times"])  # of every round's sampling
        while True:
            flat = objectives.zero_std_groups(batch.rewards, G).tolist()
            kept.append(batch.select_groups([i for i, z in enumerate(flat) if not z], G))
            dropped.append(batch.select_groups([i for i, z in enumerate(flat) if z], G))
            short = torch.tensor(float(sum(len(b.prompt_ids) for b in kept) < B), device=self.acc.device)
            if self.acc.num_processes > 1:
                short = self.acc.reduce(short, "sum")
            if short.item() == 0 or rounds == cfg.dynamic_sampling_max_rounds:
                break
            rounds += 1
            rows = [self.train_dataset[i] for i in self.sampler.next()]  # every process advances the data order
            if sum(len(b.prompt_ids) for b in kept) < B:
                batch = self._generate(rows, beta_loss)
                times.update(batch.info["times"])
            else:  # full already: no sampling, only the other processes' round
                batch = batch.select_groups([], G)
        good = RolloutBatch.concat([b for b in kept if len(b.prompt_ids)] or kept[:1], self.tok.pad_token_id)
        n_good = len(good.prompt_ids)
        filled = max(0, B - n_good)
        parts = [good.select_groups(list(range(min(B, n_good))), G)]
        if filled:
            spare = RolloutBatch.concat([b for b in dropped if len(b.prompt_ids)], self.tok.pad_token_id)
            parts.append(spare.select_groups(list(range(filled)), G))
        out = RolloutBatch.concat(parts, self.tok.pad_token_id)
        out.info.update(times=dict(times), dynamic_sampling_rounds=rounds, dynamic_sampling_filled_groups=filled,
                        dynamic_sampling_dropped_groups=sum(len(b.prompt_ids) for b in dropped))
        return out

    def advantages(self, rewards: Tensor) -> Tensor:
        """Step 5: this process's advantages (N,) from its rewards (N,), computed over the GLOBAL batch, so that
        batch statistics (scale_rewards="batch", advantage="reinforce") are the same under any process count."""
        cfg = self.cfg
        return self._local(objectives.sequence_advantages(self._global(rewards), cfg.num_generations, cfg.advantage,
                                                          cfg.scale_rewards))

    def token_advantages(self, batch: RolloutBatch, scores: Tensor, kl: Tensor | None,
                         beta: float) -> tuple[Tensor, Tensor | None]:
        """Step 5 of the per-token estimators: this process's advantages (N, C) (and, for gae, the returns its critic
        regresses on) from its scores (N,), per-token KL (N, C) and the critic's values batch.values, computed over
        the GLOBAL batch (whitening statistics of every process's tokens)."""
        cfg, C = self.cfg, batch.completion_ids.shape[1]
        g = lambda x: None if x is None else self._global_tokens(x)  # noqa: E731
        adv, returns = objectives.token_advantages(
            self._global(scores), g(batch.completion_mask), cfg.advantage, cfg.num_generations, g(kl), beta,
            cfg.gamma, cfg.lam, g(batch.values), g(batch.loss_mask))
        return self._local(adv)[:, :C], None if returns is None else self._local(returns)[:, :C]

    def optimize(self, batch: RolloutBatch) -> dict:
        """Step 6: num_iterations passes over the batch, each ONE optimizer step with the gradient accumulated
        exactly over micro-batches, then (advantage=gae) one pass of the critic; returns statistics of the first
        pass (token means over all processes). `batch` is not modified."""
        cfg, acc = self.cfg, self.acc
        if cfg.optimizer != "adamw":  # TRPO / natural policy gradient
            from .trust_region import trust_region_update
            stats = trust_region_update(self, batch)
            if self.critic is not None:
                stats.update(self.critic.update(batch))
                stats["skipped_updates"] += stats["critic/skipped_updates"]
            return stats
        mbs = self._micro_batches(len(batch))
        agg = self._loss_normalizers(batch)
        old: list[Tensor] = []  # log pi_theta_old per micro-batch: the first pass's log-probs, detached
        per_token: list[dict] = []  # the first pass's per-token statistics per micro-batch
        stats: dict[str, float] = {}
        skipped = 0
        for it in range(cfg.num_iterations):
            loss_sum = 0.0
            for j, sl in enumerate(mbs):
                with engines.accumulate(acc, self.policy, j, len(mbs)):  # one optimizer step under every engine
                    try:
                        logp, ent = self._logp_of(self.policy, batch, sl)
                    except RuntimeError as e:
                        raise (out_of_memory_hint(e, "training") or e) from e
                    if it == 0:  # no update yet: the current policy IS pi_theta_old (ratio exactly 1)
                        old.append(logp.detach())
                    ref = batch.ref_logp[sl] if batch.ref_logp is not None else None
                    loss, s = objectives.grpo_loss(
                        logp, old[j], ref, batch.advantages[sl], batch.loss_mask[sl], batch.beta_loss,
                        cfg.clip_low, cfg.clip_high, cfg.ratio_level, cfg.kl_estimator, kl_gradient=cfg.kl_gradient,
                        entropy=ent, entropy_coef=cfg.entropy_coef, **agg)
                    engines.backward(acc, loss)
                loss_sum += loss.item()
                if it == 0:
                    if ref is not None and "kl" not in s:  # KL in the reward: its value, for logs and controller
                        s["kl"] = objectives.kl_estimate(old[j], ref, cfg.kl_estimator)
                    per_token.append(dict(s, entropy=ent.detach()))
            grad_norm = self._clip_and_check()
            if grad_norm is None or not math.isfinite(loss_sum):
                skipped += 1  # a non-finite loss or gradient: no update (the step counts toward the stop rule)
            else:
                self.opt.step()
                self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            if it == 0:
                stats = self._token_means({k: torch.cat([s[k] for s in per_token]) for k in per_token[0]},
                                          batch.loss_mask)
                stats.update(clip_frac_low=stats.pop("clipped_low"), clip_frac_high=stats.pop("clipped_high"),
                             ratio_mean=stats.pop("ratio"))
                stats.update(loss=self._mean_over_processes(loss_sum),
                             grad_norm=grad_norm if grad_norm is not None else float("nan"))
            if self.critic is not None:  # the value model's own pass (its own loss and optimizer)
                critic_stats = self.critic.update(batch)
                skipped += critic_stats["critic/skipped_updates"]
                if it == 0:
                    stats.update(critic_stats)
        stats["skipped_updates"] = skipped
        return stats

    def _loss_normalizers(self, batch: RolloutBatch) -> dict:
        """`objectives.aggregate` keywords for cfg.loss_type with normalizers of the WHOLE generation batch, so that
        micro-batch losses sum to the full-batch loss; a global token count is averaged over processes because
        DDP averages their gradients."""
        loss_type, acc = objectives.LOSS_TYPES[self.cfg.loss_type], self.acc
        n_tokens = batch.loss_mask.sum().float()
        if loss_type.global_token_count and acc.num_processes > 1:
            n_tokens = acc.reduce(n_tokens, "sum") / acc.num_processes
        return dict(mode=loss_type.mode, num_tokens=n_tokens.clamp(min=1), num_seqs=len(batch),
                    max_len=self.cfg.max_new_tokens)

    def _token_means(self, per_token: dict[str, Tensor], mask: Tensor) -> dict[str, float]:
        """Token means over the batch of every process of per-token statistics, each (N, C) like `mask`."""
        keys = list(per_token)
        m = mask.float()
        sums = torch.stack([(per_token[k].float() * m).sum() for k in keys] + [m.sum()])
        if self.acc.num_processes > 1:
            sums = self.acc.reduce(sums, "sum")
        return {k: (total / sums[-1].clamp(min=1)).item() for k, total in zip(keys, sums[:-1])}

    def _mean_over_processes(self, x: float) -> float:
        t = torch.tensor(float(x), device=self.acc.device)
        return (self.acc.reduce(t, "mean") if self.acc.num_processes > 1 else t).item()

    def _clip_and_check(self) -> float | None:
        """Clip the gradient norm; None (skip the update) when it is not finite."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        norm = float(self.acc.clip_grad_norm_(params, max_norm))
        return norm if math.isfinite(norm) else None

    def step(self) -> tuple[dict, RolloutBatch]:
        """One training step: rollout -> optimize -> KL controller -> metrics. Returns (metrics, batch)."""
        t0 = time.perf_counter()
        rows = [self.train_dataset[i] for i in self.sampler.next()]
        batch = self.rollout(rows)
        t_rollout = time.perf_counter() - t0
        stats = self.optimize(batch)
        stats["optimize_time"] = time.perf_counter() - t0 - t_rollout
        self.step_count += 1
        if stats["skipped_updates"]:
            self.nonfinite_in_a_row += 1
            if self.nonfinite_in_a_row >= self.cfg.max_nonfinite_steps:
                raise FloatingPointError(
                    f"stopping: {self.nonfinite_in_a_row} consecutive steps had a non-finite loss or gradient "
                    f"(updates were skipped; the last good checkpoint is kept in {self.cfg.output_dir}); lower "
                    f"learning_rate or check the reward functions")
        else:
            self.nonfinite_in_a_row = 0
        if "kl" in stats:  # the KL this step measured sets the next step's beta (a fixed controller ignores it)
            stats["beta"] = self.kl_ctl.beta  # the beta this step used
            self.kl_ctl.update(stats["kl"], n_steps=len(batch) * self.acc.num_processes)
        return self._metrics(batch, stats, time.perf_counter() - t0, t_rollout), batch

    # ------------------------------------------------------------------ metrics and logs
    def _metrics(self, batch: RolloutBatch, stats: dict, step_time: float, rollout_time: float) -> dict:
        G = self.cfg.num_generations
        g = lambda x: self._global(x.float().to(self.acc.device))  # noqa: E731  (all processes' values)
        rewards = g(batch.rewards)
        if batch.advantages.dim() == 1:
            adv = g(batch.advantages)
        else:  # per token: the values at every process's completion tokens
            adv = self._global_tokens(batch.advantages)[self._global_tokens(batch.completion_mask).bool()]
        lengths = g(batch.completion_mask.sum(-1))
        m = {"reward": rewards.mean().item(), "reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0}
        for name, v in batch.info["per_func"].items():
            v = g(v)
            ok = v[~torch.isnan(v)]
            m[f"rewards/{name}"] = ok.mean().item() if ok.numel() else float("nan")
            m[f"rewards/{name}_std"] = ok.std().item() if ok.numel() > 1 else 0.0
        m["frac_zero_std_groups"] = g(objectives.zero_std_groups(batch.rewards, G)).mean().item()
        if "dynamic_sampling_rounds" in batch.info:
            counts = g(torch.tensor([batch.info["dynamic_sampling_dropped_groups"],
                                     batch.info["dynamic_sampling_filled_groups"]])[None])[:, :].sum(0)
            m.update({"dynamic_sampling/rounds": batch.info["dynamic_sampling_rounds"],
                      "dynamic_sampling/dropped_groups": counts[0].item(),
                      "dynamic_sampling/filled_groups": counts[1].item()})
        m.update({"advantages/mean": adv.mean().item(), "advantages/std": adv.std().item() if adv.numel() > 1 else 0.0,
                  "advantages/min": adv.min().item(), "advantages/max": adv.max().item()})
        m.update({k: stats[k] for k in ("loss", "clip_frac_low", "clip_frac_high", "entropy", "grad_norm", "kl",
                                        "beta") if k in stats})
        m.update({k: v for k, v in stats.items() if k.startswith(("trust_region/", "critic/"))})
        m.update({"completion_length": lengths.mean().item(), "completion_length_max": lengths.max().item(),
                  "truncated_frac": g(batch.info["truncated"]).mean().item(),
                  "tokens_per_s": lengths.sum().item() / step_time, "step_time": step_time,
                  "gen_time": rollout_time, "sample_time": batch.info["sample_time"],
                  "optimize_time": stats["optimize_time"], "learning_rate": self.sched.get_last_lr()[0],
                  "skipped_updates": stats["skipped_updates"]})
        m.update({f"time/{k}": v for k, v in batch.info["times"].items()})  # this process's phases of gen_time
        return m

    def _log_completions(self, batch: RolloutBatch, step: int) -> None:
        """This step's completions (every process's) to completions.jsonl, and a table of them to the trackers."""
        adv = batch.advantages
        if adv.dim() == 2:  # per token: the completion's mean advantage
            m = batch.completion_mask.to(adv.dtype)
            adv = (adv * m).sum(-1) / m.sum(-1).clamp(min=1)
        rows = [{"step": step, "prompt": batch.info["prompts"][int(gi)], "completion": t,
                 "rewards": {k: (None if math.isnan(v[i]) else float(v[i])) for k, v in batch.info["per_func"].items()},
                 "reward": float(batch.rewards[i]), "advantage": float(adv[i])}
                for i, (t, gi) in enumerate(zip(batch.info["texts"], batch.group_index))]
        rows = self.acc.gather_for_metrics(rows, use_gather_object=True) if self.acc.num_processes > 1 else rows
        if self.acc.is_main_process:
            with open(os.path.join(self.cfg.output_dir, "completions.jsonl"), "a") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
            tracking.log_completions_table(self.acc, rows, step)

    # ------------------------------------------------------------------ the loop
    def train(self, resume_from_checkpoint: str | bool | None = None) -> list[dict]:
        """Run steps until max_steps, logging and checkpointing; Ctrl-C finishes the current step, saves a
        checkpoint and raises KeyboardInterrupt (a second Ctrl-C stops at once).

        resume_from_checkpoint (TRL's argument): True for the latest checkpoint in output_dir, or a checkpoint's
        path; the same as config.resume, with the same checks. Without it (and without config.resume) an
        output_dir already holding a run is refused unless config.overwrite_output_dir."""
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.acc
        if resume_from_checkpoint is not None:
            self._resume = ckpt.resume_request(cfg, resume_from_checkpoint, self.began, self._resume)
        # what can refuse the run comes before anything is written
        if cfg.push_to_hub and self.hub_repo_id is None:
            self.check_push_to_hub()
        if cfg.eval_steps:
            self.eval_dataset = load_eval_dataset(cfg, self.tok, self.eval_dataset)
        os.makedirs(cfg.output_dir, exist_ok=True)
        if self.began:  # a second train() (a larger max_steps, say) goes on from where this trainer is
            pass
        elif self._resume is not None:
            path, changed = self._resume
            ckpt.load_checkpoint(self, path)
            self._apply_changed_settings(path, changed)
        elif acc.is_main_process:
            ckpt.prepare_fresh_output_dir(cfg.output_dir, cfg.overwrite_output_dir)
        self.began = True
        if acc.is_main_process:
            ckpt.write_config(cfg)
            for name in ("metrics.jsonl", "completions.jsonl"):  # drop what a killed run logged past its checkpoint
                truncate_jsonl(os.path.join(cfg.output_dir, name), self.step_count)
            self.logger = RunLogger(cfg.output_dir, tensorboard=False, append=True)  # metrics.jsonl for llmrl-plot
        tracking.init_trackers(acc, cfg)  # TensorBoard (default), wandb, ... through accelerate
        history = []
        bar = tqdm(total=cfg.max_steps, initial=self.step_count, desc="grpo", unit="step",
                   disable=not (acc.is_main_process and cfg.progress_bar))
        with _StopOnInterrupt(acc, bar) as interrupt:
            while self.step_count < cfg.max_steps:
                metrics, batch = self.step()
                if cfg.eval_steps and (self.step_count % cfg.eval_steps == 0 or self.step_count == cfg.max_steps):
                    metrics.update(self._evaluate_during_training())
                history.append(metrics)
                self._log_step(metrics, batch, bar)
                stop = interrupt.requested()
                if stop or (cfg.save_steps and self.step_count % cfg.save_steps == 0) or \
                        self.step_count == cfg.max_steps:
                    ckpt.save_checkpoint(self)
                if stop:
                    bar.close()
                    if acc.is_main_process:
                        print(f"interrupted: checkpoint-{self.step_count} saved in {cfg.output_dir}; continue with "
                              f"--resume latest --output_dir {cfg.output_dir} (the run's other settings are "
                              f"kept)", flush=True)
                    raise KeyboardInterrupt
        bar.close()
        if acc.is_main_process and self.logger is not None:
            self.logger.close()
        for tracker in acc.trackers:  # not acc.end_training(): it also ends the process group, which the
            tracker.finish()          # evaluation and saving after training still need
        return history

    def _log_step(self, metrics: dict, batch: RolloutBatch, bar) -> None:
        cfg, acc = self.cfg, self.acc
        evaluation = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        logging_step = self.step_count % cfg.logging_steps == 0
        if logging_step or evaluation:  # eval metrics are logged at their step whatever logging_steps is
            logged = metrics if logging_step else evaluation
            if acc.is_main_process:
                self.logger.log(logged, self.step_count)
            acc.log(logged, step=self.step_count)
        if logging_step and cfg.log_completions:
            self._log_completions(batch, self.step_count)
        if evaluation and acc.is_main_process:
            bar.write(f"step {self.step_count}: " + ", ".join(f"{k} {v:.3f}" for k, v in evaluation.items()))
        if metrics["frac_zero_std_groups"] == 1.0 and acc.is_main_process:
            bar.write(f"step {self.step_count}: every group's completions got the same reward: no learning "
                      f"signal this step (raise num_generations or temperature, or use a denser reward)")
        bar.update(1)
        postfix = {"reward": f"{metrics['reward']:.3f}", "tok/s": f"{metrics['tokens_per_s']:.0f}"}
        if "kl" in metrics:
            postfix["kl"] = f"{metrics['kl']:.4f}"
        bar.set_postfix(postfix)

    def _apply_changed_settings(self, path: str, changed: dict) -> None:
        """Settings given anew on resume take effect (the checkpoint restored the old optimizer and KL state)."""
        cfg = self.cfg
        if "learning_rate" in changed:
            ckpt.apply_learning_rate(self.opt, self.sched, cfg.learning_rate)
        if "critic_learning_rate" in changed and self.critic is not None:
            ckpt.apply_learning_rate(self.critic.opt, self.critic.sched, cfg.critic_learning_rate)
        if "beta" in changed:
            self.kl_ctl.beta = cfg.beta
        if changed and self.acc.is_main_process:
            print(f"resuming {path} with: " + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()),
                  flush=True)

    # ------------------------------------------------------------------ evaluation and the final model
    def evaluate(self, dataset=None, n: int | None = None, reward: str | None = None, desc: str = "eval",
                 leave: bool = True) -> dict:
        """Greedy accuracy (mean of the reward function `reward`, default cfg.eval_reward; 1 = correct) and pass@k
        (cfg.eval_pass_k) on the first n (default cfg.eval_examples) rows of `dataset` (default the eval set);
        the processes split the rows and their counts are summed (llmrl.llm.evaluation.evaluate_policy)."""
        cfg = self.cfg
        if dataset is None:
            if self.eval_dataset is None:
                self.eval_dataset = load_eval_dataset(cfg, self.tok)
            dataset = self.eval_dataset
        try:
            with self._autocast(), engines.full_parameters(self.acc, self.policy):
                return evaluate_policy(self.model, self.tok, dataset, cfg.eval_examples if n is None else n, cfg,
                                       self.eos_ids, self.acc, reward, desc, leave)
        except RuntimeError as e:
            raise (out_of_memory_hint(e, "evaluation") or e) from e

    def _evaluate_during_training(self) -> dict:
        """eval/accuracy and eval/pass@k on the eval set at this step (remembered for best-checkpoint tracking)."""
        res = self.evaluate(desc=f"eval at step {self.step_count}", leave=False)
        metrics = {f"eval/{k}": v for k, v in res.items() if k == "accuracy" or k.startswith("pass@")}
        self.last_eval = {"step": self.step_count, **metrics}
        return metrics

    def save_final(self, merged: bool = False) -> str:
        """Save the trained adapter (peft format) or model, with the tokenizer and a model card (README.md), to
        output_dir/final; with `merged`, also the model with the adapter folded into its weights to
        output_dir/final-merged. With cfg.push_to_hub, upload the adapter (the merged model with `merged`)."""
        cfg, acc, out = self.cfg, self.acc, os.path.join(self.cfg.output_dir, "final")
        if cfg.push_to_hub and self.hub_repo_id is None:
            self.check_push_to_hub()
        merged = merged and self.is_peft
        pushed = out + "-merged" if merged else out
        state = engines.full_state_dict(acc, self.policy)  # sharded weights: gathered (all processes take part)
        if acc.is_main_process:
            for d in (out, out + "-merged") if merged else (out,):  # an earlier `llmrl eval` there: the old policy
                retire_eval_results(d, f"before-step-{self.step_count}")
            save_policy(self.model, out, state)
            self.tok.save_pretrained(out)
            hub.write_model_card(out, cfg, list(self.reward_funcs), "adapter" if self.is_peft else "model",
                                 location=None if merged else self.hub_repo_id)
            if merged:
                plain = self.model if state is None else engines.unsharded_copy(acc, self.model, state)
                save_merged(plain, out + "-merged")
                self.tok.save_pretrained(out + "-merged")
                hub.write_model_card(out + "-merged", cfg, list(self.reward_funcs), "merged", location=self.hub_repo_id)
            if cfg.push_to_hub:
                url = hub.push_folder(pushed, self.hub_repo_id, cfg.hub_private_repo)
                print(f"pushed {pushed} to {url}", flush=True)
        acc.wait_for_everyone()
        return out

    def save_model(self, output_dir: str | None = None) -> str:
        """Save the policy (adapter in peft format, or the full model) and the tokenizer to `output_dir` (default:
        config.output_dir), as TRL's `trainer.save_model` does."""
        out = output_dir or self.cfg.output_dir
        state = engines.full_state_dict(self.acc, self.policy)  # sharded weights: gathered (all processes take part)
        if self.acc.is_main_process:
            save_policy(self.model, out, state)
            self.tok.save_pretrained(out)
        self.acc.wait_for_everyone()
        return out

    def check_push_to_hub(self) -> str:
        """The hub repository push_to_hub will upload to; a one-line SetupError now, before any training, when
        there is no token, the hub is not reachable or refuses the token (llmrl.llm.hub.check_hub_access)."""
        self.hub_repo_id = hub.check_hub_access(self.cfg.hub_model_id, self.cfg.output_dir)
        return self.hub_repo_id

    def close(self):
        """Tear down the process group (multi-process runs) once all collective work is done
        (utils.end_process_group); the trainer cannot train after it."""
        end_process_group(self.acc, self)


class _StopOnInterrupt:
    """Ctrl-C (SIGINT) during training asks to stop after the current step (the caller saves a checkpoint there);
    a second one raises KeyboardInterrupt at once. Under several processes the request is agreed on by all of them
    after each step, so they stop at the same step. A single process treats SIGTERM (a job scheduler's warning
    before it kills) the same way; under several, torchrun sends SIGTERM to the others when one fails, and they
    must stop at once rather than wait for a step the failed one will never agree on."""

    def __init__(self, acc, bar):
        self.acc, self.bar, self.flag, self.previous = acc, bar, False, {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in ("SIGINT", "SIGTERM") if self.acc.num_processes == 1 else ("SIGINT",):
                self.previous[name] = signal.signal(getattr(signal, name), self._handler)
        return self

    def _handler(self, signum, frame):
        import signal

        if self.flag:  # the second signal
            self._restore()
            raise KeyboardInterrupt
        self.flag = True
        if self.acc.is_main_process:
            what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            self.bar.write(f"{what}: finishing this step, then saving a checkpoint (Ctrl-C again to stop now)")

    def _restore(self):
        import signal

        for name, handler in self.previous.items():
            signal.signal(getattr(signal, name), handler)
        self.previous = {}

    def requested(self) -> bool:
        if self.acc.num_processes == 1:
            return self.flag
        flag = torch.tensor(float(self.flag), device=self.acc.device)
        return bool(self.acc.reduce(flag, "sum").item() > 0)

    def __exit__(self, *exc):
        self._restore()
        return False


def _trl_arguments(config, args, model, tokenizer, processing_class, peft_config):
    """(config, model, tokenizer) from llmrl's or TRL's way of passing them; contradictions are refused."""
    if args is not None:
        if config is not None:
            raise ValueError("GRPOTrainer: pass the config once, as `config` or as TRL's `args`")
        config = args
    config = GRPOConfig() if config is None else config
    if processing_class is not None:
        if tokenizer is not None:
            raise ValueError("GRPOTrainer: pass the tokenizer once, as `tokenizer` or as TRL's `processing_class`")
        tokenizer = processing_class
    if isinstance(model, str):  # a hub id or path, as TRL takes it
        if config.model not in ("bundled", model):
            raise ValueError(f"GRPOTrainer: model={model!r} contradicts config.model={config.model!r}; give one")
        config.model, model = model, None
    if peft_config is not None:
        if config.lora_r is not None or config.adapter:
            raise ValueError("GRPOTrainer: peft_config and the config's lora_r/adapter both describe the adapter; "
                             "give one of them")
        if model is not None and hasattr(model, "peft_config"):
            raise ValueError("GRPOTrainer: the model already has a peft adapter; drop peft_config")
    return config, model, tokenizer


def _tokenizer_of(model):
    """The tokenizer saved with a model object (TRL loads it from the model's name or path the same way)."""
    from .model import load_tokenizer

    name = getattr(getattr(model, "config", None), "_name_or_path", "")
    if not name or not (os.path.isdir(name) or "/" in name):
        raise ValueError("GRPOTrainer: pass the tokenizer with the model (tokenizer= or TRL's processing_class=): "
                         "the model does not say where its tokenizer is")
    return load_tokenizer(name)


def save_policy(model, path: str, state_dict: dict | None = None) -> None:
    """The trained policy in plain peft / HF format: only the trained adapter (not the frozen reference copy);
    `state_dict` is the model's full state dict where its own is sharded (engines.full_state_dict)."""
    if hasattr(model, "peft_config"):
        model.save_pretrained(path, selected_adapters=[model.active_adapter], state_dict=state_dict)
    else:
        model.save_pretrained(path, state_dict=state_dict)


def merged_copy(model):
    """A copy of the policy as a plain transformers model: its trained adapter folded into its weights (a model
    without an adapter: a plain copy)."""
    import copy

    from .reference import REFERENCE_ADAPTER

    full = copy.deepcopy(model)
    if not hasattr(full, "peft_config"):
        return full
    if REFERENCE_ADAPTER in full.peft_config:
        full.delete_adapter(REFERENCE_ADAPTER)
    return full.merge_and_unload()


def save_merged(model, path: str) -> None:
    """The model with the trained adapter folded into its weights (loadable without peft)."""
    merged_copy(model).save_pretrained(path)
