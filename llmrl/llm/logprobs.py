"""Per-token log-probabilities of sampled completions under a causal LM.

Three ideas keep this exact, fast and small:
- The model's own logits. Everything between the decoder's last hidden state and the logits (the output layer's
  weight and bias, a logit scale, a soft-cap) is one `LogitsHead`, read from the model once and used here, by
  the sampler and by the lean decoder; `sampling.check_logits_path` refuses a model whose logits it does not
  reproduce.
- Shared prompt prefix. The G completions of a prompt share it, so the prompt goes through the transformer ONCE
  per group and its key/value cache is expanded G times (`prefill`); the completions attend to it. Gradients flow
  back through the expanded cache into the single prompt pass, so the result (and its gradient) is exactly that
  of running every (prompt + completion) sequence on its own: `completion_logprobs_naive` is that plain path,
  kept for tests and for models whose cache cannot be expanded.
- Chunked log-softmax. log pi(y_t) = z_{y_t}/T - logsumexp(z/T) needs the full-vocabulary logits z, but never
  all at once: `chunked_token_logprobs` computes them a chunk of positions at a time and recomputes them in the
  backward pass instead of storing them (the LM head's logits are the largest activation of all).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import unwrap_peft


@dataclass
class LogitsHead:
    """logits = softcap(scale * (W h + b)) with softcap(z) = c tanh(z / c): the step from the decoder's last
    hidden state to the logits in the architectures transformers ships. A bias: Phi, GPT-J, CodeGen; a scale:
    Cohere's `logit_scale`, Granite's 1 / `logits_scaling`; a soft-cap: Gemma 2/3's `final_logit_softcapping`."""
    weight: Tensor                # (V, H), the output layer (tied to the input embedding or not)
    bias: Tensor | None = None    # (V,)
    scale: float = 1.0
    softcap: float | None = None

    def __call__(self, hidden: Tensor) -> Tensor:
        """Logits (..., V) of hidden states (..., H), in the order and dtype of the models' own forward."""
        return self.scaled(F.linear(hidden, self.weight, self.bias))

    def scaled(self, z: Tensor) -> Tensor:
        """The logits of the output layer's result z = W h + b: the scale, then the soft-cap."""
        if self.scale != 1.0:
            z = z * self.scale
        if self.softcap is not None:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    def to(self, dtype: torch.dtype) -> LogitsHead:
        return replace(self, weight=self.weight.to(dtype), bias=None if self.bias is None else self.bias.to(dtype))


def logits_head(model) -> LogitsHead:
    """The `LogitsHead` of a causal LM (through a peft wrapper); one-line error when its output layer is not a
    plain Linear (a peft adapter on lm_head, via target_modules or modules_to_save, is not supported)."""
    base = unwrap_peft(model)
    out = base.get_output_embeddings()
    if type(out) is not nn.Linear:
        name = f"{type(base).__name__} (model_type {base.config.model_type!r})"
        if hasattr(out, "base_layer") or hasattr(out, "modules_to_save"):
            raise ValueError(f"{name}: a peft adapter wraps the output layer (lm_head); llmrl scores tokens with its "
                             f"weight, so leave lm_head out of the adapter's target_modules and modules_to_save")
        raise ValueError(f"{name}: the output layer is a {type(out).__name__}, not a Linear whose weight and bias "
                         f"give the logits; this architecture is not supported")
    cfg = base.config.get_text_config()
    scale = 1.0
    if cfg.model_type.startswith("cohere") and getattr(cfg, "logit_scale", None) is not None:
        scale = float(cfg.logit_scale)
    elif getattr(cfg, "logits_scaling", None) is not None:  # Granite divides by it, HyperCLOVA X multiplies
        scale = float(cfg.logits_scaling) if cfg.model_type.startswith("hyperclovax") else 1.0 / cfg.logits_scaling
    elif getattr(cfg, "lm_head_multiplier", None) is not None:  # Falcon-H1
        scale = float(cfg.lm_head_multiplier)
    softcap = getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logits_soft_cap", None)
    return LogitsHead(out.weight, out.bias, scale, None if softcap is None else float(softcap))


def _chunk_logits(h: Tensor, w: Tensor, b: Tensor | None, cap_over_t: float | None) -> tuple[Tensor, Tensor | None]:
    """fp32 logits / T of a chunk whose h and b are already divided by `div` (see `_ChunkedLogprobs`), and the tanh
    of the soft-cap (None without one): z/T = u, or (c / T) tanh(u) under a soft-cap c, with u = (W h + b) / div."""
    u = h @ w.T
    if b is not None:
        u += b
    u = u.float()
    if cap_over_t is None:
        return u, None
    t = u.tanh_()
    return t * cap_over_t, t


