"""A lean decoder for sampling from Llama-family models (Llama, SmolLM, Mistral, Qwen2): the same math as the
Hugging Face forward, with the per-token overhead removed.

Why: decoding B*G sequences one token at a time multiplies a few rows by every weight matrix per token, where
per-call overheads, not arithmetic, dominate. This path (1) folds the LoRA adapter into the weights once per
sampling call (W + s B A), (2) fuses the q/k/v and gate/up projections into one matmul each, (3) packs each weight
once into oneDNN's blocked layout on CPUs (`F.linear` re-packs it on every call: 1.5-3x slower at 16 rows), (4)
writes keys/values into a cache allocated once, and (5) calls each kernel directly. `tests/llm/test_fast_decode.py`
checks its logits against the model's own forward.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .logprobs import logits_head
from .model import unwrap_peft

SUPPORTED = ("llama", "mistral", "qwen2")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # cos/sin depend on the position only (not "dynamic")
FULL_WINDOW_FILL = 0.5  # a decode step attends over the whole cache once this fraction of it is filled
# A decoder layer's parameters, all of them implemented below; anything else (q/k norms, ...) means another model
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj")
LAYER_PARAMETERS = {f"{m}.{p}" for m in PROJECTIONS for p in ("weight", "bias")} | \
    {"input_layernorm.weight", "post_attention_layernorm.weight"}


def _plain_lora(module) -> bool:
    """A peft layer whose active adapters are all plain LoRA (no DoRA or other variant, no LoRA bias)."""
    if not hasattr(module, "lora_A"):
        return False
    return all(name in module.lora_A and name not in getattr(module, "lora_variant", {})
               and not getattr(module, "lora_bias", {}).get(name, False) for name in module.active_adapters)


def supports(model) -> bool:
    """True when the lean decoder computes exactly this model's forward: a Llama-family architecture with SiLU
    MLPs, full (not sliding-window) attention, a rotary embedding whose cos/sin depend on the position only, and
    decoder layers holding nothing but RMSNorms and q/k/v/o, gate/up/down projections (with or without bias,
    with or without plain LoRA adapters). Anything else decodes with the model's own forward."""
    base = unwrap_peft(model)
    cfg = base.config
    if getattr(cfg, "model_type", None) not in SUPPORTED or getattr(cfg, "hidden_act", None) != "silu":
        return False
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}  # v5 / v4 name
    if rope.get("rope_type", rope.get("type", "default")) not in ROPE_TYPES:
        return False
    if (any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or [])
            or getattr(cfg, "use_sliding_window", False) or (cfg.model_type == "mistral" and cfg.sliding_window)):
        return False
    dec = base.get_decoder()
    if any(hasattr(m, "base_layer") and not _plain_lora(m) for m in dec.modules()):
        return False
    for layer in dec.layers:
        names = {n.replace(".base_layer", "") for n, _ in layer.named_parameters()
                 if ".lora_A." not in n and ".lora_B." not in n}
        if not names <= LAYER_PARAMETERS:
            return False
    return {n for n, _ in dec.named_parameters() if not n.startswith("layers.")} == {"embed_tokens.weight",
                                                                                  "norm.weight"}


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


@functools.lru_cache(maxsize=None)
def packing_works(dtype: torch.dtype) -> bool:
    """Whether this torch and CPU can pre-pack `dtype` weights for oneDNN's linear (x86 builds; bf16 only where
    oneDNN runs it natively) and give F.linear's result: checked once per dtype on a small matrix."""
    if not torch.backends.mkldnn.is_available() or dtype not in (torch.float32, torch.bfloat16):
        return False
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=g).to(dtype) for shape in ((3, 2, 16), (24, 16), (24,)))
    with torch.autocast("cpu", enabled=False):  # the answer must not depend on the context of the first call
        try:
            y = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w, 16), b, "none", [],
                                                   "")
        except (RuntimeError, AttributeError):
            return False
        return torch.allclose(y.float(), F.linear(x, w, b).float(), atol=1e-2, rtol=1e-2)


class Linear:
    """x W^T + b for a fixed W. On a CPU, W is packed once into oneDNN's blocked layout (what F.linear does on every
    call) when `packing_works`: bf16 results are bit-identical to F.linear's, fp32 differ by rounding (another
    summation order). Elsewhere (GPUs, fp16, other builds) it is F.linear, and so it is when made under autocast
    (full fine-tuning samples fp32 weights under bf16 autocast: F.linear computes in bf16 as the model's forward
    does). `rows` hints at the batch the layout is tuned for; any batch works."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None, rows: int = 16):
        self.bias = bias
        self.packed = (weight.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
                       and packing_works(weight.dtype))
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, rows) if self.packed else weight

    def __call__(self, x: Tensor) -> Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


@dataclass
class CacheLayer:
    """One layer's keys and values (N, n_kv, S, D), S slots allocated once and filled as tokens arrive."""
    keys: Tensor
    values: Tensor


@dataclass
class Cache:
    layers: list[CacheLayer]


