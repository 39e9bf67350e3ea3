"""The lean Llama-family decoder computes the model's own logits for every option it supports (LoRA merged, left
padding, GQA, biases, untied heads, rope kinds), declines every option it does not implement, and samples exactly
what the generic decode loop samples from the same random stream."""
import pytest
import torch
import torch.nn.functional as F

from llmrl.llm import fast_decode
from llmrl.llm.sampling import decoder_for, sample_completions, teacher_forced_logits, tokenize_prompts
from tests.llm.tiny import own_logits, random_lora, tiny_causal_lm, tiny_model


ROPE = {"linear": dict(rope_type="linear", factor=2.0),
        "llama3": dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                       original_max_position_embeddings=8),
        "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64)}
# Every option of the Llama family that the lean decoder implements, one variant each
SUPPORTED = {
    "llama": ("llama", {}),
    "llama-untied": ("llama", dict(tie_word_embeddings=False)),
    "llama-attention-and-mlp-bias": ("llama", dict(attention_bias=True, mlp_bias=True)),
    "llama-head-dim": ("llama", dict(head_dim=16)),
    **{f"llama-rope-{k}": ("llama", dict(rope_scaling=v)) for k, v in ROPE.items()},
    "qwen2": ("qwen2", dict(tie_word_embeddings=False)),  # q/k/v bias
    "mistral": ("mistral", dict(sliding_window=None)),
}
# Options it does not implement: the model's own forward decodes instead
UNSUPPORTED = {
    "gelu": ("llama", dict(hidden_act="gelu")),
    "rope-dynamic": ("llama", dict(rope_scaling=dict(rope_type="dynamic", factor=2.0))),
    "rope-longrope": ("llama", dict(rope_scaling=dict(rope_type="longrope", short_factor=[1.0] * 4,
                                                      long_factor=[2.0] * 4, original_max_position_embeddings=8))),
    "mistral-sliding-window": ("mistral", dict(sliding_window=4)),
    "qwen2-sliding-window": ("qwen2", dict(use_sliding_window=True, sliding_window=4, max_window_layers=0)),
    "qwen3-qk-norm": ("qwen3", {}),
    "gpt2": ("gpt2", {}),
    "phi3": ("phi3", {}),
}


def _prompts(tok, G=2, C=6):
    """3 left-padded prompts, G random continuations each, and the prompt row of each continuation."""
    ids, mask = tokenize_prompts(tok, ["What is 3 + 4?", "hi", "abc d"], "cpu")
    cont = torch.randint(4, len(tok), (ids.shape[0] * G, C), generator=torch.Generator().manual_seed(0))
    return ids, mask, cont, torch.arange(ids.shape[0]).repeat_interleave(G)


@pytest.mark.parametrize("variant", list(SUPPORTED))
def test_lean_decoder_logits_are_the_models_own(variant):
    """LoRA merged, left padding, GQA, cache expanded G times: each decode step's logits equal the model's own."""
    arch, options = SUPPORTED[variant]
    model, tok = tiny_causal_lm(arch, **options)
    model = random_lora(model)
    assert fast_decode.supports(model)
    run, _, _ = decoder_for(model, "auto", 1, 1)
    assert isinstance(run.__self__, fast_decode.LlamaSampler)
    ids, mask, cont, gi = _prompts(tok)
    ours = teacher_forced_logits(model, "auto", ids, mask, cont, num_generations=2)
    assert torch.allclose(ours, own_logits(model, ids, mask, cont, gi), atol=1e-4)


@pytest.mark.parametrize("variant", list(UNSUPPORTED))
def test_options_the_lean_decoder_lacks_use_the_models_forward(variant):
    arch, options = UNSUPPORTED[variant]
    model, tok = tiny_causal_lm(arch, **options)
    assert not fast_decode.supports(model)
    ids, mask, cont, gi = _prompts(tok)
    ours = teacher_forced_logits(model, "auto", ids, mask, cont, num_generations=2)
    assert torch.allclose(ours, own_logits(model, ids, mask, cont, gi), atol=1e-4)


