"""Generation: prompts as text -> left-padded ids -> G completions per prompt -> text.

Each prompt is prefilled ONCE and its cache expanded G times (HF `generate(num_return_sequences=G)` prefills every
copy, `logprobs.prefill`), then all B*G sequences decode together (`decode_loop`), with the model's own forward or
the lean Llama-family decoder (`fast_decode`). `check_logits_path` verifies once that all of it (and the log-probs)
reproduces the model's own logits.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import chain

import torch
from torch import Tensor

from . import fast_decode
from .data import prompt_to_text
from .logprobs import (Prefix, completion_logprobs, completion_logprobs_naive, lm_parts, logits_head, prefill,
                       prompt_positions, run_decoder)
from .model import unwrap_peft

ENGINES = ("auto", "hf")


def tokenize_prompts(tok, prompts: list, device) -> tuple[Tensor, Tensor]:
    """Left-padded ids and mask of prompts, whatever the tokenizer's padding_side (generation appends on the
    right); chat messages go through the chat template, which already holds its special tokens, plain strings get
    the tokenizer's."""
    texts = [prompt_to_text(p, tok) for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left",
              add_special_tokens=isinstance(prompts[0], str))
    return enc.input_ids.to(device), enc.attention_mask.to(device)


def decode_completions(tok, comp) -> list[str]:
    """Completion texts, without the EOS token and what the sampler padded after it."""
    return tok.batch_decode(comp.ids * comp.mask + tok.pad_token_id * (1 - comp.mask), skip_special_tokens=True)


@dataclass
class Completions:
    """Sampled continuations, right-padded: ids/mask (N, C); mask is 1 up to and including the first EOS."""
    ids: Tensor
    mask: Tensor
    truncated: Tensor  # (N,) bool: no EOS within max_new_tokens
    times: dict = field(default_factory=dict)  # seconds: sampler_setup, prefill, decode


def clock(device) -> float:
    """time.perf_counter() once the work queued on `device` is done (CUDA runs kernels asynchronously), so that
    the time between two clocks is the time of the work between them."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def filtered_probs(logits: Tensor, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0) -> Tensor:
    """softmax(logits / T) restricted to the top-k and the top-p nucleus and renormalized; (N, V) -> (N, V) fp32."""
    z = logits.float() / temperature
    if top_k and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        cum = torch.softmax(sorted_z, -1).cumsum(-1)
        drop = cum - torch.softmax(sorted_z, -1) > top_p  # keep the smallest prefix whose mass reaches top_p
        z = z.scatter(-1, order, sorted_z.masked_fill(drop, float("-inf")))
    return torch.softmax(z, -1)


def inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """The token i with cdf_{i-1} <= u * cdf_V < cdf_i for u in [0, 1): each token of probability p is drawn for
    a set of u of measure p, so a token of probability 0 never is. probs (N, V), u (N,) -> (N,)."""
    cdf = probs.cumsum(-1)
    # Searching on the right skips the tokens of probability 0 at u = 0 (cdf = 0 ... 0) and on a CDF step; the
    # minimum with the first index where the cdf reaches its total keeps u * cdf_V rounded up to cdf_V in range.
    i = torch.searchsorted(cdf, (u.to(cdf.dtype) * cdf[:, -1])[:, None], right=True).squeeze(-1)
    return torch.minimum(i, cdf.argmax(-1))


def sample_token(logits: Tensor, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 generator: torch.Generator | None = None) -> Tensor:
    """Draw one token per row from softmax(logits / T) restricted to the top-k and the top-p nucleus;
    temperature 0 is greedy. logits (N, V) -> (N,)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = filtered_probs(logits, temperature, top_p, top_k)
    # One uniform number per row (torch.multinomial draws one per vocabulary entry).
    u = torch.rand(probs.shape[0], generator=generator, device=probs.device, dtype=probs.dtype)
    return inverse_cdf(probs, u)


def finish(tokens: Tensor, eos_ids: Tensor, pad_id: int) -> Completions:
    """Mask out everything after each row's first EOS (kept) and replace it by the pad token."""
    is_eos = torch.isin(tokens, eos_ids)
    after = (is_eos.cumsum(-1) - is_eos.long()) > 0  # strictly after the first EOS
    mask = (~after).long()
    return Completions(tokens.masked_fill(after, pad_id), mask, ~is_eos.any(-1))


