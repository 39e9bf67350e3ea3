"""Smaller saved activations for the training pass: the same forward, bit for bit, storing less for backward.

Autograd keeps, for every operation, the tensors its backward needs, in the form the forward happened to make
them. Three places of a LoRA-tuned decoder store more than backward needs (measured on SmolLM2-135M in bf16,
16 completions of 128 tokens: 2.1 GB saved by one forward, of which these three are ~1.35 GB):

- LoRA (peft): each adapter casts its input to the adapter's dtype (fp32) and autograd stores that copy for
  lora_A's weight gradient: q, k and v each store their own fp32 copy of the same bf16 input. `LoraDelta` stores
  the input once, in its own dtype, and casts it again in backward.
- SwiGLU MLP: `act(gate) * up` stores gate (for the activation's backward), up, and act(gate) (for the product's).
  `SwiGLU` stores gate and up and recomputes act(gate), one elementwise op, in backward.
- RMSNorm (Llama form): the fp32 upcast of the input is stored. `RMSNormFn` stores the input in its own dtype and
  the per-row inverse RMS.
The first and the last save only where the model computes in a narrower dtype than fp32; in an fp32 model they
keep their own forwards.

Each replacement computes its forward with the very operations of the module it replaces (the outputs are
identical; tests/llm/test_activation_memory.py checks outputs and gradients against the stock modules). A norm
or MLP module is switched only after a probe shows its own forward gives the same bits as the replacement, so
architectures that differ (Gemma's (1 + w) norm, a GELU MLP) keep their own code. Only the forward methods of
module instances change (an instance attribute: a partial of a module-level function, so a switched model still
deep-copies and pickles): parameters, state dicts and saving are untouched.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# ----------------------------------------------------------------------------- the three autograd functions
class LoraDelta(torch.autograd.Function):
    """scaling * B(A(x)) for x (..., d_in), A (r, d_in), B (d_out, r) -> (..., d_out) in A's dtype, storing x in its
    own dtype (peft stores x cast to A's dtype: twice the bytes for a bf16 model with fp32 adapters)."""

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, b: Tensor, scaling: float) -> Tensor:
        xa = F.linear(x.to(a.dtype), a)
        ctx.save_for_backward(x, a, b, xa)
        ctx.scaling = scaling
        return F.linear(xa, b) * scaling

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, a, b, xa = ctx.saved_tensors
        g = _rows(grad * ctx.scaling)                      # d loss / d B(A(x)), rows flattened
        g_xa = g @ b                                       # (rows, r)
        grad_b = g.T @ _rows(xa) if ctx.needs_input_grad[2] else None
        grad_a = g_xa.T @ _rows(x).to(a.dtype) if ctx.needs_input_grad[1] else None
        grad_x = (g_xa @ a).to(x.dtype).view_as(x) if ctx.needs_input_grad[0] else None
        return grad_x, grad_a, grad_b, None


def _rows(t: Tensor) -> Tensor:
    """(..., d) -> (rows, d); a 1-D tensor is one row."""
    return t.reshape(-1, t.shape[-1])


class SwiGLU(torch.autograd.Function):
    """silu(gate) * up (Shazeer 2020), storing gate and up only; silu(gate) is recomputed in backward. Gradients
    are autograd's own: the same product rule and aten's silu_backward."""

    @staticmethod
    def forward(ctx, gate: Tensor, up: Tensor) -> Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: Tensor):
        gate, up = ctx.saved_tensors
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        grad_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        return grad_gate, grad_up