def test_adapters_the_lean_decoder_cannot_fold_use_the_models_forward():
    """DoRA, a LoRA bias, LoRA on the embedding or an extra layer parameter (as a q/k norm would add): not lean."""
    variants = [lambda m: random_lora(m, use_dora=True), lambda m: random_lora(m, lora_bias=True),
                lambda m: random_lora(m, target_modules=["q_proj", "embed_tokens"])]
    for make in variants:
        model, tok = tiny_causal_lm("llama")
        model = make(model)
        assert not fast_decode.supports(model)
        ids, mask, cont, gi = _prompts(tok)
        assert torch.allclose(teacher_forced_logits(model, "auto", ids, mask, cont, 2),
                              own_logits(model, ids, mask, cont, gi), atol=1e-4)
    model, _ = tiny_causal_lm("llama")
    assert fast_decode.supports(model)
    model.model.layers[1].self_attn.q_norm = torch.nn.LayerNorm(8)
    assert not fast_decode.supports(model)


def test_sampling_equals_the_generic_decoder():
    model, tok = tiny_model(2)
    model = random_lora(model)
    enc = tok(["What is 3 + 4?", "hi", "abc"], return_tensors="pt", padding=True)
    runs = [sample_completions(model, enc.input_ids, enc.attention_mask, 4, 16, [tok.eos_token_id], tok.pad_token_id,
                               temperature=0.9, top_p=0.95, generator=torch.Generator().manual_seed(5), engine=e)
            for e in ("auto", "hf")]
    assert torch.equal(runs[0].ids, runs[1].ids) and torch.equal(runs[0].mask, runs[1].mask)


