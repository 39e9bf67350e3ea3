"""Checks on the real bundled SmolLM2-135M-Instruct (slow: loads the GGUF; run with `make test-slow`)."""
import os

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundled():
    from llmrl.llm.model import load_policy
    return load_policy("bundled", lora=None, dtype=torch.float32)


def test_bundled_loads_by_name_and_by_gguf_path(bundled):
    from llmrl.llm.model import BUNDLED_GGUF, bundled_model_dir, load_policy
    model, tok = bundled
    assert model.config.model_type == "llama" and tok.padding_side == "left"
    again, _ = load_policy(os.path.join(bundled_model_dir(), BUNDLED_GGUF), lora=None)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_fast_decoder_matches_hf_on_the_real_model(bundled):
    from llmrl.llm.model import add_lora, LoraSettings
    from llmrl.llm.sampling import sample_completions
    import copy
    model, tok = bundled
    model = add_lora(copy.deepcopy(model), LoraSettings(r=8, alpha=16))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    msgs = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Name a color."}]]
    texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    runs = [sample_completions(model, enc.input_ids, enc.attention_mask, 2, 24, [tok.eos_token_id], tok.pad_token_id,
                               generator=torch.Generator().manual_seed(0), engine=e) for e in ("auto", "hf")]
    agree = (runs[0].ids == runs[1].ids).float().mean().item()
    assert agree > 0.9  # fp32, same random stream: identical up to rare near-ties


def test_bf16_logprobs_track_fp32_on_the_real_model(bundled):
    from llmrl.llm.logprobs import completion_logprobs
    import copy
    model, tok = bundled
    enc = tok(["The capital of France is", "2 + 2 ="], return_tensors="pt", padding=True)
    tok.padding_side = "right"  # completions are right-padded
    comp = tok([" Paris, a city", " 4, of course"], return_tensors="pt", padding=True, add_special_tokens=False)
    tok.padding_side = "left"
    ids = comp.input_ids
    gi = torch.arange(2)
    with torch.no_grad():
        lp32, _ = completion_logprobs(model, enc.input_ids, enc.attention_mask, ids, comp.attention_mask, gi)
        lp16, _ = completion_logprobs(copy.deepcopy(model).to(torch.bfloat16), enc.input_ids, enc.attention_mask,
                                      ids, comp.attention_mask, gi)
    m = comp.attention_mask.bool()
    assert (lp32 - lp16)[m].abs().mean() < 0.1
