"""activation_memory: the lean forwards give the stock modules' outputs and gradients bit for bit, on every tiny
architecture, and store less for backward."""
import copy

import pytest
import torch

from llmrl.llm.activation_memory import LoraDelta, RMSNormFn, SwiGLU, lean_training_modules

from .test_architectures import ARCHITECTURES
from .tiny import random_lora, tiny_causal_lm


def _pair(model_type: str, dtype: torch.dtype, **lora):
    model, _ = tiny_causal_lm(model_type)
    model = random_lora(model.to(dtype), **lora)  # peft keeps the adapter in fp32 over a bf16 model
    lean = copy.deepcopy(model)
    return model, lean, lean_training_modules(lean)


def _logits_and_grads(model, ids, weights):
    model.zero_grad()
    logits = model(input_ids=ids).logits
    (logits.float() * weights).sum().backward()
    return logits.detach(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_lean_forward_is_the_stock_forward(model_type, dtype):
    model, lean, counts = _pair(model_type, dtype)
    assert counts["lora"] > 0
    ids = torch.randint(4, 60, (3, 7), generator=torch.Generator().manual_seed(0))
    w = torch.randn(3, 7, model.config.vocab_size, generator=torch.Generator().manual_seed(1))
    want_logits, want = _logits_and_grads(model, ids, w)
    got_logits, got = _logits_and_grads(lean, ids, w)
    assert torch.equal(got_logits, want_logits)
    assert want.keys() == got.keys()
    for name in want:  # the same roundings in the same order: equal, not close
        assert torch.equal(got[name], want[name]), name


def test_probes_switch_what_matches_and_keep_the_rest():
    _, _, llama = _pair("llama", torch.bfloat16)
    # 2 layers: 7 linear layers each get LoRA (all-linear), one SwiGLU MLP, two norms; the final norm
    assert llama == {"lora": 14, "swiglu_mlp": 2, "rmsnorm": 5}
    _, _, gemma = _pair("gemma", torch.bfloat16)  # (1 + w) norm and a GELU-tanh MLP: their own forwards
    assert gemma["rmsnorm"] == 0 and gemma["swiglu_mlp"] == 0 and gemma["lora"] == 14
    _, _, gpt2 = _pair("gpt2", torch.float32)     # LayerNorm, no gate: LoRA only
    assert gpt2["rmsnorm"] == 0 and gpt2["swiglu_mlp"] == 0 and gpt2["lora"] > 0
    _, _, fp32 = _pair("llama", torch.float32)    # an fp32 norm stores nothing extra: its own forward
    assert fp32 == {"lora": 14, "swiglu_mlp": 2, "rmsnorm": 0}


def _saved_bytes(model, ids) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids).logits.sum()
    return sum(seen.values())


