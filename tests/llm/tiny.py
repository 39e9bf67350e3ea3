"""A tiny random Llama and a character-level tokenizer with a chat template, built in well under a second, so
the LLM tests run offline and fast. `save_tiny(dir)` writes both for code that loads by path; `tiny_causal_lm`
builds a tiny model of any other architecture transformers ships."""
from __future__ import annotations

import string

import torch

SPECIALS = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(set(string.printable)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIALS)
    t = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>")
    t.chat_template = CHAT_TEMPLATE
    t.padding_side = "left"
    return t


def tiny_model(seed: int = 0, vocab_size: int | None = None, layers: int = 2, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=vocab_size or len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    # Random init puts ~uniform mass on every token; a larger lm-head scale gives peaked, more LM-like outputs.
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(4.0)
    return model, tok


def save_tiny(path: str, seed: int = 0) -> str:
    model, tok = tiny_model(seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def tiny_dataset(n: int = 24):
    """GSM8K-format rows over the tiny tokenizer's characters."""
    import datasets

    return datasets.Dataset.from_list([{"question": f"What is {i % 7} + {i % 5}?", "answer": f"#### {i % 7 + i % 5}"}
                                       for i in range(n)])


def length_reward(prompts, completions, answer, **kwargs):
    """A dense, deterministic reward so groups rarely tie: prefers completions with many digits."""
    return [sum(ch.isdigit() for ch in c) / 4 + 0.01 * len(c) for c in completions]


def tiny_trainer(output_dir, reward_funcs=None, lora: bool = True, seed: int = 0, **overrides):
    """A GRPOTrainer on the tiny model (LoRA r=4 with non-zero B, so the adapter changes log-probs)."""
    from llmrl.llm.config import GRPOConfig
    from llmrl.llm.model import LoraSettings, add_lora
    from llmrl.llm.trainer import GRPOTrainer

    model, tok = tiny_model(seed)
    if lora:
        model = add_lora(model, LoraSettings(r=4, alpha=8))
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    kw = dict(output_dir=str(output_dir), max_steps=2, per_device_batch_size=8, num_generations=4,
              max_new_tokens=10, micro_batch_size=8, report_to=["none"], learning_rate=1e-2, seed=seed,
              dtype="float32", overwrite_output_dir=True)
    kw.update(overrides)
    return GRPOTrainer(GRPOConfig(**kw), model=model, tokenizer=tok,
                       reward_funcs=reward_funcs or [length_reward], train_dataset=tiny_dataset())


# Small sizes under the names most configs use (others map them through their `attribute_map`), then what a few
# architectures need on top; the logit scale and soft-cap are set far from 1 / from inactive so they matter.
TINY_SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
TINY_EXTRA = {
    "gptj": dict(rotary_dim=4),
    "codegen": dict(rotary_dim=4),
    "gpt_neox": dict(rotary_pct=0.5),
    "gemma": dict(head_dim=8),
    "gemma2": dict(head_dim=8, query_pre_attn_scalar=8, final_logit_softcapping=2.0, sliding_window=4),
    "gemma3_text": dict(head_dim=8, query_pre_attn_scalar=8, final_logit_softcapping=2.0, sliding_window=4),
    "granite": dict(logits_scaling=4.0),
    "hyperclovax": dict(logits_scaling=0.25),  # multiplies the logits (Granite divides)
    "cohere": dict(logit_scale=0.25),
    "cohere2": dict(logit_scale=0.25, sliding_window=4),
    "opt": dict(ffn_dim=64, word_embed_proj_dim=32),
}


def tiny_causal_lm(model_type: str, seed: int = 0, **overrides):
    """A tiny random causal LM of any architecture transformers ships (by `model_type`) over the tiny tokenizer, in
    eval mode, with random biases (they start at 0) so that a path that drops one is seen. Returns (model, tok)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = tiny_tokenizer()
    kw = dict(TINY_SIZES, vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
              bos_token_id=None)
    kw.update(TINY_EXTRA.get(model_type, {}))
    kw.update(overrides)
    cfg = AutoConfig.for_model(model_type, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
        model.get_output_embeddings().weight.mul_(4.0)  # peaked, LM-like outputs (as `tiny_model`)
    return model.eval(), tok


def random_lora(model, seed: int = 1, std: float = 0.1, **peft_options):
    """`model` with a LoRA adapter r=4 on every linear layer whose B is random (so the adapter changes the
    logits); peft_options (use_dora, lora_bias, target_modules, ...) go to peft.LoraConfig."""
    from peft import LoraConfig, get_peft_model

    options = {"target_modules": "all-linear", **peft_options}
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM", **options))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def own_logits(model, prompt_ids, prompt_mask, continuation, group_index):
    """The model's own logits (N, C, V), fp32, at the positions that predict each continuation token, every
    left-padded prompt + continuation run as one sequence: the reference every fast path is held to."""
    ids = torch.cat([prompt_ids[group_index], continuation], 1)
    mask = torch.cat([prompt_mask[group_index], torch.ones_like(continuation)], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    return logits[:, prompt_ids.shape[1] - 1:-1].float()


def tiny_reward_model(seed: int = 0, layers: int = 2, hidden: int = 32):
    """The tiny Llama with a scalar head (LlamaForSequenceClassification, num_labels=1) and its tokenizer."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, num_labels=1,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():  # as tiny_model: a larger embedding scale gives states that differ more between tokens
        model.model.embed_tokens.weight.mul_(4.0)
        model.score.weight.normal_(0, 1.0)
    return model, tok


def dies_after(trainer, n: int):
    """Make `trainer.step` raise KeyboardInterrupt right after its n-th call's update, before that step is logged or
    checkpointed (a run killed at that point)."""
    real_step, calls = trainer.step, {"n": 0}

    def step():
        calls["n"] += 1
        out = real_step()
        if calls["n"] == n:
            raise KeyboardInterrupt("killed")
        return out
    trainer.step = step


def end_process_group() -> None:
    """End a torchrun check script whose results are saved: free the trainers (and the DDP wrappers that hold the
    process group), wait until every process is done, tear the group down, and leave without the interpreter's
    teardown. Gloo's threads can outlive an orderly exit and abort there with 'terminate called without an active
    exception' (seen once in CI, about 1 run in 50; see pytorch/pytorch#179291), which says nothing about the
    numbers checked."""
    import gc
    import os
    import sys

    gc.collect()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
