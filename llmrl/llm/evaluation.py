"""Evaluation of a policy on held-out prompts: greedy accuracy (the mean of a reward function, 1 = correct) and
pass@k from n completions sampled per prompt (the unbiased estimator of Chen et al. 2021), with the prompts split
over the processes and the counts summed; results kept in DIR/eval.json under a label that says what was
evaluated, merged with the labels already there (never overwriting another label's results)."""
from __future__ import annotations

import json
import os
import re
import time

import numpy as np
import torch

from ..utils import atomic_write_text
from .data import check_prompt_dataset, load_prompt_dataset, make_prompt, row_prompt
from .rewards import required_columns, resolve_reward_functions, score_completions
from .sampling import decode_completions, sample_completions, tokenize_prompts

EVAL_FILE = "eval.json"


def pass_at_k(n: int, c: int, k: int) -> float:
    """pass@k of one problem, Chen et al. 2021 (Codex) eq. 1, unbiased: 1 - C(n-c, k) / C(n, k), the chance that
    k of the n sampled completions (c of them correct), drawn without replacement, include a correct one.

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), the paper's stable form (C(n, k) overflows for large n)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct completion
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def eos_token_ids(model, tok) -> list[int]:
    """Every token that ends a completion: the tokenizer's EOS and those of the model's config and generation
    config (instruct models often add an end-of-turn token there)."""
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    gen = [] if gen is None else (list(gen) if isinstance(gen, (list, tuple)) else [gen])
    return sorted({i for i in [tok.eos_token_id, model.config.eos_token_id, *gen] if i is not None})


def _binary(scores: torch.Tensor, reward: str) -> torch.Tensor:
    """Sampled completions scored 1 (correct) or 0; pass@k has no meaning for other reward values."""
    bad = scores[(scores != 0) & (scores != 1)]
    if len(bad):
        raise ValueError(f"pass@k counts completions that eval_reward {reward!r} scores 1 as correct, but it gave "
                         f"{bad[0].item():g}; use a 0/1 reward for eval_reward, or drop eval_pass_k")
    return scores.long()


@torch.no_grad()
def greedy_eval(model, tok, rows: list[dict], reward: str = "gsm8k", prompt_column: str | None = None,
                system_prompt: str | None = None, max_new_tokens: int = 128, batch_size: int = 32,
                eos_ids: list[int] | None = None, engine: str = "auto", num_samples: int = 0,
                pass_k: list[int] | tuple = (), temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                generator: torch.Generator | None = None, progress=None) -> dict:
    """Greedy-decode each row's prompt and score it with the named reward function (1 = correct); with
    `num_samples` n > 0, also sample n completions per prompt (`temperature`, `top_p`, `top_k`, from `generator`)
    and sum pass@k over the prompts for each k in `pass_k`. Used for any model, TRL's included.

    Returns {"correct": sum of greedy scores, "pass@k": sum over prompts (each k), "samples": [{prompt,
    completion, score[, num_correct]}]}; `progress` (a tqdm bar) advances by one per prompt and phase."""
    fn = resolve_reward_functions(reward)
    eos_ids = eos_ids or [tok.eos_token_id]
    device = next(model.parameters()).device

    def run(batch: list[dict], n: int, temperature: float):
        prompts = [make_prompt(row, prompt_column, system_prompt) for row in batch]
        ids, mask = tokenize_prompts(tok, prompts, device)
        comp = sample_completions(model, ids, mask, n, max_new_tokens, eos_ids, tok.pad_token_id, temperature,
                                  top_p, top_k, generator, engine=engine)
        texts = decode_completions(tok, comp)
        columns = {k: [row[k] for row in batch for _ in range(n)] for k in batch[0] if k != "prompt"}
        scores, _ = score_completions(fn, None, [row_prompt(row, prompt_column) for row in batch for _ in range(n)],
                                      texts, columns)
        if progress is not None:
            progress.update(len(batch))
        return prompts, texts, scores

    correct, samples = 0.0, []
    for s in range(0, len(rows), batch_size):
        prompts, texts, scores = run(rows[s:s + batch_size], 1, 0.0)
        correct += float(scores.sum())
        samples += [{"prompt": p, "completion": t, "score": float(x)} for p, t, x in zip(prompts, texts, scores)]
    out = {"correct": correct, "samples": samples}
    if num_samples:
        per_batch = max(1, batch_size // num_samples)  # batch_size counts sequences: prompts x n samples
        sums = dict.fromkeys(pass_k, 0.0)
        for s in range(0, len(rows), per_batch):
            _, _, scores = run(rows[s:s + per_batch], num_samples, temperature)
            for j, c in enumerate(_binary(scores, reward).view(-1, num_samples).sum(-1).tolist()):
                samples[s + j]["num_correct"] = c
                for k in pass_k:
                    sums[k] += pass_at_k(num_samples, c, k)
        out.update({f"pass@{k}": v for k, v in sums.items()})
    return out


def load_eval_dataset(cfg, tokenizer, dataset=None):
    """The evaluation set (`dataset`, or cfg.eval_dataset / cfg.dataset at cfg.eval_split), checked as the trainer
    checks its training set (check_prompt_dataset: prompts, the columns cfg.eval_reward needs) with a one-line
    error naming it."""
    name = "the eval_dataset given" if dataset is not None else f"{cfg.eval_dataset or cfg.dataset} ({cfg.eval_split})"
    if dataset is None:
        dataset = load_prompt_dataset(cfg.eval_dataset or cfg.dataset, cfg.eval_split, cfg.dataset_config,
                                      "eval_dataset" if cfg.eval_dataset else "dataset", "eval_split")
    try:
        check_prompt_dataset(dataset, tokenizer, cfg.prompt_column, cfg.system_prompt,
                             required_columns(resolve_reward_functions(cfg.eval_reward)))
    except ValueError as e:
        raise ValueError(f"eval dataset {name}: {e}") from None
    return dataset


def evaluate_policy(model, tok, dataset, n: int, cfg, eos_ids: list[int], accelerator, reward: str | None = None,
                    desc: str = "eval", leave: bool = True) -> dict:
    """Greedy accuracy (mean of `reward`, default cfg.eval_reward) and pass@k (cfg.eval_pass_k, from
    cfg.eval_num_samples samples at the training temperature) on the first n rows of `dataset`, the rows split over
    the processes and the counts summed: {"accuracy", "pass@k" (each k), "n", "samples" (every process's, on the
    main process)}.

    The sampled completions come from a generator seeded afresh from cfg.seed at every call (and each process's
    rank), so an evaluation draws the same way every time and never moves the training sampler's RNG stream."""
    from tqdm.auto import tqdm

    acc = accelerator
    rows = [dataset[i] for i in range(min(n, len(dataset)))][acc.process_index::acc.num_processes]
    pass_k = list(cfg.eval_pass_k or [])
    num_samples = cfg.eval_num_samples if pass_k else 0
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + 999_983 + acc.process_index)
    bar = tqdm(total=len(rows) * (2 if num_samples else 1), desc=desc, unit="prompt", leave=leave,
               disable=not (acc.is_main_process and getattr(cfg, "progress_bar", True)))
    was_training = model.training
    model.eval()
    try:
        res = greedy_eval(model, tok, rows, reward or cfg.eval_reward, cfg.prompt_column, cfg.system_prompt,
                          cfg.max_new_tokens, cfg.eval_batch_size, eos_ids, cfg.sampler, num_samples, pass_k,
                          cfg.temperature, cfg.top_p, cfg.top_k, generator, progress=bar)
    finally:
        model.train(was_training)
        bar.close()
    keys = [f"pass@{k}" for k in pass_k]
    counts = torch.tensor([res["correct"], float(len(rows)), *(res[k] for k in keys)], dtype=torch.float64)
    counts = acc.reduce(counts.to(acc.device), "sum") if acc.num_processes > 1 else counts
    total = max(counts[1].item(), 1.0)
    samples = res["samples"]
    if acc.num_processes > 1:
        samples = acc.gather_for_metrics(samples, use_gather_object=True)
    return {"accuracy": counts[0].item() / total, **{k: counts[2 + i].item() / total for i, k in enumerate(keys)},
            "n": int(counts[1].item()), "samples": samples}