def test_lean_modules_store_less():
    """bf16 Llama, LoRA on q/k/v/o (fp32 adapters): peft stores an fp32 copy of each adapter's input, the MLP
    three intermediate tensors, the norms fp32 copies; the lean forwards store about half as much in all."""
    model, _ = tiny_causal_lm("llama", hidden_size=64, intermediate_size=256)
    model = random_lora(model.to(torch.bfloat16), target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    lean = copy.deepcopy(model)
    lean_training_modules(lean)
    ids = torch.randint(4, 60, (4, 64), generator=torch.Generator().manual_seed(0))
    stock, small = _saved_bytes(model, ids), _saved_bytes(lean, ids)
    assert small < 0.65 * stock, (small, stock)


def test_lora_cases_peft_handles_itself():
    """Adapters off, merged, several active, dropout: the lean forward hands these to peft (same outputs)."""
    model, lean, _ = _pair("llama", torch.float32, lora_dropout=0.2)
    ids = torch.randint(4, 60, (2, 5), generator=torch.Generator().manual_seed(0))
    model.train(), lean.train()
    torch.manual_seed(3)
    a = model(input_ids=ids).logits
    torch.manual_seed(3)
    b = lean(input_ids=ids).logits
    assert torch.equal(a, b)  # the same dropout masks: peft's forward ran in both
    model.eval(), lean.eval()
    with model.disable_adapter(), lean.disable_adapter():
        assert torch.equal(model(input_ids=ids).logits, lean(input_ids=ids).logits)
    model.merge_adapter(), lean.merge_adapter()
    assert torch.equal(model(input_ids=ids).logits, lean(input_ids=ids).logits)


def test_functions_against_autograd_of_the_plain_expressions():
    """Each function's gradient against autograd through the expression it stands for: fp64 for the adapter and
    the MLP (equal to 1e-10); the norm computes in fp32 whatever its input (as Llama's), so fp32 to 1e-5."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    a = torch.randn(2, 6, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(5, 2, dtype=torch.float64, generator=g, requires_grad=True)
    up = torch.randn(3, 4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    x32 = torch.randn(3, 4, 6, generator=g, requires_grad=True)
    w32 = torch.randn(6, generator=g, requires_grad=True)
    cases = [
        (lambda: LoraDelta.apply(x, a, b, 1.5), lambda: (x @ a.T) @ b.T * 1.5, (x, a, b), 1e-10),
        (lambda: SwiGLU.apply(x, up), lambda: torch.nn.functional.silu(x) * up, (x, up), 1e-10),
        (lambda: RMSNormFn.apply(x32, w32, 1e-6),
         lambda: w32 * x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6), (x32, w32), 1e-5),
    ]
    for lean, plain, inputs, tol in cases:
        out_lean, out_plain = lean(), plain()
        assert torch.allclose(out_lean, out_plain, atol=tol)
        r = torch.randn(out_plain.shape, dtype=out_plain.dtype, generator=g)
        got = torch.autograd.grad((out_lean * r).sum(), inputs)
        want = torch.autograd.grad((out_plain * r).sum(), inputs)
        for gg, ww in zip(got, want):
            assert torch.allclose(gg, ww, atol=tol)


def test_switched_model_copies_and_pickles(tmp_path):
    """A deep copy and a pickled copy of a switched model run their own (switched) modules, with equal outputs."""
    model, lean, _ = _pair("llama", torch.bfloat16)
    ids = torch.randint(4, 60, (2, 5), generator=torch.Generator().manual_seed(0))
    want = model(input_ids=ids).logits
    torch.save(lean, tmp_path / "m.pt")
    for other in (copy.deepcopy(lean), torch.load(tmp_path / "m.pt", weights_only=False)):
        norm = other.get_base_model().model.norm
        assert norm.forward.args[0] is norm  # bound to the copy, not to the original
        assert torch.equal(other(input_ids=ids).logits, want)


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "olmo2"])
def test_full_bf16_training_gradients_are_the_stock_ones(model_type):
    """Every weight trainable in bf16, the norms' included. OLMo2 scales in fp32 before the cast, (w * h).to(dtype),
    which agrees with Llama's w * h.to(dtype) only while w is all ones (its init): the probe must not be fooled."""
    model, _ = tiny_causal_lm(model_type)
    model = model.to(torch.bfloat16)
    lean = copy.deepcopy(model)
    lean_training_modules(lean)
    ids = torch.randint(4, 60, (3, 7), generator=torch.Generator().manual_seed(0))
    w = torch.randn(3, 7, model.config.vocab_size, generator=torch.Generator().manual_seed(1))
    want_logits, want = _logits_and_grads(model, ids, w)
    got_logits, got = _logits_and_grads(lean, ids, w)
    assert torch.equal(got_logits, want_logits)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    for norm in (m for m in lean.modules() if "rms" in type(m).__name__.lower()):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))  # the probe put the weight back


def test_gated_norm_called_with_its_gate():
    """Mamba2's norm(x, gate) is Llama's norm when called without a gate (the probe's call): with one, its own."""
    from transformers.models.mamba2.modeling_mamba2 import MambaRMSNormGated

    norm = MambaRMSNormGated(16, group_size=16).to(torch.bfloat16)
    lean = copy.deepcopy(norm)
    assert lean_training_modules(lean)["rmsnorm"] == 1
    g = torch.Generator().manual_seed(0)
    x, gate = torch.randn(2, 3, 16, generator=g).bfloat16(), torch.randn(2, 3, 16, generator=g).bfloat16()
    assert torch.equal(lean(x, gate), norm(x, gate))
    assert torch.equal(lean(x, gate=gate), norm(x, gate=gate))


def test_lora_layer_on_a_single_vector():
    """A 1-D input (one row) to a LoRA layer: peft's forward and gradients."""
    model, lean, _ = _pair("llama", torch.bfloat16)
    stock_q, lean_q = (m.get_base_model().model.layers[0].self_attn.q_proj for m in (model, lean))
    x = torch.randn(32, generator=torch.Generator().manual_seed(0)).bfloat16()
    grads = []
    for layer in (stock_q, lean_q):
        xi = x.clone().requires_grad_()
        out = layer(xi)
        grads.append((out, *torch.autograd.grad(out.float().sum(), [xi, layer.lora_A["default"].weight])))
    for got, want in zip(grads[1], grads[0]):
        assert torch.equal(got, want)


def test_switching_a_model_in_training_mode_draws_no_random_numbers():
    """The probes run in eval mode: LoRA dropout neither draws from the run's RNG nor hides the MLPs from the
    probe; the model's training flags are as they were."""
    model, _ = tiny_causal_lm("llama")
    model = random_lora(model.to(torch.bfloat16), lora_dropout=0.1).train()
    torch.manual_seed(0)
    want = torch.rand(4)
    torch.manual_seed(0)
    counts = lean_training_modules(model)
    assert torch.equal(torch.rand(4), want)
    assert counts["swiglu_mlp"] == 2
    assert all(m.training for m in model.modules())
