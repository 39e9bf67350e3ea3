"""Evaluation of a policy: greedy decoding of held-out prompts scored by a reward function (accuracy)."""
from __future__ import annotations

import torch

from .data import make_prompt, row_prompt
from .rewards import resolve_reward_functions, score_completions
from .sampling import decode_completions, sample_completions, tokenize_prompts


@torch.no_grad()
def greedy_eval(model, tok, rows: list[dict], reward: str = "gsm8k", prompt_column: str | None = None,
                system_prompt: str | None = None, max_new_tokens: int = 128, batch_size: int = 32,
                eos_ids: list[int] | None = None, engine: str = "auto") -> dict:
    """Greedy-decode each row's prompt and score it with the named reward function (1 = correct):
    {"correct": sum of scores, "samples": [{prompt, completion, score}]}. Used for any model, TRL's included."""
    fn = resolve_reward_functions(reward)
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
        scores, _ = score_completions(fn, None, [row_prompt(row, prompt_column) for row in batch], texts, columns)
        correct += float(scores.sum())
        samples += [{"prompt": p, "completion": t, "score": float(x)} for p, t, x in zip(prompts, texts, scores)]
    return {"correct": correct, "samples": samples}
