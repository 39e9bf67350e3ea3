"""Preference pairs the project makes itself (the offline RLHF pipeline's first stage): sample G completions of a
policy (the bundled model by default) per question of the bundled arithmetic task, label each by the rule-based
checkers (accepted = every reward function gives it 1: the answer is correct AND "The answer is N." is
well-formatted), and pair accepted with not-accepted completions of the same prompt. Written in TRL's
conversational preference format, one JSON object per line:

    {"prompt": [system, user messages], "chosen": [{"role": "assistant", "content": ...}],
     "rejected": [{"role": "assistant", "content": ...}], "question": ..., "answer": ...}

    llmrl preferences --output_dir runs/arithmetic_preferences --num_prompts 64 --num_test_prompts 32

writes OUT/train.jsonl (from the task's train split) and OUT/test.jsonl (its test split: no question shared).
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

import torch

from ..utils import atomic_write_text, parse_config, seed_everything, set_threads
from .config import GRPOConfig, _h
from .data import load_prompt_dataset, make_prompt, row_prompt
from .evaluation import eos_token_ids
from .model import load_policy, resolve_dtype
from .rewards import resolve_reward_functions, score_completions
from .sampling import decode_completions, sample_completions, tokenize_prompts

_GRPO = GRPOConfig()  # the task and prompt defaults of the RL trainer, so that the pairs match what it samples


@dataclass
class PreferenceDataConfig:
    model: str = _h("Policy that writes the completions: hub id, local directory, .gguf, or 'bundled'.",
                    default=_GRPO.model)
    dtype: str = _h("'auto' (bfloat16 where fast), 'float32' or 'bfloat16'.", default="auto")
    dataset: str = _h("Prompt dataset with question/answer columns (default: the RL trainer's).",
                      default=_GRPO.dataset)
    train_split: str = _h("Split the training pairs come from.", default="train")
    test_split: str = _h("Split the held-out pairs come from.", default="test")
    prompt_column: str = _h("Column holding the question.", default=_GRPO.prompt_column)
    system_prompt: str = _h("System message put before each question.", default=_GRPO.system_prompt)
    num_prompts: int = _h("Questions sampled for the training pairs (the first N of a seeded shuffle).", default=64)
    num_test_prompts: int = _h("Questions sampled for the held-out pairs (0 = no test.jsonl).", default=32)
    num_generations: int = _h("Completions sampled per question.", default=8)
    pairs_per_prompt: int = _h("At most this many (chosen, rejected) pairs per question.", default=4)
    max_new_tokens: int = _h("Longest completion.", default=_GRPO.max_new_tokens)
    temperature: float = _h("Sampling temperature; below the RL trainer's 1.0 because the bundled model at T=1 "
                            "rarely writes an accepted answer (pairs need one).", default=0.7)
    top_p: float = _h("Nucleus sampling mass.", default=_GRPO.top_p)
    top_k: int = _h("Top-k sampling (0 = off).", default=_GRPO.top_k)
    reward_funcs: list[str] = _h("Rule-based checkers; a completion is accepted when every one gives it 1.",
                                 default_factory=lambda: ["gsm8k", "format"])
    batch_size: int = _h("Questions per sampling batch.", default=8)
    output_dir: str = _h("Output directory for train.jsonl and test.jsonl.", default="runs/arithmetic_preferences")
    overwrite_output_dir: bool = _h("Replace the pairs an earlier run wrote in output_dir (refused without it).",
                                    default=False)
    seed: int = _h("Seed for the question order, sampling and pairing.", default=0)
    torch_threads: int = _h("CPU threads torch may use (0 = its default, one per core; 1 on a shared machine).",
                            default=0)

    def __post_init__(self):
        for name in ("num_generations", "pairs_per_prompt", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"PreferenceDataConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.num_prompts < 1 or self.num_test_prompts < 0:
            raise ValueError(f"PreferenceDataConfig: num_prompts must be >= 1 and num_test_prompts >= 0, got "
                             f"{self.num_prompts}, {self.num_test_prompts}")


def label_pairs(completions: list[str], accepted: list[bool], k: int, rng: random.Random) -> list[tuple[str, str]]:
    """Up to k distinct (chosen, rejected) pairs of one prompt's completions, chosen accepted and rejected not,
    drawn without replacement from all such combinations."""
    good = sorted({c for c, a in zip(completions, accepted) if a})
    bad = sorted({c for c, a in zip(completions, accepted) if not a})
    combos = [(g, b) for g in good for b in bad]
    return rng.sample(combos, min(k, len(combos)))


@torch.no_grad()
def generate_preference_pairs(model, tokenizer, rows: list[dict], reward_funcs, num_generations: int = 8,
                              pairs_per_prompt: int = 4, max_new_tokens: int = 128, temperature: float = 1.0,
                              top_p: float = 1.0, top_k: int = 0, prompt_column: str | None = None,
                              system_prompt: str | None = None, batch_size: int = 8, seed: int = 0,
                              engine: str = "auto", progress: bool = False) -> tuple[list[dict], dict]:
    """Sample `num_generations` completions per row, label them with `reward_funcs` (names from REWARD_FUNCTIONS,
    or functions as the RL trainer takes them; accepted = every function returns 1), and pair accepted with
    rejected completions of the same prompt (label_pairs).

    Returns (preference rows in TRL's conversational format, stats: completions, accepted fraction, prompts with at
    least one pair, pairs)."""
    from tqdm.auto import tqdm

    funcs = resolve_reward_functions(reward_funcs)
    device = next(model.parameters()).device
    eos_ids = eos_token_ids(model, tokenizer)
    gen = torch.Generator(device=device).manual_seed(seed)
    rng = random.Random(seed)
    model.eval()
    out, n_accepted, n_paired = [], 0, 0
    for s in tqdm(range(0, len(rows), batch_size), desc="sampling", unit="batch", disable=not progress):
        batch = rows[s:s + batch_size]
        prompts = [make_prompt(row, prompt_column, system_prompt) for row in batch]
        ids, mask = tokenize_prompts(tokenizer, prompts, device)
        comp = sample_completions(model, ids, mask, num_generations, max_new_tokens, eos_ids, tokenizer.pad_token_id,
                                  temperature, top_p, top_k, gen, engine=engine)
        texts = decode_completions(tokenizer, comp)
        columns = {k: [row[k] for row in batch for _ in range(num_generations)] for k in batch[0] if k != "prompt"}
        rep = [row_prompt(row, prompt_column) for row in batch for _ in range(num_generations)]
        seen = [p for p in prompts for _ in range(num_generations)]  # the prompts as the policy was given them
        _, per_func = score_completions(funcs, None, rep, texts, columns, model_prompts=seen)
        accepted = torch.stack(list(per_func.values())).eq(1.0).all(0).tolist()
        n_accepted += sum(accepted)
        for i, (row, prompt) in enumerate(zip(batch, prompts)):
            group = slice(i * num_generations, (i + 1) * num_generations)
            pairs = label_pairs(texts[group], accepted[group], pairs_per_prompt, rng)
            n_paired += bool(pairs)
            extra = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected")}
            out += [{"prompt": prompt, "chosen": [{"role": "assistant", "content": c}],
                     "rejected": [{"role": "assistant", "content": r}], **extra} for c, r in pairs]
    n = len(rows) * num_generations
    return out, {"completions": n, "accepted_frac": n_accepted / max(n, 1), "prompts_with_pairs": n_paired,
                 "pairs": len(out)}


def main(argv: list[str] | None = None, no_pair_fix: dict[str, str] | None = None) -> dict:
    """Sample, label and pair each split (train, then test); a split without a single pair ends the run with a
    one-line ValueError that says what to raise (`no_pair_fix`: split -> that advice, for a caller with its own
    flags), and nothing is written. Returns each split's stats."""
    cfg = parse_config(PreferenceDataConfig, argv)
    no_pair_fix = no_pair_fix or {
        split: f"raise --{flag}, --num_generations or --max_new_tokens, or use looser --reward_funcs"
        for split, flag in (("train", "num_prompts"), ("test", "num_test_prompts"))}
    set_threads(cfg.torch_threads)
    seed_everything(cfg.seed)
    written = [n for n in ("train.jsonl", "test.jsonl") if os.path.exists(os.path.join(cfg.output_dir, n))]
    if written and not cfg.overwrite_output_dir:  # before the model loads; nothing written is lost
        raise FileExistsError(f"output_dir {cfg.output_dir} already holds preference pairs ({written[0]}); pass "
                              f"--overwrite_output_dir to replace them, or another --output_dir")
    # the questions of each split, read before the model loads; held-out questions never among the training ones
    wanted = {name: (split, n) for split, n, name in ((cfg.train_split, cfg.num_prompts, "train"),
                                                      (cfg.test_split, cfg.num_test_prompts, "test")) if n > 0}
    data = {name: load_prompt_dataset(cfg.dataset, split, split_setting=f"{name}_split")
            for name, (split, n) in wanted.items()}
    for name, d in data.items():  # a count the split cannot honour is refused, not cut down
        flag = "num_prompts" if name == "train" else "num_test_prompts"
        if wanted[name][1] > len(d):
            raise ValueError(f"{flag} = {wanted[name][1]} but {cfg.dataset} ({wanted[name][0]}) has {len(d)} "
                             f"questions; lower --{flag}")
    orders = {name: torch.randperm(len(d), generator=torch.Generator().manual_seed(cfg.seed)).tolist()[:wanted[name][1]]
              for name, d in data.items()}
    if len(data) == 2 and (os.path.isfile(os.path.expanduser(cfg.dataset)) or cfg.train_split == cfg.test_split):
        # one file (it is one split) or the same split twice: the test questions follow the training ones
        n_train, n_test, available = cfg.num_prompts, cfg.num_test_prompts, len(data["train"])
        if n_train + n_test > available:
            raise ValueError(f"num_prompts + num_test_prompts = {n_train + n_test} but {cfg.dataset} "
                             f"({cfg.train_split}) has {available} questions for both splits (a single file, or the "
                             f"same split twice); lower them, or pass a dataset with separate train and test splits")
        perm = torch.randperm(available, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        orders = {"train": perm[:n_train], "test": perm[n_train:n_train + n_test]}
    model, tok = load_policy(cfg.model, lora=None, dtype=resolve_dtype(cfg.dtype))
    made = {}
    for name, order in orders.items():
        rows, stats = generate_preference_pairs(
            model, tok, [data[name][i] for i in order], cfg.reward_funcs, cfg.num_generations, cfg.pairs_per_prompt,
            cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k, cfg.prompt_column, cfg.system_prompt,
            cfg.batch_size, cfg.seed + (name == "test"), progress=True)
        if not rows:  # an empty file would only fail the reward-model step, after it has loaded its model
            raise ValueError(f"preference data: no {name} pair (none of the {len(order)} questions had both an "
                             f"accepted and a rejected completion among its {cfg.num_generations}); nothing "
                             f"written; {no_pair_fix[name]}")
        made[name] = rows, stats
    os.makedirs(cfg.output_dir, exist_ok=True)
    for name, (rows, stats) in made.items():
        atomic_write_text(os.path.join(cfg.output_dir, f"{name}.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
        print(f"{name}: {stats['pairs']} pairs from {stats['completions'] // cfg.num_generations} questions "
              f"({stats['prompts_with_pairs']} with a pair; {stats['accepted_frac']:.1%} of {stats['completions']} "
              f"completions accepted) -> {os.path.join(cfg.output_dir, name + '.jsonl')}")
    return {name: stats for name, (rows, stats) in made.items()}


if __name__ == "__main__":
    from ..utils import cli_main
    cli_main(main)