class _ChunkedLogprobs(torch.autograd.Function):
    """log softmax(z / T)[y] and the entropy of softmax(z / T) with z = LogitsHead(h), chunk by chunk; logits are
    never stored.

    The scalar factor on W h + b (scale / T, or scale / c under a soft-cap c) goes on the small operands h and b
    as a division by `div`. Written for memory traffic: per chunk, the forward reads the fp32 logits z' = z - max(z)
    four times (max, exp, and the two sums below) and the backward three times (exp, scale, cast), all in place.
    With S = sum exp(z'): log pi(y) = z'_y - log S and H = log S - sum(exp(z') z') / S.
    Both outputs are differentiable (the entropy for an entropy bonus): with p = softmax(z/T),
    d log pi(y) / d(z/T) = onehot(y) - p and dH / d(z/T) = -p (log p + H).
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, temperature: float,
                scale: float, softcap: float | None, chunk: int):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        ent = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        div = (softcap or temperature) / scale
        cap_over_t = None if softcap is None else softcap / temperature
        w = weight.to(hidden.dtype)
        b = None if bias is None else bias.to(hidden.dtype) / div
        for s in range(0, n, chunk):
            z, _ = _chunk_logits(hidden[s:s + chunk] / div, w, b, cap_over_t)
            zmax = z.amax(dim=-1, keepdim=True)
            z.sub_(zmax)
            e = torch.exp(z)
            S = e.sum(-1)
            ez = torch.bmm(e.unsqueeze(1), z.unsqueeze(2)).view(-1)  # sum(e z') without a temporary
            logS = S.log()
            logp[s:s + chunk] = z.gather(-1, targets[s:s + chunk, None]).squeeze(-1) - logS
            ent[s:s + chunk] = logS - ez / S
            lse[s:s + chunk] = logS + zmax.squeeze(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.div, ctx.cap_over_t, ctx.chunk = div, cap_over_t, chunk
        ctx.set_materialize_grads(False)  # an unused output's gradient comes as None: no work for it
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp: Tensor | None, grad_ent: Tensor | None):
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        div, cap_over_t, chunk = ctx.div, ctx.cap_over_t, ctx.chunk
        if grad_logp is None and grad_ent is None:
            return None, None, None, None, None, None, None, None
        w = weight.to(hidden.dtype)
        b = None if bias is None else bias.to(hidden.dtype) / div
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_h else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s:s + chunk] / div
            gl = None if grad_logp is None else grad_logp[s:s + chunk, None]
            z, t = _chunk_logits(h, w, b, cap_over_t)
            logp_all = z.sub_(lse[s:s + chunk, None])  # log p, in place on z
            if grad_ent is None:  # g = gl (onehot(y) - p), in place
                g = logp_all.exp_().mul_(-gl)
            else:  # g = gl onehot(y) - p (gl + ge (log p + H)); one more (chunk, V) buffer for p
                p = logp_all.exp()
                g = logp_all.add_(ent[s:s + chunk, None]).mul_(grad_ent[s:s + chunk, None])
                if gl is not None:
                    g.add_(gl)
                g.mul_(p).neg_()
                del p
            if gl is not None:
                g.scatter_add_(-1, targets[s:s + chunk, None], gl)
            if t is not None:  # through z/T = (c/T) tanh(u): d/du = (c/T) (1 - tanh(u)^2)
                g.mul_(t.square_().neg_().add_(1)).mul_(cap_over_t)
            g = g.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[s:s + chunk] = (g @ w) / div
            if grad_weight is not None:
                grad_weight += (g.T @ h).float()
            if grad_bias is not None:
                grad_bias += g.float().sum(0) / div
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def chunked_token_logprobs(hidden: Tensor, head: LogitsHead, targets: Tensor, temperature: float = 1.0,
                           chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """log pi(y) = log softmax(head(h) / T)_y and entropy H(softmax(head(h) / T)) per position, in fp32.

    hidden (..., H), targets (...) -> (logp (...), entropy (...)). Both carry their gradient to the hidden states
    and to the head's weight and bias (the entropy's serves an entropy bonus in the loss).
    """
    shape = targets.shape
    logp, ent = _ChunkedLogprobs.apply(hidden.reshape(-1, hidden.shape[-1]), head.weight, head.bias,
                                       targets.reshape(-1), float(temperature), float(head.scale), head.softcap,
                                       int(chunk))
    return logp.view(shape), ent.view(shape)


def lm_parts(model) -> tuple[nn.Module, LogitsHead]:
    """(decoder, head) of a causal LM, looking through a peft wrapper: the decoder returns final hidden states."""
    return unwrap_peft(model).get_decoder(), logits_head(model)


def run_decoder(decoder, ids: Tensor, mask: Tensor, positions: Tensor, cache=None) -> tuple[Tensor, object]:
    """Final hidden states (N, L, H) and the key/value cache, appending to `cache` when one is given."""
    # transformers renamed `past_key_values` to `cache` (v5); accept both spellings.
    kw = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    out = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=cache is not None,
                  **({kw: cache} if cache is not None else {}))
    return out.last_hidden_state, getattr(out, kw, None)


def prompt_positions(prompt_mask: Tensor) -> Tensor:
    """Position ids of left-padded prompts (the first real token is position 0); (B, P) -> (B, P)."""
    return (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)


def check_left_padded(prompt_mask: Tensor) -> None:
    """One-line error unless every prompt row is left-padded (0...0 1...1) and not empty."""
    ok = (prompt_mask[:, 1:] >= prompt_mask[:, :-1]).all(-1) & prompt_mask[:, -1].bool()
    if not bool(ok.all()):
        row = int((~ok).nonzero()[0])
        raise ValueError(f"prompt_mask row {row} is not a left-padded, non-empty prompt: pad prompts on the left "
                         f"(llmrl.llm.sampling.tokenize_prompts does, whatever the tokenizer's padding_side)")


@dataclass
class Prefix:
    """N continuations of B prompts after one prefill: what decoding from the prompts' last position needs."""
    hidden: Tensor    # (N, H) final hidden state at the prompt's last position: it predicts the first new token
    cache: object     # the prompts' keys/values (`.layers[i].keys/.values`), prompt i's repeated for its rows
    mask: Tensor      # (N, P) prompt attention mask
    position: Tensor  # (N, 1) position id of the first new token


