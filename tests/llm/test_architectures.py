"""Log-probs, entropy, their gradient and the sampler's logits are the model's own, log_softmax(model(...).logits / T),
for tiny random models of many architectures transformers ships (head bias, logit scale, soft-cap, untied heads,
final norms, learned positions, ...); what llmrl cannot reproduce is refused with one line."""
import pytest
import torch

from llmrl.llm.logprobs import completion_logprobs, completion_logprobs_naive
from llmrl.llm.sampling import check_logits_path, teacher_forced_logits, tokenize_prompts
from tests.llm.tiny import own_logits, random_lora, tiny_causal_lm

# Llama/Qwen2/Mistral: the lean-decoder family; Phi, GPT-J, CodeGen: a head bias; Gemma2/3: soft-capping; Cohere,
# Granite, HyperCLOVA X: a logit scale; GPT-2, OPT, Bloom, Falcon, GPT-NeoX, ...: other decoders, norms, positions.
ARCHITECTURES = ["llama", "qwen2", "mistral", "phi", "gptj", "codegen", "gpt2", "gemma", "gemma2", "gemma3_text",
                 "cohere", "cohere2", "granite", "hyperclovax", "opt", "bloom", "falcon", "gpt_neox", "gpt_bigcode",
                 "starcoder2", "qwen3", "phi3", "stablelm", "olmo2"]
T = 0.7


def _batch(tok, G=2, C=6, seed=0):
    ids, mask = tokenize_prompts(tok, ["What is 3 + 4?", "hi", "abc d"], "cpu")
    g = torch.Generator().manual_seed(seed)
    N = ids.shape[0] * G
    comp = torch.randint(4, len(tok), (N, C), generator=g)
    cmask = (torch.arange(C)[None] < torch.randint(1, C + 1, (N,), generator=g)[:, None]).long()
    return ids, mask, comp, cmask, torch.arange(ids.shape[0]).repeat_interleave(G)


def _grads(model):
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_logprobs_entropy_and_gradient_are_the_models_own(arch, lora):
    model, tok = tiny_causal_lm(arch)
    if lora:
        model = random_lora(model)
    ids, mask, comp, cmask, gi = _batch(tok)
    w = torch.linspace(-1, 1, comp.numel()).view(comp.shape) * cmask  # a generic linear functional of the log-probs
    model.zero_grad()
    logp_all = torch.log_softmax(own_logits(model, ids, mask, comp, gi) / T, -1)
    want = logp_all.gather(-1, comp[..., None]).squeeze(-1)
    want_ent = -(logp_all.exp() * logp_all).sum(-1)
    (want * w).sum().backward()
    want_grads = _grads(model)
    for fn in (completion_logprobs, completion_logprobs_naive):
        model.zero_grad()
        lp, ent = fn(model, ids, mask, comp, cmask, gi, temperature=T, chunk=5)
        (lp * w).sum().backward()
        assert torch.allclose(lp * cmask, want * cmask, atol=1e-4), (fn.__name__, (lp - want)[cmask.bool()].abs().max())
        assert torch.allclose(ent * cmask, want_ent * cmask, atol=1e-4), fn.__name__
        for a, b in zip(_grads(model), want_grads):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-3), fn.__name__
    assert max(g.abs().max() for g in want_grads) > 1e-3


@pytest.mark.parametrize("engine", ["auto", "hf"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sampler_logits_are_the_models_own(arch, engine):
    """The logits every decode step samples from (prefill once, cache expanded G times) equal the model's own."""
    model, tok = tiny_causal_lm(arch)
    model = random_lora(model)
    ids, mask, comp, cmask, gi = _batch(tok)
    with torch.no_grad():
        ours = teacher_forced_logits(model, engine, ids, mask, comp, num_generations=2)
        want = own_logits(model, ids, mask, comp, gi)
    assert torch.allclose(ours.float(), want, atol=1e-4), (ours - want).abs().max()
    check_logits_path(model, engine)  # the trainer's one-time check passes


def test_check_refuses_a_head_it_cannot_reproduce():
    """A model whose forward transforms the logits in a way no config field describes is refused by name, whatever
    the shared_prefix/sampler settings (none of them avoids scoring through the head)."""
    from transformers import LlamaForCausalLM

    class OffsetLlama(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits + torch.arange(out.logits.shape[-1], dtype=out.logits.dtype) * 0.1
            return out

    model, _ = tiny_causal_lm("llama")
    odd = OffsetLlama(model.config).eval()
    odd.load_state_dict(model.state_dict())
    check_logits_path(model)
    for sampler in ("auto", "hf"):
        for shared in (True, False):
            with pytest.raises(ValueError, match=r"OffsetLlama \(model_type 'llama'\): log-probs of its hidden "
                                                 r"states through its output layer .* no llmrl setting avoids it"):
                check_logits_path(odd, sampler, shared)


def test_check_refuses_a_decoder_without_a_kv_cache_of_layers():
    """Mamba's recurrent state is not a key/value cache that can be expanded per completion: refused in one line."""
    model, _ = tiny_causal_lm("mamba", hidden_size=16)
    for shared in (True, False):
        with pytest.raises(ValueError) as err:
            check_logits_path(model, "auto", shared)
        assert "MambaForCausalLM (model_type 'mamba')" in str(err.value) and "\n" not in str(err.value)
        assert "no llmrl setting avoids it" in str(err.value)


@pytest.mark.parametrize("options", [dict(target_modules=["q_proj", "lm_head"]),
                                     dict(target_modules=["q_proj"], modules_to_save=["lm_head"])])
def test_adapter_on_the_output_layer_is_refused(options):
    model, _ = tiny_causal_lm("llama", tie_word_embeddings=False)
    model = random_lora(model, **options)
    with pytest.raises(ValueError, match="a peft adapter wraps the output layer .* leave lm_head out of the adapter"):
        check_logits_path(model)


def test_trainer_runs_the_check_at_construction(tmp_path):
    from llmrl.llm.config import GRPOConfig
    from llmrl.llm.trainer import GRPOTrainer
    from tests.llm.tiny import length_reward, tiny_dataset

    model, tok = tiny_causal_lm("mamba", hidden_size=16)
    cfg = GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_batch_size=2, num_generations=2,
                     report_to=["none"], dtype="float32")
    with pytest.raises(ValueError, match="MambaForCausalLM"):
        GRPOTrainer(cfg, model=model, tokenizer=tok, reward_funcs=[length_reward], train_dataset=tiny_dataset())


def test_check_runs_16_bit_models_in_fp32_and_restores_them_exactly():
    """In bf16 the lean decoder and a KV cache differ from the full forward by rounding as large as bf16 itself;
    the check casts to fp32 for its few tokens and back, leaving every tensor (and the train/eval mode) as it was."""
    model, _ = tiny_causal_lm("llama")
    model = random_lora(model.to(torch.bfloat16)).train()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    check_logits_path(model, "auto")
    after = model.state_dict()
    assert all(after[n].dtype == t.dtype and torch.equal(after[n], t) for n, t in before.items())
    assert model.training and {t.dtype for t in before.values()} == {torch.bfloat16, torch.float32}