def describe(cfg, adapter: str | None, n: int, model: str | None = None) -> dict:
    """What an evaluation was of and on: the model (default cfg.model), the adapter (None = the model alone), the
    data and the settings."""
    what = {"model": model or cfg.model, "adapter": adapter, "dataset": cfg.eval_dataset or cfg.dataset,
            "split": cfg.eval_split, "n": n, "reward": cfg.eval_reward, "max_new_tokens": cfg.max_new_tokens,
            "system_prompt": cfg.system_prompt}
    if cfg.eval_pass_k:
        what.update(num_samples=cfg.eval_num_samples, temperature=cfg.temperature)
    return what


# The settings an evaluation's label names when they are not these (two evaluations of one adapter on one set
# with other prompts, decoding or reward are other results, kept side by side)
LABEL_DEFAULTS = {"reward": "gsm8k", "max_new_tokens": 128, "system_prompt": None, "temperature": 1.0,
                  "num_samples": None}


def eval_label(what: dict) -> str:
    """A label naming what was evaluated, on which data, and any setting other than LABEL_DEFAULTS: 'adapter
    runs/x/final on arithmetic/test n=200', 'model bundled on arithmetic/test n=64 (max_new_tokens 48)'."""
    thing = f"adapter {what['adapter']}" if what["adapter"] else f"model {what['model']}"
    settings = [f"{k} {what[k]!r}" if isinstance(what[k], str) else f"{k} {what[k]}"
                for k, default in LABEL_DEFAULTS.items() if k in what and what[k] != default]
    return f"{thing} on {what['dataset']}/{what['split']} n={what['n']}" + (f" ({', '.join(settings)})"
                                                                              if settings else "")