def prefill(run, prompt_ids: Tensor, prompt_mask: Tensor, counts: Tensor | int, cache) -> Prefix:
    """Prefill once, expand the cache: run the B left-padded prompts (B, P) once with
    `run(ids, mask, positions, cache) -> (hidden (B, P, H), cache)` and repeat prompt i's keys/values for its
    counts[i] continuations (an int: that many each). HF generate(num_return_sequences=G) prefills every copy;
    gradients flow back through the repeated cache into the one prompt pass."""
    check_left_padded(prompt_mask)
    h, cache = run(prompt_ids, prompt_mask, prompt_positions(prompt_mask), cache)
    for layer in cache.layers:
        layer.keys = layer.keys.repeat_interleave(counts, dim=0)
        layer.values = layer.values.repeat_interleave(counts, dim=0)
    return Prefix(h[:, -1].repeat_interleave(counts, dim=0), cache, prompt_mask.repeat_interleave(counts, dim=0),
                  prompt_mask.long().sum(-1, keepdim=True).repeat_interleave(counts, dim=0))


def completion_logprobs(model, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                        completion_mask: Tensor, group_index: Tensor, temperature: float = 1.0,
                        chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Per-token log pi(y_t | prompt, y_<t) of completions, prompt computed once per distinct prompt.

    prompt_ids/mask (P_n, P) left-padded distinct prompts; completion_ids/mask (N, C) right-padded;
    group_index (N,) which prompt row each completion continues (non-decreasing, e.g. [0,0,0,1,1,1]).
    Returns (logp (N, C), entropy (N, C)), fp32; padded positions hold junk to be masked by the caller.
    """
    from transformers import DynamicCache

    decoder, head = lm_parts(model)
    counts = torch.bincount(group_index, minlength=prompt_ids.shape[0])
    prefix = prefill(partial(run_decoder, decoder), prompt_ids, prompt_mask, counts, DynamicCache())
    C = completion_ids.shape[1]
    mask = torch.cat([prefix.mask, completion_mask.to(prefix.mask.dtype)], 1)
    h, _ = run_decoder(decoder, completion_ids, mask, prefix.position + torch.arange(C, device=mask.device),
                       prefix.cache)
    # The hidden state that predicts completion token t is the one at the position before it: for t = 0 the
    # prompt's last position (shared by the group), for t > 0 the completion's own position t - 1.
    hs = torch.cat([prefix.hidden[:, None], h[:, :-1]], dim=1)
    return chunked_token_logprobs(hs, head, completion_ids, temperature, chunk)


def completion_logprobs_naive(model, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                              completion_mask: Tensor, group_index: Tensor, temperature: float = 1.0,
                              chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Same result as `completion_logprobs`, running every prompt + completion as its own sequence."""
    check_left_padded(prompt_mask)
    decoder, head = lm_parts(model)
    ids = torch.cat([prompt_ids[group_index], completion_ids], 1)
    mask = torch.cat([prompt_mask[group_index], completion_mask.to(prompt_mask.dtype)], 1)
    h, _ = run_decoder(decoder, ids, mask, prompt_positions(mask))
    P = prompt_ids.shape[1]
    return chunked_token_logprobs(h[:, P - 1:-1], head, completion_ids, temperature, chunk)