def decoder_for(model, engine: str, rows: int, length: int, decode_rows: int | None = None):
    """(run, head, empty cache) of the forward that decodes: the lean Llama-family decoder when engine="auto" and
    `fast_decode.supports(model)`, else the model's own decoder with a DynamicCache. `run` has the signature of
    `logprobs.run_decoder` without its first argument; the cache has room for `rows` x `length` tokens.
    `decode_rows` (rows x G once the prefill is repeated) only tunes the lean decoder's weight layout."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "auto" and fast_decode.supports(model):
        lean = fast_decode.LlamaSampler(model, rows=decode_rows or rows)
        return lean.run, lean.head, lean.new_cache(rows, length, lean.embed.device)
    from transformers import DynamicCache

    decoder, head = lm_parts(model)
    return partial(run_decoder, decoder), head, DynamicCache()


def decode_loop(run, head, prefix: Prefix, max_new_tokens: int, next_token, eos: Tensor, pad_token_id: int) -> Tensor:
    """Autoregressive decoding from a prefilled prefix: each step draws `next_token(logits (N, V)) -> (N,)` and
    feeds it back through `run`, until every row has emitted an EOS or max_new_tokens. Returns the tokens
    (N, <= max_new_tokens), pad_token_id after a row's EOS."""
    logits, mask, cache = head(prefix.hidden), prefix.mask, prefix.cache
    done = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
    out = []
    for t in range(max_new_tokens):
        tok = next_token(logits).masked_fill(done, pad_token_id)
        out.append(tok)
        done |= torch.isin(tok, eos)
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        h, cache = run(tok[:, None], mask, prefix.position + t, cache)
        logits = head(h[:, -1])
    return torch.stack(out, dim=1)


@torch.no_grad()
def sample_completions(model, prompt_ids: Tensor, prompt_mask: Tensor, num_generations: int, max_new_tokens: int,
                       eos_token_ids: list[int], pad_token_id: int, temperature: float = 1.0, top_p: float = 1.0,
                       top_k: int = 0, generator: torch.Generator | None = None,
                       engine: str = "auto") -> Completions:
    """G completions for each of B left-padded prompts (B, P); completion i belongs to prompt i // G.

    engine="auto" uses the lean Llama-family decoder (llmrl.llm.fast_decode) when it supports the model, else
    the model's own forward ("hf"). The result's `times` holds the seconds of each phase: the decoder's setup
    (LoRA folded into the weights), the prefill, and the decode loop (its first token's LM head included)."""
    dev = prompt_ids.device
    eos = torch.tensor(eos_token_ids, device=dev)
    next_token = lambda logits: sample_token(logits, temperature, top_p, top_k, generator)  # noqa: E731
    B, P = prompt_ids.shape
    t0 = clock(dev)
    run, head, cache = decoder_for(model, engine, B, P + max_new_tokens, B * num_generations)
    t1 = clock(dev)
    prefix = prefill(run, prompt_ids, prompt_mask, num_generations, cache)
    t2 = clock(dev)
    comp = finish(decode_loop(run, head, prefix, max_new_tokens, next_token, eos, pad_token_id), eos, pad_token_id)
    comp.times = {"sampler_setup": t1 - t0, "prefill": t2 - t1, "decode": clock(dev) - t2}
    return comp


@torch.no_grad()
def teacher_forced_logits(model, engine: str, prompt_ids: Tensor, prompt_mask: Tensor, continuation: Tensor,
                          num_generations: int = 1) -> Tensor:
    """The logits (N, C, V) that `sample_completions` would sample from if it drew `continuation` (N, C) after the
    B left-padded prompts (B, P), G = num_generations rows per prompt: the prefill, cache and decode loop of
    `engine`, with a `next_token` that feeds the given tokens back."""
    seen = []

    def teacher(logits: Tensor) -> Tensor:
        seen.append(logits)
        return continuation[:, len(seen) - 1]

    (B, P), C = prompt_ids.shape, continuation.shape[1]
    run, head, cache = decoder_for(model, engine, B, P + C, B * num_generations)
    prefix = prefill(run, prompt_ids, prompt_mask, num_generations, cache)
    decode_loop(run, head, prefix, C, teacher, torch.tensor([-1], device=prompt_ids.device), -1)  # no EOS
    return torch.stack(seen, 1)


