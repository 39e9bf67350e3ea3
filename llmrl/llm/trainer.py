"""GRPOTrainer: group-relative policy optimization (and Dr. GRPO / RLOO / REINFORCE) for Hugging Face causal LMs.

One step, top to bottom (`GRPOTrainer.step`):
  1. take B prompts; 2. sample G completions each; 3. score them with the reward functions;
  4. group advantages; 5. reference (and, for mu > 1, old) log-probs; 6. mu passes of clipped-surrogate updates
  over micro-batches; 7. log. The math is llmrl.objectives; accelerate handles devices, processes and trackers.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
import os
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .. import objectives as O
from ..utils import RunLogger, config_dict, seed_everything, truncate_jsonl
from . import checkpoint as ckpt
from .config import GRPOConfig
from .data import check_columns, load_prompt_dataset, make_prompt
from .logprobs import completion_logprobs, completion_logprobs_naive
from .model import LoraSettings, load_policy
from .rewards import get_reward_functions, score_completions
from .sampling import check_logits_path, decode_completions, sample_completions, tokenize_prompts


@dataclass
class Rollout:
    """One generation batch on one process: B prompts, N = B*G completions, their rewards and advantages."""
    prompt_ids: Tensor          # (B, P) left-padded
    prompt_mask: Tensor         # (B, P)
    completion_ids: Tensor      # (N, C) right-padded
    completion_mask: Tensor     # (N, C), 1 up to and including EOS
    group_index: Tensor         # (N,) prompt row of each completion
    rewards: Tensor             # (N,) weighted total (KL-penalized when kl_in = "reward")
    advantages: Tensor          # (N,)
    ref_logp: Tensor | None = None
    old_logp: Tensor | None = None
    info: dict = field(default_factory=dict)  # texts and per-function rewards, for logs


class LogprobModel(nn.Module):
    """The policy as a module whose forward returns per-token log-probs of completions, so that DDP (which
    synchronizes gradients through its wrapped module's forward) sees the whole computation."""

    def __init__(self, model, temperature: float, chunk: int, shared_prefix: bool):
        super().__init__()
        self.model, self.temperature, self.chunk = model, temperature, chunk
        self.fn = completion_logprobs if shared_prefix else completion_logprobs_naive

    def forward(self, prompt_ids, prompt_mask, completion_ids, completion_mask, group_index):
        return self.fn(self.model, prompt_ids, prompt_mask, completion_ids, completion_mask, group_index,
                       self.temperature, self.chunk)


def resolve_dtype(name: str) -> torch.dtype:
    """'auto' -> bfloat16 where matmuls in bf16 are fast (CUDA with bf16, CPUs with AVX512_BF16/AMX), else fp32."""
    if name != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    try:
        fast = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        fast = False
    return torch.bfloat16 if fast else torch.float32


def required_columns(reward_funcs: dict) -> dict[str, str]:
    """Dataset columns each reward function needs: its keyword parameters without a default."""
    need = {}
    for name, fn in reward_funcs.items():
        for p in inspect.signature(fn).parameters.values():
            if p.name not in ("prompts", "completions") and p.default is p.empty and \
                    p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                need.setdefault(p.name, f"reward function {name!r}")
    return need


class PromptSampler:
    """Seeded order over the dataset, reshuffled each epoch; each of the N processes takes its own B prompts of
    every global batch. Its state (epoch, position) goes into checkpoints."""

    def __init__(self, size: int, per_process: int, num_processes: int, rank: int, seed: int):
        self.size, self.B, self.N, self.rank, self.seed = size, per_process, num_processes, rank, seed
        if size < per_process * num_processes:
            raise ValueError(f"dataset has {size} rows, fewer than one step's {per_process * num_processes} prompts")
        self.epoch, self.pos = 0, 0
        self._order = self._perm()

    def _perm(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def next(self) -> list[int]:
        if self.pos + self.B * self.N > self.size:  # drop the incomplete tail batch of the epoch
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._perm()
        start = self.pos + self.rank * self.B
        self.pos += self.B * self.N
        return self._order[start:start + self.B]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.pos = s["epoch"], s["pos"]
        self._order = self._perm()


def out_of_memory_hint(err: BaseException, phase: str) -> RuntimeError | None:
    """A clearer error for running out of memory, naming the knob to lower for the phase that failed."""
    text = str(err).lower()
    if not (isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text
            or "not enough memory" in text):
        return None
    knob = {"generation": "per_device_batch_size, num_generations or max_new_tokens",
            "training": "micro_batch_size (gradient accumulation keeps the update identical) or max_new_tokens",
            "evaluation": "eval_batch_size"}[phase]
    return RuntimeError(f"out of memory during {phase}: lower {knob}")


class GRPOTrainer:
    def __init__(self, config: GRPOConfig, model=None, tokenizer=None, reward_funcs=None, train_dataset=None,
                 eval_dataset=None, accelerator=None):
        from accelerate import Accelerator
        from transformers import get_scheduler

        cfg = self.cfg = config
        report_to = [t for t in cfg.report_to if t != "none"]
        # Without a GPU, accelerate only runs several processes (torchrun, DDP over gloo) when told to use the CPU.
        no_gpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())
        self.acc = accelerator or Accelerator(cpu=cfg.use_cpu or no_gpu, log_with=report_to or None,
                                              project_dir=cfg.output_dir)
        seed_everything(cfg.seed)
        self.dtype = resolve_dtype(cfg.dtype)
        # --- model: LoRA (reference = adapter disabled) or full fine-tuning (reference = frozen copy) ---
        if model is None:
            lora = None if cfg.lora_r == 0 else LoraSettings(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout,
                                                            _targets(cfg.lora_target_modules))
            # Full fine-tuning keeps fp32 master weights and trains under bf16 autocast instead.
            model, tokenizer = load_policy(cfg.model, lora, self.dtype if lora else torch.float32)
        if tokenizer is None:
            raise ValueError("GRPOTrainer: pass the tokenizer together with the model")
        self.tok = tokenizer
        self.is_peft = hasattr(model, "disable_adapter")
        self.ref_model = None
        if not self.is_peft and cfg.beta > 0:
            self.ref_model = copy.deepcopy(model).requires_grad_(False).eval()
        self.autocast_dtype = torch.bfloat16 if (self.dtype == torch.bfloat16 and not self.is_peft) else None
        self.eos_ids = sorted({i for i in [tokenizer.eos_token_id, model.config.eos_token_id,
                                           *(_as_list(getattr(model.generation_config, "eos_token_id", None)))]
                               if i is not None})
        # --- rewards and data ---
        if reward_funcs is None:
            reward_funcs = get_reward_functions(cfg.reward_funcs)
        self.reward_funcs = reward_funcs if isinstance(reward_funcs, dict) else {
            getattr(f, "__name__", f"reward_{i}"): f for i, f in enumerate(reward_funcs)}
        if cfg.reward_weights is not None and len(cfg.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"GRPOConfig: reward_weights has {len(cfg.reward_weights)} values for "
                             f"{len(self.reward_funcs)} reward functions")
        if train_dataset is None:
            train_dataset = load_prompt_dataset(cfg.dataset, cfg.dataset_split, cfg.dataset_config)
        needed = required_columns(self.reward_funcs)
        if "prompt" not in train_dataset.column_names:
            needed.setdefault(cfg.prompt_column, "the prompt (prompt_column)")
        check_columns(train_dataset, list(needed), needed)
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.sampler = PromptSampler(len(train_dataset), cfg.prompts_per_step, self.acc.num_processes,
                                     self.acc.process_index, cfg.seed)
        self.gen = torch.Generator(device=self.acc.device).manual_seed(cfg.seed * 1000 + self.acc.process_index)
        # --- optimization ---
        model.to(self.acc.device)
        check_logits_path(model, cfg.sampler, cfg.shared_prefix)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("GRPOTrainer: the model has no trainable parameters")
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                weight_decay=cfg.weight_decay)
        sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=cfg.max_steps * cfg.num_iterations)
        self.policy, self.opt, self.sched = self.acc.prepare(
            LogprobModel(model, cfg.temperature, cfg.logprob_chunk, cfg.shared_prefix), opt, sched)
        self.model = model  # the unwrapped policy (sampling, reference, saving)
        self.kl_ctl = {"fixed": lambda: O.FixedKLController(cfg.beta),
                       "adaptive": lambda: O.AdaptiveKLController(cfg.beta, cfg.kl_target),
                       "proportional": lambda: O.ProportionalKLController(cfg.beta, cfg.kl_target,
                                                                           cfg.kl_horizon)}[cfg.kl_controller]()
        self.step_count, self.nonfinite_in_a_row = 0, 0
        self.logger = None

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.acc.device.type, dtype=self.autocast_dtype)

    def _tokenize_prompts(self, prompts: list) -> tuple[Tensor, Tensor]:
        return tokenize_prompts(self.tok, prompts, self.acc.device)

    def _micro_batches(self, n: int):
        return [slice(s, min(s + self.cfg.micro_batch_size, n)) for s in range(0, n, self.cfg.micro_batch_size)]

    def _logp_of(self, module, r: Rollout, sl: slice) -> tuple[Tensor, Tensor]:
        """Log-probs and entropies of the completions in slice `sl`, with only the prompts they continue."""
        gi = r.group_index[sl]
        first, last = int(gi[0]), int(gi[-1]) + 1
        with self._autocast():
            return module(r.prompt_ids[first:last], r.prompt_mask[first:last], r.completion_ids[sl],
                          r.completion_mask[sl], gi - first)

    @torch.no_grad()
    def _reference_logprobs(self, r: Rollout) -> Tensor:
        """log pi_ref of the sampled tokens: the same model with its LoRA adapter disabled (no second copy), or
        the frozen copy under full fine-tuning."""
        ref = LogprobModel(self.ref_model or self.model, self.cfg.temperature, self.cfg.logprob_chunk,
                           self.cfg.shared_prefix)
        ctx = self.model.disable_adapter() if self.is_peft else contextlib.nullcontext()
        with ctx:
            return torch.cat([self._logp_of(ref, r, sl)[0] for sl in self._micro_batches(len(r.group_index))])

    # ------------------------------------------------------------------ one step
    @torch.no_grad()
    def generate(self, rows: list[dict]) -> Rollout:
        """Steps 1-5: sample G completions per prompt, score, compute advantages (and reference log-probs)."""
        cfg, G = self.cfg, self.cfg.num_generations
        t0 = time.perf_counter()
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
        rep_prompts = [p for p in prompts for _ in range(G)]
        total, per_func = score_completions(self.reward_funcs, cfg.reward_weights, rep_prompts, texts, columns)
        t_sampled = time.perf_counter()
        r = Rollout(prompt_ids, prompt_mask, comp.ids, comp.mask,
                    torch.arange(len(rows), device=prompt_ids.device).repeat_interleave(G),
                    total.to(prompt_ids.device), torch.zeros(len(texts), device=prompt_ids.device),
                    info={"prompts": prompts, "texts": texts, "per_func": per_func, "truncated": comp.truncated,
                          "raw_rewards": total})
        beta = self.kl_ctl.beta
        if beta > 0:
            r.ref_logp = self._reference_logprobs(r)
        r.info["sample_time"], r.info["after_sample_time"] = t_sampled - t0, time.perf_counter() - t_sampled
        if beta > 0 and cfg.kl_in == "reward":
            # PPO-RLHF style: r_i <- r_i - beta * sum_t KL_t, with log pi taken under the current policy
            logp = torch.cat([self._logp_of(self.policy, r, sl)[0] for sl in self._micro_batches(len(texts))])
            kl = O.kl_estimate(logp, r.ref_logp, cfg.kl_estimator) * r.completion_mask
            r.rewards = r.rewards - beta * kl.sum(-1)
            r.info["kl_reward"] = kl.sum() / r.completion_mask.sum().clamp(min=1)
        # 4. advantages (all from llmrl.objectives)
        if cfg.advantage == "grpo":
            r.advantages = O.group_advantages(r.rewards, G, cfg.scale_rewards)
        elif cfg.advantage == "dr_grpo":
            r.advantages = O.group_advantages(r.rewards, G, "none")
        elif cfg.advantage == "rloo":
            r.advantages = O.leave_one_out_advantages(r.rewards, G)
        else:
            r.advantages = r.rewards - O.constant_baseline(r.rewards[:, None])[:, 0]  # batch-mean baseline
        return r

    def optimize(self, r: Rollout) -> dict:
        """Step 6: num_iterations passes, each one optimizer step over all micro-batches (exact accumulation)."""
        cfg, acc = self.cfg, self.acc
        N = len(r.group_index)
        mbs = self._micro_batches(N)
        # Normalizers of the WHOLE generation batch, so that micro-batch losses sum to the full-batch loss;
        # dapo normalizes by the token count of all processes (DDP then averages the N processes' gradients).
        n_tokens = r.completion_mask.sum().float()
        if cfg.loss_type == "dapo" and acc.num_processes > 1:
            n_tokens = acc.reduce(n_tokens, "sum") / acc.num_processes
        agg = dict(mode=cfg.aggregation, num_tokens=n_tokens.clamp(min=1), num_seqs=N, max_len=cfg.max_new_tokens)
        beta = self.kl_ctl.beta if cfg.kl_in == "loss" else 0.0
        old: list[Tensor] = []  # log pi_theta_old per micro-batch: the first pass's log-probs, detached
        stats: dict[str, float] = {}
        skipped = 0
        for it in range(cfg.num_iterations):
            sums = {"loss": 0.0, "clip_frac_low": 0.0, "clip_frac_high": 0.0, "kl": 0.0, "entropy": 0.0,
                    "ratio_mean": 0.0}
            for j, sl in enumerate(mbs):
                sync = acc.no_sync(self.policy) if j < len(mbs) - 1 else contextlib.nullcontext()
                with sync:
                    try:
                        logp, ent = self._logp_of(self.policy, r, sl)
                    except RuntimeError as e:
                        raise (out_of_memory_hint(e, "training") or e) from e
                    if it == 0:  # no update yet: the current policy IS pi_theta_old (ratio exactly 1)
                        old.append(logp.detach())
                    mask = r.completion_mask[sl]
                    ref = r.ref_logp[sl] if r.ref_logp is not None else None
                    loss, s = O.grpo_loss(logp, old[j], ref, r.advantages[sl], mask, beta, cfg.clip_low,
                                          cfg.clip_high, cfg.ratio_level, cfg.kl_estimator, **agg)
                    acc.backward(loss)
                sums["loss"] += loss.item()
                for k in ("clip_frac_low", "clip_frac_high", "kl", "ratio_mean"):
                    sums[k] += float(s.get(k, 0.0)) * mask.sum().item() / max(r.completion_mask.sum().item(), 1)
                sums["entropy"] += float((ent * mask).sum()) / max(r.completion_mask.sum().item(), 1)
            grad_norm = self._clip_and_check()
            if grad_norm is None or not math.isfinite(sums["loss"]):
                skipped += 1  # a non-finite loss or gradient: no update (the step counts toward the stop rule)
            else:
                self.opt.step()
                self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            if it == 0:
                stats = dict(sums, grad_norm=grad_norm if grad_norm is not None else float("nan"))
        r.old_logp = torch.cat(old)
        stats["skipped_updates"] = skipped
        return stats

    def _clip_and_check(self) -> float | None:
        """Clip the gradient norm; None (skip the update) when it is not finite."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        norm = float(self.acc.clip_grad_norm_(params, max_norm))
        return norm if math.isfinite(norm) else None

    def step(self) -> dict:
        """One training step: generate -> optimize -> metrics."""
        t0 = time.perf_counter()
        rows = [self.train_dataset[i] for i in self.sampler.next()]
        r = self.generate(rows)
        t_gen = time.perf_counter() - t0
        stats = self.optimize(r)
        stats["optimize_time"] = time.perf_counter() - t0 - t_gen
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
        metrics = self._metrics(r, stats, time.perf_counter() - t0, t_gen)
        if self.cfg.kl_controller != "fixed" and "kl" in metrics:
            self.kl_ctl.update(metrics["kl"], n_steps=len(r.group_index) * self.acc.num_processes)
        return metrics, r

    # ------------------------------------------------------------------ metrics and logs
    def _metrics(self, r: Rollout, stats: dict, step_time: float, gen_time: float) -> dict:
        acc, G = self.acc, self.cfg.num_generations
        g = lambda x: acc.gather(x.float().to(acc.device))  # noqa: E731  (all processes' values)
        rewards, adv = g(r.rewards), g(r.advantages)
        lengths = g(r.completion_mask.sum(-1))
        m = {"reward": rewards.mean().item(), "reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0}
        for name, v in r.info["per_func"].items():
            v = g(v)
            ok = v[~torch.isnan(v)]
            m[f"rewards/{name}"] = ok.mean().item() if ok.numel() else float("nan")
            m[f"rewards/{name}_std"] = ok.std().item() if ok.numel() > 1 else 0.0
        m["frac_zero_std_groups"] = g(O.zero_std_groups(r.rewards, G)).mean().item()
        m.update({"advantages/mean": adv.mean().item(), "advantages/std": adv.std().item() if adv.numel() > 1 else 0.0,
                  "advantages/min": adv.min().item(), "advantages/max": adv.max().item()})
        for k in ("loss", "clip_frac_low", "clip_frac_high", "entropy", "grad_norm"):
            m[k] = acc.reduce(torch.tensor(float(stats[k]), device=acc.device), "mean").item()
        if r.ref_logp is not None:
            m["kl"] = acc.reduce(torch.tensor(float(stats["kl"]) if self.cfg.kl_in == "loss" else
                                              float(r.info["kl_reward"]), device=acc.device), "mean").item()
            m["beta"] = self.kl_ctl.beta
        m.update({"completion_length": lengths.mean().item(), "completion_length_max": lengths.max().item(),
                  "truncated_frac": g(r.info["truncated"]).mean().item(),
                  "tokens_per_s": lengths.sum().item() / step_time, "step_time": step_time, "gen_time": gen_time,
                  "sample_time": r.info["sample_time"], "optimize_time": stats["optimize_time"],
                  "learning_rate": self.sched.get_last_lr()[0], "skipped_updates": stats["skipped_updates"]})
        return m

    def _log_completions(self, r: Rollout, step: int) -> None:
        rows = [{"step": step, "prompt": r.info["prompts"][int(gi)], "completion": t,
                 "rewards": {k: (None if math.isnan(v[i]) else float(v[i])) for k, v in r.info["per_func"].items()},
                 "reward": float(r.rewards[i]), "advantage": float(r.advantages[i])}
                for i, (t, gi) in enumerate(zip(r.info["texts"], r.group_index))]
        rows = self.acc.gather_for_metrics(rows, use_gather_object=True) if self.acc.num_processes > 1 else rows
        if self.acc.is_main_process:
            with open(os.path.join(self.cfg.output_dir, "completions.jsonl"), "a") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")

    # ------------------------------------------------------------------ the loop
    def train(self) -> list[dict]:
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.acc
        os.makedirs(cfg.output_dir, exist_ok=True)
        if cfg.resume:
            ckpt.load_checkpoint(self, ckpt.find_checkpoint(cfg.output_dir, cfg.resume))
        elif acc.is_main_process:
            ckpt.prepare_fresh_output_dir(cfg.output_dir, cfg.overwrite_output_dir)
        if acc.is_main_process:
            ckpt.write_config(cfg)
            for name in ("metrics.jsonl", "completions.jsonl"):  # drop what a killed run logged past its checkpoint
                truncate_jsonl(os.path.join(cfg.output_dir, name), self.step_count)
            self.logger = RunLogger(cfg.output_dir, tensorboard=False, append=True)  # metrics.jsonl for llmrl-plot
        if acc.log_with:  # TensorBoard (default), wandb, ... through accelerate's trackers
            acc.init_trackers("tb", config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                            for k, v in config_dict(cfg).items()})
        history = []
        bar = tqdm(total=cfg.max_steps, initial=self.step_count, disable=not acc.is_main_process, desc="grpo")
        while self.step_count < cfg.max_steps:
            metrics, r = self.step()
            history.append(metrics)
            if self.step_count % cfg.logging_steps == 0 and acc.is_main_process:
                self.logger.log(metrics, self.step_count)
            if self.step_count % cfg.logging_steps == 0:
                acc.log(metrics, step=self.step_count)
            if cfg.log_completions and self.step_count % cfg.logging_steps == 0:
                self._log_completions(r, self.step_count)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics.get('kl', 0):.4f}",
                            tok_s=f"{metrics['tokens_per_s']:.0f}")
            if (cfg.save_steps and self.step_count % cfg.save_steps == 0) or self.step_count == cfg.max_steps:
                ckpt.save_checkpoint(self)
        bar.close()
        if acc.is_main_process and self.logger is not None:
            self.logger.close()
        for tracker in acc.trackers:  # not acc.end_training(): it also ends the process group, which the
            tracker.finish()          # evaluation and saving after training still need
        return history

    # ------------------------------------------------------------------ evaluation and the final model
    def evaluate(self, dataset, n: int, reward: str = "gsm8k") -> dict:
        """Greedy accuracy (mean of the reward function `reward`, 1 = correct) on the first n rows of `dataset`;
        the processes split the rows and their counts are summed."""
        cfg, acc = self.cfg, self.acc
        rows = [dataset[i] for i in range(min(n, len(dataset)))][acc.process_index::acc.num_processes]
        self.model.eval()
        try:
            with self._autocast():
                res = greedy_eval(self.model, self.tok, rows, reward, cfg.prompt_column, cfg.system_prompt,
                                  cfg.max_new_tokens, cfg.eval_batch_size, self.eos_ids, cfg.sampler)
        except RuntimeError as e:
            raise (out_of_memory_hint(e, "evaluation") or e) from e
        self.model.train()
        counts = acc.reduce(torch.tensor([res["correct"], float(len(rows))], device=acc.device), "sum")
        return {"accuracy": (counts[0] / counts[1].clamp(min=1)).item(), "n": int(counts[1].item()),
                "samples": res["samples"]}

    def save_final(self, merged: bool = False) -> str:
        """Save the trained adapter (peft format) or model, with the tokenizer, to output_dir/final; with
        `merged`, also the model with the adapter folded into its weights to output_dir/final-merged."""
        acc, out = self.acc, os.path.join(self.cfg.output_dir, "final")
        if acc.is_main_process:
            self.model.save_pretrained(out)
            self.tok.save_pretrained(out)
            if merged and self.is_peft:
                full = copy.deepcopy(self.model).merge_and_unload()
                full.save_pretrained(out + "-merged")
                self.tok.save_pretrained(out + "-merged")
        acc.wait_for_everyone()
        return out

    def close(self):
        """Tear down the process group (multi-process runs) once all collective work is done; without it, a
        process can abort at exit with 'terminate called without an active exception'."""
        self.acc.wait_for_everyone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@torch.no_grad()
def greedy_eval(model, tok, rows: list[dict], reward: str = "gsm8k", prompt_column: str = "question",
                system_prompt: str | None = None, max_new_tokens: int = 128, batch_size: int = 32,
                eos_ids: list[int] | None = None, engine: str = "auto") -> dict:
    """Greedy-decode each row's prompt and score it with the named reward function (1 = correct):
    {"correct": sum of scores, "samples": [{prompt, completion, score}]}. Used for any model, TRL's included."""
    fn = get_reward_functions([reward])
    eos_ids = eos_ids or [tok.eos_token_id]
    device = next(model.parameters()).device
    correct, samples = 0.0, []
    for s in range(0, len(rows), batch_size):
        batch = rows[s:s + batch_size]
        prompts = [make_prompt(row, prompt_column, system_prompt) for row in batch]
        ids, mask = tokenize_prompts(tok, prompts, device)
        comp = sample_completions(model, ids, mask, 1, max_new_tokens, eos_ids, tok.pad_token_id,
                                  temperature=0.0, engine=engine)
        texts = decode_completions(tok, comp)
        columns = {k: [row[k] for row in batch] for k in batch[0] if k != "prompt"}
        scores, _ = score_completions(fn, None, prompts, texts, columns)
        correct += float(scores.sum())
        samples += [{"prompt": p, "completion": t, "score": float(x)} for p, t, x in zip(prompts, texts, scores)]
    return {"correct": correct, "samples": samples}


def _targets(modules: list[str]) -> list[str] | str:
    return "all-linear" if modules == ["all-linear"] else list(modules)


def _as_list(x) -> list:
    return [] if x is None else (list(x) if isinstance(x, (list, tuple)) else [x])
