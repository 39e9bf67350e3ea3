"""Sampling G completions per prompt with a KV cache: each prompt is prefilled ONCE and its cache expanded G
times (HF `generate(num_return_sequences=G)` prefills every copy), then all B*G sequences decode together."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import fast_decode
from .data import prompt_to_text
from .logprobs import lm_parts, prompt_positions, run_decoder


@dataclass
class Completions:
    """Sampled continuations, right-padded: ids/mask (N, C); mask is 1 up to and including the first EOS."""
    ids: Tensor
    mask: Tensor
    truncated: Tensor  # (N,) bool: no EOS within max_new_tokens


def sample_token(logits: Tensor, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 generator: torch.Generator | None = None) -> Tensor:
    """Draw one token per row from softmax(logits / T) restricted to the top-k and the top-p nucleus;
    temperature 0 is greedy. logits (N, V) -> (N,)."""
    if temperature == 0:
        return logits.argmax(-1)
    z = logits.float() / temperature
    if top_k and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        cum = torch.softmax(sorted_z, -1).cumsum(-1)
        drop = cum - torch.softmax(sorted_z, -1) > top_p  # keep the smallest prefix whose mass reaches top_p
        z = z.scatter(-1, order, sorted_z.masked_fill(drop, float("-inf")))
    # Inverse-CDF draw: one uniform number per row (torch.multinomial draws one per vocabulary entry).
    cdf = torch.softmax(z, -1).cumsum(-1)
    u = torch.rand(z.shape[0], 1, generator=generator, device=z.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(-1).clamp(max=z.shape[-1] - 1)


def finish(tokens: Tensor, eos_ids: Tensor, pad_id: int) -> Completions:
    """Mask out everything after each row's first EOS (kept) and replace it by the pad token."""
    is_eos = torch.isin(tokens, eos_ids)
    after = (is_eos.cumsum(-1) - is_eos.long()) > 0  # strictly after the first EOS
    mask = (~after).long()
    return Completions(tokens.masked_fill(after, pad_id), mask, ~is_eos.any(-1))


@torch.no_grad()
def sample_completions(model, prompt_ids: Tensor, prompt_mask: Tensor, num_generations: int, max_new_tokens: int,
                       eos_token_ids: list[int], pad_token_id: int, temperature: float = 1.0, top_p: float = 1.0,
                       top_k: int = 0, generator: torch.Generator | None = None,
                       engine: str = "auto") -> Completions:
    """G completions for each of B left-padded prompts (B, P); completion i belongs to prompt i // G.

    engine="auto" uses the lean Llama-family decoder (llmrl.llm.fast_decode) when the model is one, else the
    model's own forward ("hf")."""
    eos = torch.tensor(eos_token_ids, device=prompt_ids.device)
    next_token = lambda logits: sample_token(logits, temperature, top_p, top_k, generator)  # noqa: E731
    if engine == "auto" and fast_decode.supports(model):
        tokens = fast_decode.LlamaSampler(model).generate(prompt_ids, prompt_mask, num_generations,
                                                          max_new_tokens, next_token, eos, pad_token_id)
    else:
        tokens = hf_decode(model, prompt_ids, prompt_mask, num_generations, max_new_tokens, next_token, eos,
                           pad_token_id)
    return finish(tokens, eos, pad_token_id)


def hf_decode(model, prompt_ids: Tensor, prompt_mask: Tensor, G: int, max_new_tokens: int, next_token,
              eos: Tensor, pad_token_id: int) -> Tensor:
    """Decode with the model's own forward and a DynamicCache: prefill once, expand the cache G times."""
    from transformers import DynamicCache

    decoder, head = lm_parts(model)
    h, cache = run_decoder(decoder, prompt_ids, prompt_mask, prompt_positions(prompt_mask), DynamicCache())
    for layer in cache.layers:
        layer.keys = layer.keys.repeat_interleave(G, dim=0)
        layer.values = layer.values.repeat_interleave(G, dim=0)
    logits = head(h[:, -1]).repeat_interleave(G, dim=0)
    pos = prompt_mask.long().sum(-1).repeat_interleave(G)[:, None]
    mask = prompt_mask.repeat_interleave(G, dim=0)
    done = torch.zeros(mask.shape[0], dtype=torch.bool, device=prompt_ids.device)
    out = []
    for t in range(max_new_tokens):
        tok = next_token(logits).masked_fill(done, pad_token_id)
        out.append(tok)
        done |= torch.isin(tok, eos)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        h, cache = run_decoder(decoder, tok[:, None], mask, pos + t, cache)
        logits = head(h[:, -1])
    return torch.stack(out, dim=1)


def tokenize_prompts(tok, prompts: list, device) -> tuple[Tensor, Tensor]:
    """Left-padded ids and mask of prompts (chat messages go through the chat template, which already holds its
    special tokens; plain strings get the tokenizer's)."""
    texts = [prompt_to_text(p, tok) for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=isinstance(prompts[0], str))
    return enc.input_ids.to(device), enc.attention_mask.to(device)


def decode_completions(tok, comp) -> list[str]:
    """Completion texts, without the EOS token and what the sampler padded after it."""
    return tok.batch_decode(comp.ids * comp.mask + tok.pad_token_id * (1 - comp.mask), skip_special_tokens=True)