@torch.no_grad()
def check_logits_path(model, sampler: str = "auto", shared_prefix: bool = True) -> None:
    """Refuse, with a one-line ValueError naming the architecture and what to do, a model whose logits llmrl's
    paths do not reproduce. A few tokens of two left-padded rows go through the model's own forward,
    log_softmax(model(...).logits), and through (1) the naive log-probs (the `LogitsHead` on the decoder's hidden
    states), (2) the padded row alone, (3) the decode loop of `sampler` (prefill, expanded cache, steps), (4) the
    shared-prefix log-probs when `shared_prefix`; each must agree to 1e-2 in every log-prob.

    It runs in fp32 whatever the model's dtype (16-bit weights are cast up and back, exactly, which needs twice
    their memory for a moment): in 16 bits, decoding in another order than the full forward (a KV cache, the lean
    decoder) differs from it by about as much as the 16-bit forward differs from fp32, which would hide what this
    check looks for."""
    base = unwrap_peft(model)
    name = f"{type(base).__name__} (model_type {base.config.model_type!r})"
    unsupported = ("no llmrl setting avoids it: use a model of another architecture (Llama, Qwen2, Mistral, Gemma, "
                   "Phi, GPT-2, ... pass this check)")
    head = logits_head(model)
    P, C = 5, 3  # row 0: 2 pads + 3 prompt tokens, row 1: 5 prompt tokens; then C continuation tokens each
    ids = torch.randint(0, head.weight.shape[0], (2, P + C), generator=torch.Generator().manual_seed(0))
    ids = ids.to(head.weight.device)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    batch = (ids[:, :P], mask[:, :P], ids[:, P:], mask[:, P:], torch.arange(2, device=ids.device))
    log_softmax = lambda logits: torch.log_softmax(logits.float(), -1)  # noqa: E731
    lean = sampler == "auto" and fast_decode.supports(model)
    checks = [
        ("log-probs of its hidden states through its output layer (weight, bias, scale, soft-cap)", unsupported,
         lambda: completion_logprobs_naive(model, *batch)[0], lambda ref: ref[:, P - 1:-1].gather(
             -1, ids[:, P:, None]).squeeze(-1)),
        ("logits of a left-padded row (vs the row alone)", unsupported,
         lambda: log_softmax(model(input_ids=ids[:1, 2:]).logits[0]), lambda ref: ref[0, 2:]),
        ("the lean decoder's logits" if lean else "sampling logits (prefill once, expanded KV cache)",
         "set sampler='hf'" if lean else unsupported,
         lambda: log_softmax(teacher_forced_logits(model, sampler, ids[:, :P], mask[:, :P], ids[:, P:])),
         lambda ref: ref[:, P - 1:-1])]
    if shared_prefix:
        checks.append(("shared-prefix log-probs (prefill once, expanded KV cache)", "set shared_prefix=False",
                       lambda: completion_logprobs(model, *batch)[0], checks[0][3]))
    was_training = model.training
    model.eval()
    try:
        with _float32(model):
            ref = _run_or_refuse(name, "its forward with (input_ids, attention_mask, position_ids)", unsupported,
                                 lambda: log_softmax(model(input_ids=ids, attention_mask=mask,
                                                           position_ids=prompt_positions(mask)).logits))
            for what, fix, compute, want in checks:
                err = float((_run_or_refuse(name, what, fix, compute) - want(ref)).abs().max())
                if not err <= 1e-2:  # also catches NaN
                    raise ValueError(f"{name}: {what} differ from the model's own log_softmax(logits) by {err:.3g}; "
                                     f"{fix}")
    finally:
        model.train(was_training)


@contextmanager
def _float32(model):
    """The model's 16-bit parameters and buffers in fp32 for a while, then back (exactly: fp32 holds every bf16
    and fp16 value), with fp32 matmuls at full precision (no TF32)."""
    halves = [(t, t.dtype) for t in chain(model.parameters(), model.buffers())
              if t.dtype in (torch.bfloat16, torch.float16)]
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        for t, _ in halves:
            t.data = t.data.float()
        yield
    finally:
        for t, dtype in halves:
            t.data = t.data.to(dtype)
        torch.set_float32_matmul_precision(precision)


def _run_or_refuse(name: str, what: str, fix: str, compute):
    try:
        return compute()
    except Exception as e:  # noqa: BLE001 (whatever fails, llmrl cannot use this path: say why, in one line)
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"{name}: {what} failed ({cause}); {fix}") from e
