"""A lean decoder for sampling from Llama-family models (Llama, SmolLM, Mistral, Qwen2): the same math as the
Hugging Face forward, with the per-token overhead removed.

Why: decoding B*G sequences one token at a time is dominated by per-operation overhead on small tensors, not by
arithmetic. This path (1) folds the LoRA adapter into the weights once per sampling call (W + s B A), (2) fuses
the q/k/v and gate/up projections into one matmul each, (3) writes keys/values into a cache allocated once, and
(4) calls each kernel directly. `tests/llm/test_fast_decode.py` checks its logits against the model's own forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SUPPORTED = ("llama", "mistral", "qwen2")


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports(model) -> bool:
    """True for Llama-family architectures with SiLU-gated MLPs and full (not sliding-window) attention."""
    cfg = _base(model).config
    return (getattr(cfg, "model_type", None) in SUPPORTED and getattr(cfg, "hidden_act", "silu") == "silu"
            and not getattr(cfg, "use_sliding_window", False)
            and not (cfg.model_type == "mistral" and getattr(cfg, "sliding_window", None)))


def effective_weight(linear, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """(W, bias) of a Linear as the forward pass sees it: for a peft LoRA layer W + (alpha/r) B A of each
    active adapter (none while adapters are disabled)."""
    if hasattr(linear, "base_layer"):  # peft LoraLayer
        W = linear.base_layer.weight.float()
        if not getattr(linear, "disable_adapters", False) and not getattr(linear, "merged", False):
            for name in linear.active_adapters:
                if name in linear.lora_A:
                    W = W + linear.get_delta_weight(name).float()
        bias = linear.base_layer.bias
    else:
        W, bias = linear.weight, linear.bias
    return W.to(dtype), (None if bias is None else bias.to(dtype))


class LlamaSampler:
    """Prefill + cached decode for a Llama-family model with its current (LoRA-merged) weights."""

    def __init__(self, model, dtype: torch.dtype | None = None):
        base = _base(model)
        cfg, dec = base.config, base.get_decoder()
        self.dtype = dtype or next(base.parameters()).dtype
        self.cfg, self.rotary = cfg, dec.rotary_emb
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        dt = self.dtype
        self.embed = dec.embed_tokens.weight.to(dt)
        self.layers = []
        for layer in dec.layers:
            att, mlp = layer.self_attn, layer.mlp
            qkv = [effective_weight(p, dt) for p in (att.q_proj, att.k_proj, att.v_proj)]
            gu = [effective_weight(p, dt) for p in (mlp.gate_proj, mlp.up_proj)]
            self.layers.append(dict(
                ln1=layer.input_layernorm.weight.to(dt), ln2=layer.post_attention_layernorm.weight.to(dt),
                qkv=torch.cat([w for w, _ in qkv]),
                qkv_b=None if qkv[0][1] is None else torch.cat([b for _, b in qkv]),
                o=effective_weight(att.o_proj, dt), gu=torch.cat([w for w, _ in gu]),
                gu_b=None if gu[0][1] is None else torch.cat([b for _, b in gu]),
                down=effective_weight(mlp.down_proj, dt)))
        self.norm = dec.norm.weight.to(dt)
        head_w, _ = effective_weight(base.get_output_embeddings(), dt)
        self.head = head_w

    def _rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rot * sin

    def _linear(self, x: Tensor, wb) -> Tensor:
        w, b = wb
        return F.linear(x, w, b)

    def _forward(self, ids: Tensor, positions: Tensor, cache: list, start: int, key_mask: Tensor,
                 causal: bool) -> Tensor:
        """Run L new tokens (N, L) at cache slots [start, start + L); key_mask (N, start + L) says which cached
        slots are real tokens. Returns the final hidden states (N, L, H)."""
        N, L = ids.shape
        nh, nkv, D = self.n_heads, self.n_kv, self.head_dim
        x = F.embedding(ids, self.embed)
        cos, sin = self.rotary(x, positions)
        cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (N, 1, L, D)
        end = start + L
        mask = key_mask[:, None, None, :end]  # (N, 1, 1, end), True = may attend
        if causal:
            keys = torch.arange(end, device=ids.device)[None]
            query = start + torch.arange(L, device=ids.device)[:, None]
            # a padding query that sees no real key attends to itself (keeps its row finite; it is never read)
            mask = (mask & (keys <= query)) | (keys == query)
        for layer, (kc, vc) in zip(self.layers, cache):
            h = F.rms_norm(x, (x.shape[-1],), layer["ln1"], self.eps)
            qkv = F.linear(h, layer["qkv"], layer["qkv_b"])
            q, k, v = qkv.split([nh * D, nkv * D, nkv * D], dim=-1)
            q = self._rope(q.view(N, L, nh, D).transpose(1, 2), cos, sin)
            kc[:, :, start:end] = self._rope(k.view(N, L, nkv, D).transpose(1, 2), cos, sin)
            vc[:, :, start:end] = v.view(N, L, nkv, D).transpose(1, 2)
            a = self._attention(q, kc[:, :, :end], vc[:, :, :end], mask)
            x = x + self._linear(a.transpose(1, 2).reshape(N, L, nh * D), layer["o"])
            h = F.rms_norm(x, (x.shape[-1],), layer["ln2"], self.eps)
            g, u = F.linear(h, layer["gu"], layer["gu_b"]).chunk(2, dim=-1)
            x = x + self._linear(F.silu(g) * u, layer["down"])
        return F.rms_norm(x, (x.shape[-1],), self.norm, self.eps)

    def _attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """softmax(q k^T / sqrt(D) + mask) v with grouped-query heads; q (N, nh, L, D), k/v (N, nkv, S, D)."""
        N, nh, L, D = q.shape
        if L > 1:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        # One query per row (decoding): two small batched matmuls beat the CPU flash-attention kernel here.
        nkv = k.shape[1]
        s = (q.view(N, nkv, nh // nkv, D) @ k.transpose(-1, -2)).float() * D ** -0.5
        p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1).to(v.dtype)
        return (p @ v).view(N, nh, 1, D)

    def logits(self, h: Tensor) -> Tensor:
        return F.linear(h, self.head)

    @torch.no_grad()
    def generate(self, prompt_ids: Tensor, prompt_mask: Tensor, num_generations: int, max_new_tokens: int,
                 next_token, eos: Tensor, pad_token_id: int) -> Tensor:
        """Prefill each prompt once, copy its cache to its G rows, then decode; `next_token(logits) -> (N,)`.
        Returns the sampled tokens (N, <= max_new_tokens), padded after EOS with pad_token_id."""
        B, P = prompt_ids.shape
        G, dev, dt = num_generations, prompt_ids.device, self.dtype
        N, total = B * G, P + max_new_tokens
        pos = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)
        pre = [(torch.empty(B, self.n_kv, P, self.head_dim, dtype=dt, device=dev),
                torch.empty(B, self.n_kv, P, self.head_dim, dtype=dt, device=dev)) for _ in self.layers]
        h = self._forward(prompt_ids, pos, pre, 0, prompt_mask.bool(), causal=True)
        cache = []
        for kc, vc in pre:
            k = torch.empty(N, self.n_kv, total, self.head_dim, dtype=dt, device=dev)
            v = torch.empty_like(k)
            k[:, :, :P] = kc.repeat_interleave(G, dim=0)
            v[:, :, :P] = vc.repeat_interleave(G, dim=0)
            cache.append((k, v))
        key_mask = torch.ones(N, total, dtype=torch.bool, device=dev)
        key_mask[:, :P] = prompt_mask.bool().repeat_interleave(G, dim=0)
        logits = self.logits(h[:, -1]).repeat_interleave(G, dim=0)
        next_pos = prompt_mask.long().sum(-1).repeat_interleave(G)[:, None]
        done = torch.zeros(N, dtype=torch.bool, device=dev)
        out = []
        for t in range(max_new_tokens):
            tok = next_token(logits).masked_fill(done, pad_token_id)
            out.append(tok)
            done |= torch.isin(tok, eos)
            if t == max_new_tokens - 1 or bool(done.all()):
                break
            h = self._forward(tok[:, None], next_pos + t, cache, P + t, key_mask, causal=False)
            logits = self.logits(h[:, -1])
        return torch.stack(out, dim=1)
