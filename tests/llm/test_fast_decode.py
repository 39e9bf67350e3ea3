"""The lean Llama-family decoder computes the model's own logits for every option it supports (LoRA merged, left
padding, GQA, biases, untied heads, rope kinds), declines every option it does not implement, and samples exactly
what the generic decode loop samples from the same random stream."""
import pytest
import torch

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
