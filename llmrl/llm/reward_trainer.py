"""RewardConfig and RewardTrainer: fit a reward model r_phi to preference pairs with the Bradley-Terry loss
(Ouyang et al. 2022 eq. 1; llmrl.objectives.bradley_terry_loss), names as in TRL's RewardConfig / RewardTrainer.

Data: TRL's preference format, `chosen` and `rejected` columns (text or chat messages) and an optional `prompt`
(explicit prompt: prompt + each response is scored; implicit: the shared prefix is inside chosen/rejected), and an
optional `margin` column. One step, top to bottom (`RewardTrainer.step`): take B pairs; score chosen and rejected in
one forward per micro-batch; Bradley-Terry loss; backward (exact accumulation; DDP averages the processes'
gradients); clip; update; log. Pairwise accuracy on a held-out split every eval_steps and at the end.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .. import objectives as O
from ..utils import (RunLogger, atomic_write_text, config_dict, end_process_group, seed_everything, set_threads,
                     truncate_jsonl)
from . import checkpoint as ckpt
from . import engines
from .activation_memory import lean_training_modules
from .config import TRAINER_TRL_TARGETS, _h, apply_trainer_trl_names
from .data import PromptSampler, check_columns, load_prompt_dataset
from .model import LoraSettings, lora_targets, resolve_dtype
from .reward_model import ScoreModel, add_reward_lora, load_reward_model, pad_sequences, tokenize_conversation
from .tracking import check_tracker_packages, check_wandb_login


# Settings a resumed reward-model run cannot change (the restored optimizer, scheduler and data order depend on
# them); `llmrl rm --resume` refuses a new value by name.
FIXED_ON_RESUME = ("model", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "dataset", "dataset_config",
                   "dataset_split", "eval_dataset", "eval_split", "eval_fraction", "max_length",
                   "per_device_batch_size", "seed", "learning_rate", "lr_scheduler", "warmup_steps", "weight_decay",
                   "adam_beta1", "adam_beta2")


@dataclass
class RewardConfig:
    TRL_TARGETS: ClassVar[dict] = TRAINER_TRL_TARGETS
    # --- model ---
    model: str = _h("Hub id, local directory, .gguf file, or 'bundled': a reward model, or a causal LM that gets a "
                    "new scalar head.", default="bundled")
    dtype: str = _h("Weights: 'auto' (bfloat16 where bf16 matmul is fast, else float32), 'float32' or 'bfloat16'.",
                    default="auto")
    lora_r: int = _h("LoRA rank (the scalar head trains fully); 0 = full fine-tuning.", default=16)
    lora_alpha: int = _h("LoRA alpha (scale alpha / r).", default=32)
    lora_dropout: float = _h("LoRA dropout.", default=0.0)
    lora_target_modules: list[str] = _h("Modules that get LoRA; 'all-linear' = attention + MLP projections.",
                                        default_factory=lambda: ["all-linear"])
    # --- data ---
    dataset: str = _h("Preference pairs (chosen/rejected [+ prompt, margin] columns): a .jsonl/.parquet file, a "
                      "directory of {split}.jsonl, or a hub dataset name.", default="runs/arithmetic_preferences")
    dataset_config: str | None = _h("Hub dataset config name.", default=None)
    dataset_split: str = _h("Training split.", default="train")
    eval_dataset: str | None = _h("Held-out pairs (file, directory read with eval_split, or hub name); default: "
                                  "eval_fraction of the training pairs.", default=None)
    eval_split: str = _h("Split of eval_dataset.", default="test")
    eval_fraction: float = _h("Fraction of the training pairs held out when eval_dataset is not given (0 = no "
                              "evaluation).", default=0.1)
    max_length: int = _h("Longest tokenized prompt + response; pairs with a longer side are dropped (and counted), "
                         "as in TRL.", default=1024)
    # --- optimization ---
    per_device_batch_size: int = _h("Pairs per optimizer step on each process.", default=8)
    micro_batch_size: int = _h("Pairs per forward/backward (gradient accumulation is exact).", default=8)
    num_train_epochs: float = _h("Passes over the training pairs (used when max_steps is -1).", default=1.0)
    max_steps: int = _h("Optimizer steps; -1 = from num_train_epochs.", default=-1)
    learning_rate: float = _h("AdamW learning rate (1e-4 suits LoRA; ~1e-5 full fine-tuning).", default=1e-4)
    lr_scheduler: str = _h("transformers scheduler name: linear | cosine | constant | constant_with_warmup.",
                           default="linear")
    warmup_steps: int = _h("Optimizer steps of linear warm-up.", default=0)
    weight_decay: float = _h("AdamW weight decay.", default=0.0)
    adam_beta1: float = _h("AdamW beta1.", default=0.9)
    adam_beta2: float = _h("AdamW beta2.", default=0.999)
    max_grad_norm: float = _h("Gradient-norm clipping (0 = off).", default=1.0)
    seed: int = _h("Seed for the data order, the held-out split and initialization.", default=0)
    # --- run, logging, checkpoints ---
    output_dir: str = _h("Run directory: metrics, checkpoints, the final model.", default="runs/reward_model")
    logging_steps: int = _h("Log metrics every N steps.", default=1)
    report_to: list[str] = _h("accelerate trackers: tensorboard, wandb, ... or none.",
                              default_factory=lambda: ["tensorboard"])
    eval_steps: int = _h("Evaluate pairwise accuracy every N steps (0 = only before and after training).",
                         default=50)
    eval_batch_size: int = _h("Pairs per forward during evaluation.", default=16)
    save_steps: int = _h("Checkpoint every N steps (0 = only at the end).", default=50)
    save_total_limit: int = _h("Keep the last K checkpoints.", default=2)
    resume: str | None = _h("Resume from 'latest' (in output_dir) or a checkpoint directory.", default=None)
    overwrite_output_dir: bool = _h("Start afresh in an output_dir that holds an earlier run (its logs and "
                                    "checkpoints are deleted); without it such a start is an error.", default=False)
    use_cpu: bool = _h("Train on the CPU even when a GPU is present.", default=False)
    progress_bar: bool = _h("Show the progress bar over training steps.", default=True,
                            help_off="No progress bar (for logs and batch jobs).")
    torch_threads: int = _h("CPU threads torch may use (0 = its default, one per core; 1 on a shared machine).",
                            default=0)
    # --- TRL's names (TRL RewardConfig users' habits): each sets the llmrl setting named in its help ---
    per_device_train_batch_size: int | None = _h("TRL: pairs per forward/backward; sets micro_batch_size, and "
                                                 "per_device_batch_size = it x gradient_accumulation_steps.",
                                                 default=None)
    gradient_accumulation_steps: int | None = _h("TRL: micro-batches per optimizer step (see "
                                                 "per_device_train_batch_size).", default=None)
    bf16: bool | None = _h("TRL: True sets dtype=bfloat16, False dtype=float32.", default=None)
    lr_scheduler_type: str | None = _h("TRL: sets lr_scheduler.", default=None)
    per_device_eval_batch_size: int | None = _h("TRL: sets eval_batch_size.", default=None)
    resume_from_checkpoint: str | None = _h("TRL: sets resume (a checkpoint path, or 'true' for the latest).",
                                            default=None)

    def __post_init__(self):
        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(f"RewardConfig: {msg}")

        apply_trainer_trl_names(self, need)

        if isinstance(self.report_to, str):  # as TRL: one tracker name as a string
            self.report_to = [self.report_to]
        check_tracker_packages(self.report_to, "RewardConfig")
        need(self.lora_r >= 0, f"lora_r must be >= 0, got {self.lora_r}")
        need(self.dtype in ("auto", "float32", "bfloat16"),
             f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        need(0 <= self.eval_fraction < 1, f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        need(self.max_length >= 2, f"max_length must be >= 2, got {self.max_length}")
        need(self.per_device_batch_size >= 1, f"per_device_batch_size must be >= 1, got {self.per_device_batch_size}")
        need(self.micro_batch_size >= 1, f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        need(self.max_steps == -1 or self.max_steps >= 1, f"max_steps must be -1 or >= 1, got {self.max_steps}")
        need(self.max_steps != -1 or self.num_train_epochs > 0,
             f"num_train_epochs must be > 0 when max_steps is -1, got {self.num_train_epochs}")
        need(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        need(self.logging_steps >= 1, f"logging_steps must be >= 1, got {self.logging_steps}")
        need(self.eval_steps >= 0, f"eval_steps must be >= 0, got {self.eval_steps}")
        need(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        need(self.save_steps >= 0, f"save_steps must be >= 0, got {self.save_steps}")
        need(self.save_total_limit >= 1, f"save_total_limit must be >= 1, got {self.save_total_limit}")


def check_preference_columns(dataset) -> None:
    """A one-line error for a missing chosen/rejected column or the first row without a value in one."""
    check_columns(dataset, ["chosen", "rejected"], {c: "the reward trainer (TRL preference format: chosen and "
                                                        "rejected, optionally prompt and margin)" for c in
                                                    ("chosen", "rejected")})


def tokenize_pairs(dataset, tokenizer, max_length: int) -> tuple[list[dict], int]:
    """Preference rows -> [{"chosen": ids, "rejected": ids, "margin": float}] and the number of rows dropped for
    exceeding max_length. A one-line error names a missing column or the first row that cannot be read."""
    check_preference_columns(dataset)
    pairs, dropped = [], 0
    for i, row in enumerate(dataset):
        try:
            chosen = tokenize_conversation(tokenizer, row.get("prompt"), row["chosen"])
            rejected = tokenize_conversation(tokenizer, row.get("prompt"), row["rejected"])
        except (ValueError, TypeError) as e:
            raise ValueError(f"preference row {i}: {e}") from None
        if max(len(chosen), len(rejected)) > max_length:
            dropped += 1
            continue
        pairs.append({"chosen": chosen, "rejected": rejected, "margin": float(row.get("margin") or 0.0)})
    return pairs, dropped


class RewardTrainer:
    def __init__(self, config: RewardConfig, model=None, tokenizer=None, train_dataset=None, eval_dataset=None,
                 accelerator=None):
        from accelerate import Accelerator
        from transformers import get_scheduler

        cfg = self.cfg = config
        check_wandb_login(cfg.report_to)
        report_to = [t for t in cfg.report_to if t != "none"]
        no_gpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())
        self.acc = acc = accelerator or Accelerator(cpu=cfg.use_cpu or no_gpu, log_with=report_to or None,
                                                    project_dir=cfg.output_dir)
        # The checkpoint to resume, checked as GRPO's are (older than the newest, another run, fixed settings); an
        # earlier run in output_dir is refused (or with overwrite_output_dir cleared) by train(), which can also
        # resume it as TRL's train(resume_from_checkpoint=...); `llmrl rm` checks before anything loads.
        self._resume = ckpt.check_resume(cfg, FIXED_ON_RESUME) if cfg.resume else None
        self.began = False
        set_threads(cfg.torch_threads)
        seed_everything(cfg.seed)
        # --- data, read and checked before the model loads (a bad file ends the run in one line at once) ---
        if train_dataset is None:
            train_dataset = load_prompt_dataset(cfg.dataset, cfg.dataset_split, cfg.dataset_config)
        check_preference_columns(train_dataset)
        if eval_dataset is None and cfg.eval_dataset is not None:
            eval_dataset = load_prompt_dataset(cfg.eval_dataset, cfg.eval_split, cfg.dataset_config, "eval_dataset",
                                               "eval_split")
        elif eval_dataset is None and cfg.eval_fraction > 0:
            split = train_dataset.train_test_split(test_size=cfg.eval_fraction, seed=cfg.seed)
            train_dataset, eval_dataset = split["train"], split["test"]
        if eval_dataset is not None:
            check_preference_columns(eval_dataset)
        self._check_enough_pairs(len(train_dataset))
        self.dtype = resolve_dtype(cfg.dtype)
        # --- model: LoRA (the head trains fully) or full fine-tuning (fp32 master weights, bf16 autocast); a model
        # passed in gets the configured adapter unless it carries one already ---
        lora = None if cfg.lora_r == 0 else LoraSettings(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout,
                                                        lora_targets(cfg.lora_target_modules))
        if model is None:
            model, tokenizer = load_reward_model(cfg.model, lora, self.dtype if lora else torch.float32)
        elif lora is not None and not hasattr(model, "disable_adapter"):
            model = add_reward_lora(model, lora)
        elif lora is None and hasattr(model, "disable_adapter"):
            raise ValueError("RewardTrainer: lora_r=0 asks for full fine-tuning but the model passed carries a LoRA "
                             "adapter; pass the model without it, or set lora_r > 0")
        if tokenizer is None:
            raise ValueError("RewardTrainer: pass the tokenizer together with the model")
        self.tok, self.is_peft = tokenizer, hasattr(model, "disable_adapter")
        self.autocast_dtype = torch.bfloat16 if (self.dtype == torch.bfloat16 and not self.is_peft) else None
        # --- data: tokenized once, with the model's tokenizer ---
        self.train_pairs, dropped = tokenize_pairs(train_dataset, tokenizer, cfg.max_length)
        self.eval_pairs, eval_dropped = tokenize_pairs(eval_dataset, tokenizer, cfg.max_length) \
            if eval_dataset is not None else ([], 0)
        if dropped or eval_dropped:
            acc.print(f"reward trainer: dropped {dropped} training and {eval_dropped} held-out pairs longer than "
                      f"max_length={cfg.max_length} tokens")
        self._check_enough_pairs(len(self.train_pairs))
        B, N = cfg.per_device_batch_size, acc.num_processes
        self.sampler = PromptSampler(len(self.train_pairs), B, N, acc.process_index, cfg.seed)
        self.max_steps = cfg.max_steps if cfg.max_steps > 0 else \
            max(1, math.ceil(cfg.num_train_epochs * (len(self.train_pairs) // (B * N))))
        # --- optimization ---
        model.to(acc.device)
        if not engines.gathers_per_submodule(acc):  # same forward, less stored for backward (activation_memory.py)
            lean_training_modules(model)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("RewardTrainer: the model has no trainable parameters")
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                weight_decay=cfg.weight_decay)
        # Not passed to accelerate.prepare: its wrapper steps the schedule once per PROCESS at every optimizer step.
        self.sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=cfg.warmup_steps,
                                   num_training_steps=self.max_steps)
        self.scorer, self.opt = acc.prepare(ScoreModel(model), opt)
        self.model = model  # the unwrapped reward model (evaluation, saving)
        acc.register_save_state_pre_hook(_keep_trainable_weights)
        self.step_count = 0
        self.logger = None

    def _check_enough_pairs(self, n: int) -> None:
        B, N = self.cfg.per_device_batch_size, self.acc.num_processes
        if n < B * N:
            raise ValueError(f"RewardTrainer: {n} training pairs, fewer than one step's per_device_batch_size x "
                             f"processes = {B * N}")

    # ------------------------------------------------------------------ one step
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.acc.device.type, dtype=self.autocast_dtype)

    def _score_pairs(self, module, pairs: list[dict]) -> tuple[Tensor, Tensor]:
        """Rewards of the chosen and the rejected responses of `pairs`, both in one padded forward; (b,) each."""
        ids, mask = pad_sequences([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs],
                                  self.tok.pad_token_id or 0, self.tok.padding_side)
        with self._autocast():
            scores = module(ids.to(self.acc.device), mask.to(self.acc.device))
        return scores[:len(pairs)], scores[len(pairs):]

    def step(self) -> dict:
        """One optimizer step on B pairs: Bradley-Terry loss over micro-batches, backward, clip, update."""
        cfg, acc = self.cfg, self.acc
        t0 = time.perf_counter()
        pairs = [self.train_pairs[i] for i in self.sampler.next()]
        B = len(pairs)
        mbs = [slice(s, min(s + cfg.micro_batch_size, B)) for s in range(0, B, cfg.micro_batch_size)]
        self.model.train()
        chosen, rejected, loss_sum = [], [], 0.0
        for j, sl in enumerate(mbs):
            sync = acc.no_sync(self.scorer) if j < len(mbs) - 1 else contextlib.nullcontext()
            with sync:
                c, r = self._score_pairs(self.scorer, pairs[sl])
                margin = torch.tensor([p["margin"] for p in pairs[sl]], device=c.device)
                # "sum" / B: micro-batch losses add up to the mean over this process's B pairs
                loss = O.bradley_terry_loss(c, r, margin, mode="sum") / B
                acc.backward(loss)
            chosen.append(c.detach())
            rejected.append(r.detach())
            loss_sum += loss.item()
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norm = float(acc.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], max_norm))
        if not (math.isfinite(grad_norm) and math.isfinite(loss_sum)):
            raise FloatingPointError(f"step {self.step_count + 1}: non-finite loss or gradient (the last checkpoint "
                                     f"is kept in {cfg.output_dir}); lower learning_rate")
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step_count += 1
        c, r = acc.gather(torch.cat(chosen)), acc.gather(torch.cat(rejected))
        return {"loss": acc.reduce(torch.tensor(loss_sum, device=acc.device), "mean").item(),
                "accuracy": O.pairwise_accuracy(c, r).item(), "margin": (c - r).mean().item(),
                "rewards/chosen": c.mean().item(), "rewards/rejected": r.mean().item(), "grad_norm": grad_norm,
                "learning_rate": self.sched.get_last_lr()[0],
                "epoch": self.sampler.epoch + self.sampler.pos / len(self.train_pairs),
                "step_time": time.perf_counter() - t0}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Pairwise accuracy, Bradley-Terry loss and mean margin on the held-out pairs; the processes split the pairs
        and their sums are added."""
        acc, bs = self.acc, self.cfg.eval_batch_size
        mine = self.eval_pairs[acc.process_index::acc.num_processes]
        self.model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=acc.device)  # right, loss, margin, count
        for s in range(0, len(mine), bs):
            c, r = self._score_pairs(acc.unwrap_model(self.scorer), mine[s:s + bs])
            n = len(c)
            sums += torch.tensor([O.pairwise_accuracy(c, r).item() * n,
                                  O.bradley_terry_loss(c, r, mode="sum").item(), (c - r).sum().item(), n],
                                 dtype=torch.float64, device=acc.device)
        self.model.train()
        sums = acc.reduce(sums, "sum")
        n = sums[3].clamp(min=1)
        return {"eval/accuracy": (sums[0] / n).item(), "eval/loss": (sums[1] / n).item(),
                "eval/margin": (sums[2] / n).item(), "eval/pairs": int(sums[3].item())}

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> str:
        """output_dir/checkpoint-STEP, written to a temporary directory and renamed into place (whole or absent):
        accelerate's save_state (trainable weights, optimizer, every process's RNG) + scheduler and data position."""
        acc, cfg = self.acc, self.cfg
        final, tmp = ckpt.start_checkpoint(acc, cfg.output_dir, self.step_count)
        acc.save_state(tmp)
        if acc.is_main_process:
            torch.save({"step": self.step_count, "data": self.sampler.state_dict(),
                        "scheduler": self.sched.state_dict(), "num_processes": acc.num_processes},
                       os.path.join(tmp, "trainer_state.pt"))
            atomic_write_text(os.path.join(tmp, "config.json"), json.dumps(config_dict(cfg), indent=2))
            ckpt.publish_checkpoint(tmp, final, cfg.save_total_limit)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: str) -> None:
        """Restore the state save_checkpoint wrote at `path`."""
        from safetensors import safe_open

        acc = self.acc
        state = ckpt.read_trainer_state(path, acc)
        with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
            saved = set(f.keys())
        trainable = {n for n, p in self.scorer.named_parameters() if p.requires_grad}
        if saved != trainable:
            odd = sorted(saved ^ trainable)[0]
            raise ValueError(f"checkpoint {path} does not hold this model's trainable weights (e.g. {odd}): was it "
                             f"written with another model or other LoRA settings?")
        acc.load_state(path, strict=False)  # frozen weights are not in the checkpoint; the keys were checked above
        self.sched.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["data"])
        self.step_count = state["step"]

    # ------------------------------------------------------------------ the loop
    def train(self, resume_from_checkpoint: str | bool | None = None) -> list[dict]:
        """Train to max_steps (or num_train_epochs), evaluating and checkpointing. resume_from_checkpoint (TRL's
        argument): True for output_dir's latest checkpoint, a checkpoint's path, or False; as config.resume."""
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.acc
        if resume_from_checkpoint is not None:
            self._resume = ckpt.resume_request(cfg, resume_from_checkpoint, self.began, self._resume, FIXED_ON_RESUME)
        os.makedirs(cfg.output_dir, exist_ok=True)
        if self.began:  # a second train() goes on from where this trainer is
            pass
        elif self._resume is not None:
            self.load_checkpoint(self._resume[0])
        elif acc.is_main_process:
            ckpt.prepare_fresh_output_dir(cfg.output_dir, cfg.overwrite_output_dir)
        self.began = True
        if acc.is_main_process:
            ckpt.write_config(cfg)
            truncate_jsonl(os.path.join(cfg.output_dir, "metrics.jsonl"), self.step_count)  # past the checkpoint
            self.logger = RunLogger(cfg.output_dir, tensorboard=False, append=True)  # metrics.jsonl for llmrl-plot
        if acc.log_with:  # TensorBoard (default), wandb, ... through accelerate's trackers
            acc.init_trackers("tb", config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                            for k, v in config_dict(cfg).items()})
        history = []
        if self.eval_pairs and self.step_count == 0:
            self._log(self.evaluate(), 0)
        bar = tqdm(total=self.max_steps, initial=self.step_count, desc="reward",
                   disable=not (acc.is_main_process and cfg.progress_bar))
        while self.step_count < self.max_steps:
            metrics = self.step()
            done = self.step_count == self.max_steps
            if self.eval_pairs and (done or (cfg.eval_steps and self.step_count % cfg.eval_steps == 0)):
                metrics.update(self.evaluate())
            history.append(metrics)
            if self.step_count % cfg.logging_steps == 0 or "eval/accuracy" in metrics:
                self._log(metrics, self.step_count)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.2f}",
                            **({"eval_acc": f"{metrics['eval/accuracy']:.3f}"} if "eval/accuracy" in metrics else {}))
            if (cfg.save_steps and self.step_count % cfg.save_steps == 0) or done:
                self.save_checkpoint()
        bar.close()
        if acc.is_main_process and self.logger is not None:
            self.logger.close()
        for tracker in acc.trackers:  # not acc.end_training(): it also ends the process group, which saving needs
            tracker.finish()
        return history

    def _log(self, metrics: dict, step: int) -> None:
        if self.acc.is_main_process:
            self.logger.log(metrics, step)
        self.acc.log(metrics, step=step)

    # ------------------------------------------------------------------ the final model
    def save_final(self) -> str:
        """Save output_dir/final: the reward model with any LoRA adapter merged into its weights, and its tokenizer,
        so that AutoModelForSequenceClassification.from_pretrained(path) (and RewardModelScorer(path)) reload it."""
        acc, out = self.acc, os.path.join(self.cfg.output_dir, "final")
        if acc.is_main_process:
            model = copy.deepcopy(self.model).merge_and_unload() if self.is_peft else self.model
            model.config.pad_token_id = self.tok.pad_token_id
            tmp = out + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp)
            self.tok.save_pretrained(tmp)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
        acc.wait_for_everyone()
        return out

    def close(self):
        """Tear down the process group (multi-process runs) once all collective work is done
        (utils.end_process_group); the trainer cannot train after it."""
        end_process_group(self.acc, self)


def _keep_trainable_weights(models, weights, output_dir) -> None:
    """accelerate save_state hook: checkpoint only the weights that train (the LoRA adapter and the head), not the
    frozen backbone, which the run reloads from its model anyway."""
    for i, model in enumerate(models):
        keep = {n for n, p in model.named_parameters() if p.requires_grad}
        weights[i] = {k: v for k, v in weights[i].items() if k in keep}
