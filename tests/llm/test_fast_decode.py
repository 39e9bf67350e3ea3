"""The lean Llama-family decoder computes the model's own logits (LoRA merged, left padding, GQA, q/k/v bias)
and samples exactly what the generic decode loop samples from the same random stream."""
import pytest
import torch

from llmrl.llm import fast_decode
from llmrl.llm.logprobs import prompt_positions
from llmrl.llm.model import LoraSettings, add_lora
from llmrl.llm.sampling import sample_completions
from tests.llm.tiny import tiny_model, tiny_tokenizer


def _qwen2(seed=0):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    tok = tiny_tokenizer()
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg), tok


def _with_lora(model):
    model = add_lora(model, LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("build", [tiny_model, _qwen2])
def test_logits_match_the_model_forward(build):
    model, tok = build(1)
    model = _with_lora(model)
    assert fast_decode.supports(model)
    enc = tok(["What is 3 + 4?", "hi"], return_tensors="pt", padding=True)
    ids, mask = enc.input_ids, enc.attention_mask
    cont = torch.randint(4, len(tok), (2, 5), generator=torch.Generator().manual_seed(0))
    s = fast_decode.LlamaSampler(model)
    B, P = ids.shape
    cache = [(torch.zeros(B, s.n_kv, P + 5, s.head_dim), torch.zeros(B, s.n_kv, P + 5, s.head_dim))
             for _ in s.layers]
    key_mask = torch.ones(B, P + 5, dtype=torch.bool)
    key_mask[:, :P] = mask.bool()
    h = s._forward(ids, prompt_positions(mask), cache, 0, key_mask, causal=True)
    ours = [s.logits(h[:, -1])]
    start = mask.sum(-1, keepdim=True)
    for t in range(4):  # teacher-forced decode of `cont`
        ours.append(s.logits(s._forward(cont[:, t:t + 1], start + t, cache, P + t, key_mask, causal=False)[:, -1]))
    full_ids, full_mask = torch.cat([ids, cont], 1), torch.cat([mask, torch.ones_like(cont)], 1)
    with torch.no_grad():
        ref = model(input_ids=full_ids, attention_mask=full_mask, position_ids=prompt_positions(full_mask)).logits
    for t, o in enumerate(ours):
        assert torch.allclose(o, ref[:, P - 1 + t], atol=1e-4), t


def test_sampling_equals_the_generic_decoder():
    model, tok = tiny_model(2)
    model = _with_lora(model)
    enc = tok(["What is 3 + 4?", "hi", "abc"], return_tensors="pt", padding=True)
    runs = [sample_completions(model, enc.input_ids, enc.attention_mask, 4, 16, [tok.eos_token_id], tok.pad_token_id,
                               temperature=0.9, top_p=0.95, generator=torch.Generator().manual_seed(5), engine=e)
            for e in ("auto", "hf")]
    assert torch.equal(runs[0].ids, runs[1].ids) and torch.equal(runs[0].mask, runs[1].mask)


def test_disabled_adapter_gives_base_weights():
    model, _ = tiny_model(0)
    base_q = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    model = _with_lora(model)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    merged, _ = fast_decode.effective_weight(layer, torch.float32)
    assert not torch.allclose(merged, base_q)
    with model.disable_adapter():
        plain, _ = fast_decode.effective_weight(layer, torch.float32)
    assert torch.equal(plain, base_q)


def test_unsupported_architectures_fall_back():
    from transformers import GPT2Config, GPT2LMHeadModel
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    assert not fast_decode.supports(gpt2)