class RMSNormFn(torch.autograd.Function):
    """weight * (x / sqrt(mean(x^2) + eps)) over the last axis, computed in fp32 and cast back as Llama's RMSNorm
    does (Zhang & Sennrich 2019); stores x in its own dtype and the per-row 1/rms (fp32), not the fp32 copy of x.
    Backward takes autograd's steps through that expression in autograd's order, so gradients match to the bit."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        xf = x.to(torch.float32)
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, rstd = ctx.saved_tensors
        xf = x.to(torch.float32)
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (grad * (xf * rstd).to(x.dtype)).sum_to_size(weight.shape)
        if not ctx.needs_input_grad[0]:
            return None, grad_w, None
        # autograd's own steps through Llama's expression, in its order (the same roundings):
        gh = (grad * weight).to(torch.float32)                     # through weight * h.to(dtype)
        gr = (gh * xf).sum(-1, keepdim=True)                       # d/d rstd of xf * rstd
        gu = (-0.5 * gr) * rstd.pow(3)                             # rsqrt: -0.5 * grad * result^3
        grad_x = gh * rstd + (gu.expand_as(xf) / xf.shape[-1]) * (2.0 * xf)  # mean, then pow(2): grad * 2x
        return grad_x.to(x.dtype), grad_w, None


# ----------------------------------------------------------------------------- the module forwards
def _lora_forward(self, x: Tensor, *args, **kwargs) -> Tensor:
    """peft's LoRA Linear forward for one plain adapter (no DoRA/variant, no dropout, not merged, adapters on) whose
    input is cast to the adapter's dtype, with the adapter's product as LoraDelta; every other case (an input
    already in the adapter's dtype stores nothing extra) is peft's own forward."""
    name = self.active_adapters[0] if len(self.active_adapters) == 1 else None
    plain = (name is not None and not args and not kwargs and not self.disable_adapters and not self.merged
             and name in self.lora_A and name not in getattr(self, "lora_variant", {})
             and self.lora_B[name].bias is None
             and isinstance(self.lora_dropout[name], nn.Identity) and getattr(self, "cast_input_dtype_enabled", True)
             and x.dtype != self.lora_A[name].weight.dtype and not torch.is_autocast_enabled(x.device.type))
    if not plain:
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    delta = LoraDelta.apply(x, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name])
    return (result + delta).to(result.dtype)


def _swiglu_mlp_forward(self, x: Tensor, *args, **kwargs) -> Tensor:
    if args or kwargs:  # (the probe saw the one-argument call only)
        return type(self).forward(self, x, *args, **kwargs)
    return self.down_proj(SwiGLU.apply(self.gate_proj(x), self.up_proj(x)))


def _rmsnorm_forward(self, x: Tensor, *args, **kwargs) -> Tensor:
    if args or kwargs:  # a gated norm (Mamba2's norm(x, gate)): the probe saw the one-argument call only
        return type(self).forward(self, x, *args, **kwargs)
    return RMSNormFn.apply(x, self.weight, self._lean_eps)


def _norm_eps(module: nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps", "epsilon"):
        if isinstance(getattr(module, name, None), float):
            return getattr(module, name)
    return None


@torch.no_grad()
def _same_output(module: nn.Module, lean, x: Tensor) -> bool:
    # in eval mode: dropout would make the two differ and draw from the global RNG the run's sampling uses (the
    # lean forwards call the same submodules in the same order, so what holds in eval mode holds in training)
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        return torch.equal(module(x), lean(module, x))
    except Exception:  # a module of another form (other attributes, other arguments): keep its own forward
        return False
    finally:
        for m, training in modes:
            m.training = training


@torch.no_grad()
def _same_norm_output(module: nn.Module, x: Tensor, gen: torch.Generator) -> bool:
    # with a random weight: at its usual init (ones) w * h.to(dtype) and (w * h).to(dtype) (OLMo2's order) agree
    # to the bit, and gradients and trained weights would not
    weight = module.weight
    kept = weight.detach().clone()
    weight.copy_(1 + 0.5 * torch.randn(weight.shape, generator=gen).to(weight.device, weight.dtype))
    try:
        return _same_output(module, _rmsnorm_forward, x)
    finally:
        weight.copy_(kept)


def lean_training_modules(model: nn.Module) -> dict[str, int]:
    """Switch, in place, the forwards of `model`'s LoRA Linear layers, SwiGLU MLPs and Llama-form RMSNorms to the
    versions above (same outputs, less saved for backward). Norms and MLPs are switched only where a probe on a
    random input (for a norm, with a random weight) gives identical bits. Returns how many modules of each kind were
    switched."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    counts = {"lora": 0, "swiglu_mlp": 0, "rmsnorm": 0}
    gen = torch.Generator().manual_seed(0)
    for module in model.modules():
        if "forward" in vars(module):  # already switched (or patched by someone else): leave it
            continue
        if type(module) is LoraLinear:
            module.forward = partial(_lora_forward, module)
            counts["lora"] += 1
            continue
        weight = getattr(module, "weight", None)
        if all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            d = getattr(module.gate_proj, "in_features", None)
            p = next(module.parameters(), None)
            if d is None or p is None:
                continue
            x = torch.randn(2, 3, d, generator=gen).to(p.device, p.dtype)
            if _same_output(module, _swiglu_mlp_forward, x):
                module.forward = partial(_swiglu_mlp_forward, module)
                counts["swiglu_mlp"] += 1
        elif isinstance(weight, nn.Parameter) and weight.dim() == 1 and weight.dtype != torch.float32 \
                and _norm_eps(module) is not None and "rms" in type(module).__name__.lower():
            # (an fp32 norm stores its input itself, nothing more: it keeps its own forward)
            module._lean_eps = _norm_eps(module)
            x = (3 * torch.randn(2, 3, weight.shape[0], generator=gen)).to(weight.device, weight.dtype)
            if _same_norm_output(module, x, gen):
                module.forward = partial(_rmsnorm_forward, module)
                counts["rmsnorm"] += 1
            else:
                del module._lean_eps
    return counts