def retire_eval_results(directory: str, why: str) -> str | None:
    """Rename directory/eval.json to eval.<why>.json (its samples files stay, named in it), when what the
    directory holds is about to be replaced: results that described the old contents are kept, under a name that
    no longer claims the new ones. Returns the new path (None when there was no eval.json)."""
    path = os.path.join(directory, EVAL_FILE)
    if not os.path.isfile(path):
        return None
    kept = os.path.join(directory, f"eval.{why}.json")
    os.replace(path, kept)
    return kept


def save_eval_results(directory: str, label: str, result: dict, what: dict) -> str:
    """Merge {label: metrics + what} into directory/eval.json (the other labels stay as they are; an earlier
    result under this same label is replaced) and write the per-prompt samples to directory/eval_<label>.jsonl.
    Returns the eval.json path. Call on the main process only."""
    path = os.path.join(directory, EVAL_FILE)
    results = read_eval_results(path)
    samples_file = "eval_" + re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") + ".jsonl"
    atomic_write_text(os.path.join(directory, samples_file),
                      "".join(json.dumps(row) + "\n" for row in result.get("samples", [])))
    results[label] = {**{k: v for k, v in result.items() if k != "samples"}, **what, "samples_file": samples_file,
                      "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")
    return path


def read_eval_results(path: str) -> dict:
    """The labels of an eval.json ({} when there is none); an unreadable file is an error, never overwritten."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        try:
            results = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); move it away so that new "
                             f"evaluation results do not replace it") from None
    if not isinstance(results, dict):
        raise ValueError(f"{path} holds a JSON {type(results).__name__}, not an object of labelled results; move "
                         f"it away so that new evaluation results do not replace it")
    return results


def format_result(label: str, result: dict) -> str:
    """One line for the console: '[label] greedy accuracy 0.312, pass@4 0.500'."""
    extra = "".join(f", {k} {v:.3f}" for k, v in result.items() if k.startswith("pass@"))
    return f"[{label}] greedy accuracy {result['accuracy']:.3f}{extra}"