class LlamaSampler:
    """The forward pass of a Llama-family model with its current (LoRA-merged) weights, for decoding: `run` has
    the signature of `logprobs.run_decoder` on a `Cache` from `new_cache`, and `head` is the model's own."""

    def __init__(self, model, dtype: torch.dtype | None = None, rows: int = 16):
        base = unwrap_peft(model)
        cfg, dec = base.config, base.get_decoder()
        self.dtype = dtype or next(base.parameters()).dtype
        self.cfg, self.rotary = cfg, dec.rotary_emb
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        dt = self.dtype

        def fused(*linears) -> Linear:  # one matmul computing several projections of the same input
            wb = [effective_weight(p, dt) for p in linears]
            return Linear(torch.cat([w for w, _ in wb]), None if wb[0][1] is None else torch.cat([b for _, b in wb]),
                          rows)

        self.embed = dec.embed_tokens.weight.to(dt)
        self.layers = []
        for layer in dec.layers:
            att, mlp = layer.self_attn, layer.mlp
            self.layers.append(dict(
                ln1=layer.input_layernorm.weight.to(dt), ln2=layer.post_attention_layernorm.weight.to(dt),
                qkv=fused(att.q_proj, att.k_proj, att.v_proj), o=fused(att.o_proj),
                gu=fused(mlp.gate_proj, mlp.up_proj), down=fused(mlp.down_proj)))
        self.norm = dec.norm.weight.to(dt)
        self.logits_head = logits_head(model).to(dt)
        self._head = Linear(self.logits_head.weight, self.logits_head.bias, rows)

    def head(self, hidden: Tensor) -> Tensor:
        """The model's logits (..., V) of final hidden states (..., H) (its LogitsHead, with the packed weight)."""
        return self.logits_head.scaled(self._head(hidden))

    def new_cache(self, rows: int, length: int, device=None) -> Cache:
        """An empty cache of `length` slots for `rows` sequences."""
        shape = (rows, self.n_kv, length, self.head_dim)  # zeros: a decode step may read unfilled slots (masked)
        return Cache([CacheLayer(torch.zeros(shape, dtype=self.dtype, device=device),
                                 torch.zeros(shape, dtype=self.dtype, device=device)) for _ in self.layers])

    def _rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rot * sin

    def run(self, ids: Tensor, mask: Tensor, positions: Tensor, cache: Cache) -> tuple[Tensor, Cache]:
        """Final hidden states (N, L, H) of L new tokens (N, L) written at cache slots [S - L, S), where
        mask (N, S) says which of the S slots so far hold real tokens (one slot per column, as in HF)."""
        N, L = ids.shape
        nh, nkv, D = self.n_heads, self.n_kv, self.head_dim
        end = mask.shape[1]
        start = end - L
        x = F.embedding(ids, self.embed)
        cos, sin = self.rotary(x, positions)
        cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (N, 1, L, D)
        attend = mask.bool()[:, None, None, :]  # (N, 1, 1, end), True = may attend
        # A decode step reads the cache up to `stop`: all of it once it is at least FULL_WINDOW_FILL full (the
        # unfilled slots masked out: zero weight; in bf16 the same bits, in fp32 equal to rounding), as a
        # contiguous tensor multiplies faster than a slice of it (the batched matmul copies a slice first).
        stop = end
        if L == 1 and end >= FULL_WINDOW_FILL * cache.layers[0].keys.shape[2]:
            stop = cache.layers[0].keys.shape[2]
            attend = F.pad(attend, (0, stop - end), value=False)
        if L > 1:  # causal within the new tokens (one new token sees every cached slot)
            keys = torch.arange(end, device=ids.device)[None]
            query = start + torch.arange(L, device=ids.device)[:, None]
            # a padding query that sees no real key attends to itself (keeps its row finite; it is never read)
            attend = (attend & (keys <= query)) | (keys == query)
        for layer, kv in zip(self.layers, cache.layers):
            h = F.rms_norm(x, (x.shape[-1],), layer["ln1"], self.eps)
            qkv = layer["qkv"](h)
            q, k, v = qkv.split([nh * D, nkv * D, nkv * D], dim=-1)
            q = self._rope(q.view(N, L, nh, D).transpose(1, 2), cos, sin)
            kv.keys[:, :, start:end] = self._rope(k.view(N, L, nkv, D).transpose(1, 2), cos, sin)
            kv.values[:, :, start:end] = v.view(N, L, nkv, D).transpose(1, 2)
            a = self._attention(q, kv.keys[:, :, :stop], kv.values[:, :, :stop], attend)
            x = x + layer["o"](a.transpose(1, 2).reshape(N, L, nh * D))
            h = F.rms_norm(x, (x.shape[-1],), layer["ln2"], self.eps)
            g, u = layer["gu"](h).chunk(2, dim=-1)
            x = x + layer["down"](F.silu(g) * u)
        return F.rms_norm(x, (x.shape[-1],), self.norm, self.eps), cache

    def _attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """softmax(q k^T / sqrt(D) + mask) v with grouped-query heads; q (N, nh, L, D), k/v (N, nkv, S, D)."""
        N, nh, L, D = q.shape
        if L > 1:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        # One query per row (decoding): two small batched matmuls, in the model's own order of bf16 roundings
        # (SDPA here was faster but changed which tokens a bf16 run samples: `make demo` stopped learning).
        nkv = k.shape[1]
        s = (q.view(N, nkv, nh // nkv, D) @ k.transpose(-1, -2)).float() * D ** -0.5
        p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1).to(v.dtype)
        return (p @ v).view(N, nh, 1, D)