def test_disabled_adapter_gives_base_weights():
    model, _ = tiny_model(0)
    base_q = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    model = random_lora(model)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    merged, _ = fast_decode.effective_weight(layer, torch.float32)
    assert not torch.allclose(merged, base_q)
    with model.disable_adapter():
        plain, _ = fast_decode.effective_weight(layer, torch.float32)
    assert torch.equal(plain, base_q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_linear_is_f_linear(dtype):
    """The lean decoder's Linear (weights packed once for oneDNN) gives F.linear's result for any batch shape and
    for non-contiguous inputs: bit-identical in bf16, to rounding in fp32 (another summation order)."""
    if not fast_decode.packing_works(dtype):
        pytest.skip(f"this torch/CPU cannot pack {dtype} weights for oneDNN (F.linear is used: nothing to compare)")
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(96, 64, generator=g).to(dtype), torch.randn(96, generator=g).to(dtype)
    for bias in (b, None):
        lin = fast_decode.Linear(w, bias, rows=16)
        assert lin.packed
        for x in (torch.randn(16, 64, generator=g), torch.randn(3, 7, 64, generator=g),
                  torch.randn(200, 64, generator=g), torch.randn(16, 2, 64, generator=g)[:, 0]):
            x = x.to(dtype)
            if dtype == torch.bfloat16:
                assert torch.equal(lin(x), F.linear(x, w, bias))
            else:
                torch.testing.assert_close(lin(x), F.linear(x, w, bias), atol=1e-5, rtol=1e-5)


def test_lean_decoder_without_packed_weights_is_the_same(monkeypatch):
    """Where oneDNN cannot pack (GPUs, other builds) the lean decoder multiplies with F.linear: same logits."""
    model, tok = tiny_causal_lm("llama", attention_bias=True)
    model = random_lora(model)
    ids, mask, cont, gi = _prompts(tok)
    packed = teacher_forced_logits(model, "auto", ids, mask, cont, num_generations=2)
    monkeypatch.setattr(fast_decode, "packing_works", lambda dtype: False)
    run, _, _ = decoder_for(model, "auto", 1, 1)
    assert not run.__self__.layers[0]["qkv"].packed
    plain = teacher_forced_logits(model, "auto", ids, mask, cont, num_generations=2)
    torch.testing.assert_close(plain, packed, atol=1e-5, rtol=1e-5)
    assert torch.allclose(plain, own_logits(model, ids, mask, cont, gi), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_whole_cache_window_gives_the_same_bits(monkeypatch, dtype):
    """A decode step attends over the whole cache once it is FULL_WINDOW_FILL full (unfilled slots masked): in
    bf16 the same logits, bit for bit, as attending over the filled slots only (a bf16 run samples the same
    tokens: `make demo`'s trajectory); in fp32 equal to rounding (the matmul sums another number of terms)."""
    model, tok = tiny_causal_lm("llama")
    model = random_lora(model).to(dtype)
    ids, mask, cont, gi = _prompts(tok, C=12)  # the cache fills from ~1/3 to full: both windows are used
    monkeypatch.setattr(fast_decode, "FULL_WINDOW_FILL", 2.0)  # never the whole cache
    sliced = teacher_forced_logits(model, "auto", ids, mask, cont, num_generations=2)
    monkeypatch.setattr(fast_decode, "FULL_WINDOW_FILL", 0.0)  # always the whole cache
    whole = teacher_forced_logits(model, "auto", ids, mask, cont, num_generations=2)
    monkeypatch.setattr(fast_decode, "FULL_WINDOW_FILL", 0.5)
    mixed = teacher_forced_logits(model, "auto", ids, mask, cont, num_generations=2)
    if dtype == torch.bfloat16:
        assert torch.equal(whole, sliced) and torch.equal(mixed, sliced)
    else:
        torch.testing.assert_close(whole, sliced, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mixed, sliced, atol=1e-5, rtol=1e-5)
    assert torch.allclose(sliced.float(), own_logits(model, ids, mask, cont, gi).float(), atol=0.1)


def test_lean_decoder_in_bf16_is_the_models_bf16_forward():
    """In bf16 (dtype auto on CPUs with fast bf16) the lean decoder is as close to the fp32 logits as the bf16
    model's own forward is (within 2x: another order of the same bf16 operations)."""
    model, tok = tiny_causal_lm("llama")
    model = random_lora(model)
    ids, mask, cont, gi = _prompts(tok)
    exact = own_logits(model, ids, mask, cont, gi)
    model = model.to(torch.bfloat16)
    lean = teacher_forced_logits(model, "auto", ids, mask, cont, num_generations=2).float()
    own = own_logits(model, ids, mask, cont, gi).float()
    bf16_error = (own - exact).abs().max()  # the bf16 model's own distance from its fp32 logits
    assert bf16_error > 0
    assert (lean - exact).abs().max() <= 2 * bf16_error


def test_lean_decoder_under_autocast_computes_as_the_model_does():
    """Full fine-tuning keeps fp32 weights and samples under bf16 autocast: the lean decoder then multiplies with
    F.linear (autocast casts it to bf16, as in the model's forward), not with weights packed in fp32 (a bf16 input
    against them crashed oneDNN: 'could not create a primitive descriptor')."""
    fast_decode.packing_works.cache_clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # probed under autocast: the same answer as outside it
        inside = fast_decode.packing_works(torch.float32)
    fast_decode.packing_works.cache_clear()
    assert inside == fast_decode.packing_works(torch.float32)
    model, tok = tiny_causal_lm("llama")
    ids, mask, cont, gi = _prompts(tok)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        run, _, _ = decoder_for(model, "auto", 1, 1)
        assert not run.__self__.layers[0]["o"].packed
        lean = teacher_forced_logits(model, "auto", ids, mask, cont, num_generations=2).float()
        own = own_logits(model, ids, mask, cont, gi).float()
    exact = own_logits(model, ids, mask, cont, gi)
    assert (lean - exact).abs().max() <= 2 * (own - exact).abs().max()


def test_full_fine_tuning_in_bf16_samples_with_the_lean_decoder(tmp_path):
    from tests.llm.tiny import tiny_trainer
    fast_decode.packing_works(torch.float32)  # known outside autocast first, as in a run that evaluated before
    tr = tiny_trainer(tmp_path, lora=False, dtype="bfloat16", max_steps=1, save_steps=0)
    assert tr.autocast_dtype == torch.bfloat16 and fast_decode.supports(tr.model)
    metrics, batch = tr.step()
    assert batch.completion_ids.shape[0] == 8 and metrics["loss"] == metrics["loss"]
