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
