"""A tiny random Llama and a character-level tokenizer with a chat template, built in well under a second, so
the LLM tests run offline and fast. `save_tiny(dir)` writes both for code that loads by path."""
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
