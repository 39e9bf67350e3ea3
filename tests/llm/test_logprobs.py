"""Per-token log-probs: the shared-prefix forward and the chunked log-softmax are exact rewrites of the plain
computation (values and gradients), and bf16 stays close to fp32."""
import pytest
import torch

from llmrl.llm.logprobs import (LogitsHead, chunked_token_logprobs, completion_logprobs, completion_logprobs_naive,
                                prompt_positions)
from tests.llm.tiny import random_lora, tiny_model


def _batch(tok, seed=0, G=3, C=9):
    enc = tok(["What is 3 + 4?", "hi", "a longer prompt with more characters"], return_tensors="pt", padding=True)
    g = torch.Generator().manual_seed(seed)
    N = enc.input_ids.shape[0] * G
    comp = torch.randint(4, len(tok), (N, C), generator=g)
    lengths = torch.randint(1, C + 1, (N,), generator=g)
    mask = (torch.arange(C)[None] < lengths[:, None]).long()
    return enc.input_ids, enc.attention_mask, comp, mask, torch.arange(3).repeat_interleave(G)


def _lora_model(seed=0):
    m, tok = tiny_model(seed)
    return random_lora(m), tok


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


def test_reference_formula_full_logits():
    """The naive path equals log_softmax of the model's own logits at the positions before each token."""
    m, tok = _lora_model()
    ids, am, comp, cm, gi = _batch(tok)
    lp, _ = completion_logprobs_naive(m, ids, am, comp, cm, gi, temperature=0.7)
    full_ids, full_mask = torch.cat([ids[gi], comp], 1), torch.cat([am[gi], cm], 1)
    logits = m(input_ids=full_ids, attention_mask=full_mask, position_ids=prompt_positions(full_mask)).logits
    ref = torch.log_softmax(logits[:, ids.shape[1] - 1:-1].float() / 0.7, -1).gather(-1, comp[..., None])[..., 0]
    assert torch.allclose(lp * cm, ref * cm, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_shared_prefix_equals_naive_values_and_gradients(temperature):
    m, tok = _lora_model()
    ids, am, comp, cm, gi = _batch(tok)
    out = []
    for fn in (completion_logprobs, completion_logprobs_naive):
        m.zero_grad()
        lp, ent = fn(m, ids, am, comp, cm, gi, temperature=temperature, chunk=7)
        w = torch.linspace(-1, 1, lp.numel()).view_as(lp)  # a generic linear functional of the log-probs
        (lp * cm * w).sum().backward()
        out.append((lp * cm, ent * cm, _grads(m)))
    (a, ea, ga), (b, eb, gb) = out
    assert torch.allclose(a, b, atol=2e-5)
    assert torch.allclose(ea, eb, atol=2e-5)
    assert torch.allclose(ga, gb, atol=1e-5, rtol=1e-4)
    assert ga.abs().max() > 1e-3  # the gradient is not trivially zero


def test_shared_prefix_with_uneven_groups_and_full_finetuning():
    """Micro-batches cut groups anywhere (counts 1, 3, 2); gradients reach every weight incl. the LM head."""
    m, tok = tiny_model(1)
    ids, am, comp, cm, _ = _batch(tok, seed=2, G=2)
    gi = torch.tensor([0, 1, 1, 1, 2, 2])
    res = []
    for fn in (completion_logprobs, completion_logprobs_naive):
        m.zero_grad()
        lp, _ = fn(m, ids, am, comp, cm, gi)
        (lp * cm).sum().backward()
        res.append((lp * cm, _grads(m)))
    assert torch.allclose(res[0][0], res[1][0], atol=2e-5)
    assert torch.allclose(res[0][1], res[1][1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bias, scale, softcap", [(False, 1.0, None), (True, 1.0, None), (True, 0.25, None),
                                                 (False, 1.0, 2.0), (True, 3.0, 1.5)])
def test_chunked_logprobs_and_entropy_against_direct(bias, scale, softcap):
    """Values, entropy and gradients (hidden, weight, bias) of the chunked path against autograd through
    softcap(scale * (W h + b)) / T written out in full: of the log-probs, of the entropy (an entropy bonus) alone,
    and of both together."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 16, generator=g, requires_grad=True)
    W = torch.randn(50, 16, generator=g, requires_grad=True)
    b = torch.randn(50, generator=g, requires_grad=True) if bias else None
    y = torch.randint(0, 50, (3, 5), generator=g)
    lp, ent = chunked_token_logprobs(h, LogitsHead(W, b, scale, softcap), y, temperature=0.8, chunk=4)
    z = scale * (h @ W.T + (b if bias else 0))
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    z = z / 0.8
    ref = torch.log_softmax(z, -1).gather(-1, y[..., None])[..., 0]
    ref_ent = -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1)
    assert torch.allclose(lp, ref, atol=1e-5) and torch.allclose(ent, ref_ent, atol=1e-5)
    w, w2 = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    inputs = (h, W) + ((b,) if bias else ())
    for f in (lambda a, e: (a * w).sum(), lambda a, e: (e * w2).sum(), lambda a, e: (a * w + e * w2).sum()):
        ours = torch.autograd.grad(f(lp, ent), inputs, retain_graph=True)
        want = torch.autograd.grad(f(ref, ref_ent), inputs, retain_graph=True)
        for a, r in zip(ours, want):
            assert r.abs().max() > 1e-2
            torch.testing.assert_close(a, r, atol=2e-5, rtol=1e-4)


def test_bf16_logprobs_close_to_fp32():
    m, tok = _lora_model()
    ids, am, comp, cm, gi = _batch(tok)
    with torch.no_grad():
        lp32, _ = completion_logprobs(m, ids, am, comp, cm, gi)
        lp16, _ = completion_logprobs(m.to(torch.bfloat16), ids, am, comp, cm, gi)
    assert lp16.dtype == torch.float32
    diff = ((lp32 - lp16) * cm).abs()
    assert diff.max() < 0.1 and diff.sum() / cm.sum() < 0.02
