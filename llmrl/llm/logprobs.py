"""Per-token log-probabilities of sampled completions under a causal LM.

Two ideas keep this fast and small:
- Shared prompt prefix. The G completions of a prompt share it, so the prompt goes through the transformer ONCE
  per group and its key/value cache is expanded G times; the completions attend to it. Gradients flow back
  through the expanded cache into the single prompt pass, so the result (and its gradient) is exactly that of
  running every (prompt + completion) sequence on its own: `completion_logprobs_naive` is that plain path,
  kept for tests and for models whose cache cannot be expanded.
- Chunked log-softmax. log pi(y_t) = z_{y_t}/T - logsumexp(z/T) needs the full-vocabulary logits z = W h, but
  never all at once: `chunked_token_logprobs` computes them a chunk of positions at a time and recomputes them
  in the backward pass instead of storing them (the LM head's logits are the largest activation of all).
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor


class _ChunkedLogprobs(torch.autograd.Function):
    """log softmax(W h / T)[y] and the entropy of softmax(W h / T), chunk by chunk; logits are never stored.

    Written for memory traffic: per chunk, the forward reads the fp32 logits z' = z - max(z) four times (max,
    exp, and the two sums below) and the backward three times (exp, scale, cast), all in place. With
    S = sum exp(z'): log pi(y) = z'_y - log S and H = log S - sum(exp(z') z') / S.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float, chunk: int):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        ent = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        w = weight.to(hidden.dtype)
        for s in range(0, n, chunk):
            h = hidden[s:s + chunk] / temperature  # (h / T) W^T = z / T: scale the small operand
            z = (h @ w.T).float()
            zmax = z.amax(dim=-1, keepdim=True)
            z.sub_(zmax)
            e = torch.exp(z)
            S = e.sum(-1)
            ez = torch.bmm(e.unsqueeze(1), z.unsqueeze(2)).view(-1)  # sum(e z') without a temporary
            logS = S.log()
            logp[s:s + chunk] = z.gather(-1, targets[s:s + chunk, None]).squeeze(-1) - logS
            ent[s:s + chunk] = logS - ez / S
            lse[s:s + chunk] = logS + zmax.squeeze(-1)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp: Tensor, grad_ent: Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        T, chunk = ctx.temperature, ctx.chunk
        w = weight.to(hidden.dtype)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s:s + chunk] / T
            gl = grad_logp[s:s + chunk, None]
            # d logp_y / d z = onehot(y) - softmax(z), z = W h / T: g = grad * (onehot(y) - p), in place on z
            g = (h @ w.T).float().sub_(lse[s:s + chunk, None]).exp_().mul_(-gl)
            g.scatter_add_(-1, targets[s:s + chunk, None], gl)
            g = g.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[s:s + chunk] = (g @ w) / T
            if grad_weight is not None:
                grad_weight += (g.T @ h).float()
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def chunked_token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float = 1.0,
                           chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """log pi(y) = log softmax(W h / T)_y and entropy H(softmax(W h / T)) per position, in fp32.

    hidden (..., H), weight (V, H) = the LM head, targets (...) -> (logp (...), entropy (...)). The entropy
    carries no gradient (it is for logging).
    """
    shape = targets.shape
    logp, ent = _ChunkedLogprobs.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
                                       float(temperature), int(chunk))
    return logp.view(shape), ent.view(shape)


def lm_parts(model):
    """(decoder, lm_head) of a causal LM, looking through a peft wrapper: the decoder returns final hidden states."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


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
    pos = prompt_positions(prompt_mask)
    prompt_h, cache = run_decoder(decoder, prompt_ids, prompt_mask, pos, DynamicCache())
    for layer in cache.layers:  # the same prompt keys/values for each of its completions (differentiable)
        layer.keys = layer.keys.repeat_interleave(counts, dim=0)
        layer.values = layer.values.repeat_interleave(counts, dim=0)
    C = completion_ids.shape[1]
    start = prompt_mask.long().sum(-1).repeat_interleave(counts)
    mask = torch.cat([prompt_mask.repeat_interleave(counts, dim=0), completion_mask.to(prompt_mask.dtype)], 1)
    h, _ = run_decoder(decoder, completion_ids, mask, start[:, None] + torch.arange(C, device=start.device), cache)
    # The hidden state that predicts completion token t is the one at the position before it: for t = 0 the
    # prompt's last position (shared by the group), for t > 0 the completion's own position t - 1.
    first = prompt_h[:, -1:].repeat_interleave(counts, dim=0)
    hs = torch.cat([first, h[:, :-1]], dim=1)
    return chunked_token_logprobs(hs, head.weight, completion_ids, temperature, chunk)


def completion_logprobs_naive(model, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                              completion_mask: Tensor, group_index: Tensor, temperature: float = 1.0,
                              chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Same result as `completion_logprobs`, running every prompt + completion as its own sequence."""
    decoder, head = lm_parts(model)
    ids = torch.cat([prompt_ids[group_index], completion_ids], 1)
    mask = torch.cat([prompt_mask[group_index], completion_mask.to(prompt_mask.dtype)], 1)
    h, _ = run_decoder(decoder, ids, mask, prompt_positions(mask))
    P = prompt_ids.shape[1]
    return chunked_token_logprobs(h[:, P - 1:-1], head.weight, completion_ids, temperature, chunk)
