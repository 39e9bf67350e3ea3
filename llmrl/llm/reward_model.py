"""Reward models: a causal-LM backbone with a scalar head r_phi(x) = w^T h_T (transformers'
`AutoModelForSequenceClassification` with num_labels=1), read at each sequence's LAST REAL TOKEN.

- `load_reward_model`: from a hub id, a local directory (a trained reward model, or a causal LM that gets a fresh
  head), a .gguf file or the bundled SmolLM2-135M-Instruct; with a LoRA adapter (the head trains fully) or not.
- `sequence_scores`: batched scores, read where the attention mask says the sequence ends, whatever the padding
  side. (transformers' own pooling looks for the first pad id, which fails when pad = eos.)
- `conversation_text`: the text a reward model scores for (prompt, response), shared by training and scoring.
- `RewardModelScorer`: a reward model as a reward function for the RL trainer.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from .logprobs import prompt_positions, run_decoder
from .model import BUNDLED, LoraSettings, _from_gguf, hub_load_kwargs, load_tokenizer, resolve_model


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ValueError(f"dtype must be one of {', '.join(table)}, got {dtype!r}")
    return table[dtype]


def load_reward_model(name_or_path: str | None = BUNDLED, lora: LoraSettings | None = LoraSettings(),
                      dtype: torch.dtype | str = torch.float32):
    """A reward model and its tokenizer: `AutoModelForSequenceClassification(num_labels=1)` from a trained reward
    model, or from a causal LM (its backbone, and a new randomly initialized head `score`). With `lora`, a LoRA
    adapter is added and the head trains fully. Returns (model, tokenizer)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    directory, gguf = resolve_model(name_or_path)
    if gguf is not None:
        directory = _from_gguf(directory, gguf)
    hub = hub_load_kwargs(directory)  # a hub id while the hub is unreachable: one line at once
    try:
        model = AutoModelForSequenceClassification.from_pretrained(directory, num_labels=1, dtype=_as_dtype(dtype),
                                                                   **hub)
    except ValueError as e:
        if "Unrecognized configuration class" not in str(e):
            raise
        kind = AutoConfig.from_pretrained(directory, **hub).model_type
        raise ValueError(f"reward model {name_or_path!r}: transformers has no sequence-classification (scalar head) "
                         f"class for model type {kind!r}; use a backbone it has one for (llama, qwen2, mistral, "
                         f"gpt2, ...)") from None
    tok = load_tokenizer(directory)
    model.config.pad_token_id = tok.pad_token_id  # so that transformers' own forward also accepts batches
    if lora is not None:
        model = add_reward_lora(model, lora)
    return model, tok


def add_reward_lora(model, lora: LoraSettings):
    """Wrap a reward model with a fresh LoRA adapter (peft task SEQ_CLS): the backbone gets low-rank updates and the
    scalar head `score` is trained in full (modules_to_save); trainable weights are kept in fp32."""
    from peft import LoraConfig, get_peft_model

    score_parts(model)  # a clear error before peft's
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                     task_type="SEQ_CLS", modules_to_save=["score"])
    model = get_peft_model(model, cfg)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model


def score_parts(model) -> tuple[Any, Any]:
    """(backbone returning final hidden states, scalar head) of a reward model, looking through a peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, "score", None)
    backbone = getattr(base, getattr(base, "base_model_prefix", ""), None)
    if head is None or backbone is None:
        raise ValueError(f"{type(base).__name__} has no scalar head `score`: a reward model is a transformers "
                         f"*ForSequenceClassification model with num_labels=1 (load one with "
                         f"llmrl.llm.load_reward_model or AutoModelForSequenceClassification.from_pretrained(path, "
                         f"num_labels=1))")
    num_labels = getattr(base.config, "num_labels", 1)
    if num_labels != 1:
        raise ValueError(f"{type(base).__name__} has num_labels={num_labels}; a reward model has one output "
                         f"(num_labels=1)")
    return backbone, head


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Position of each row's last real token (the last 1 of its attention mask), left or right padded; (N,)."""
    if not bool((attention_mask.sum(-1) > 0).all()):
        row = int((attention_mask.sum(-1) == 0).nonzero()[0])
        raise ValueError(f"sequence {row} has no real token (its attention mask is all zeros)")
    T = attention_mask.shape[-1]
    return (torch.arange(T, device=attention_mask.device) * attention_mask.long()).argmax(-1)


def sequence_scores(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Reward r_phi(x) = w^T h_T at each sequence's last real token; ids/mask (N, T), any padding side -> (N,) fp32.

    Position ids count real tokens only, so a left-padded sequence is computed exactly as if unpadded. Only the N
    final states go through the head."""
    backbone, head = score_parts(model)
    h, _ = run_decoder(backbone, input_ids, attention_mask, prompt_positions(attention_mask))
    last = h[torch.arange(h.shape[0], device=h.device), last_token_index(attention_mask)]
    return head(last.to(_head_dtype(head))).squeeze(-1).float()


def _head_dtype(head) -> torch.dtype:
    """The dtype the head computes in: under LoRA its trained copy is fp32 while the backbone may run in bf16."""
    copies = getattr(head, "modules_to_save", None)  # peft keeps the trained copy beside the frozen original
    module = copies[head.active_adapters[0]] if copies else head
    return next(module.parameters()).dtype


class ScoreModel(torch.nn.Module):
    """A reward model as a module whose forward returns sequence scores (N,), so that DDP, which synchronizes
    gradients through its wrapped module's forward, sees the whole computation."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return sequence_scores(self.model, input_ids, attention_mask)


def _is_messages(x) -> bool:
    return isinstance(x, list) and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in x)


def conversation_text(prompt: str | list[dict] | None, response: str | list[dict], tokenizer) -> tuple[str, bool]:
    """The text a reward model scores and whether it came from the chat template: (text, is_chat).

    - chat prompt (messages) + response (text, or assistant messages): the whole conversation through the
      tokenizer's chat template, the response as the assistant turn (TRL's conversational explicit-prompt format);
    - text prompt + text response: their concatenation (TRL's standard format);
    - no prompt: the response alone, messages through the chat template (TRL's implicit-prompt format).
    """
    if isinstance(response, str) and (prompt is None or isinstance(prompt, str)):
        return (prompt or "") + response, False
    if isinstance(prompt, str):
        raise ValueError("a text prompt with a chat-message response: give both as text or both as chat messages")
    messages = list(prompt or [])
    messages += [{"role": "assistant", "content": response}] if isinstance(response, str) else list(response)
    if not _is_messages(messages):
        raise ValueError(f"expected text or a list of chat messages (dicts with 'role' and 'content'), got "
                         f"{messages!r:.120}")
    return tokenizer.apply_chat_template(messages, tokenize=False), True


def tokenize_conversation(tokenizer, prompt, response) -> list[int]:
    """Token ids of conversation_text (a chat template already holds its special tokens; plain text gets the
    tokenizer's, as llmrl.llm.trainer.tokenize_prompts does for prompts)."""
    text, is_chat = conversation_text(prompt, response, tokenizer)
    return tokenizer(text, add_special_tokens=not is_chat)["input_ids"]


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[Tensor, Tensor]:
    """Token id lists -> ids (N, T) padded with pad_id on `side`, and the attention mask (N, T)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        ids[i, cols] = torch.tensor(s, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


class RewardModelScorer:
    """A reward model as a reward function (the llmrl.llm.rewards contract): `fn(prompts, completions, **columns)
    -> list[float]`, each the score of the full prompt + completion (chat prompts: the conversation with the
    completion as the assistant turn, through the reward model's own tokenizer and chat template).

        RewardModelScorer("runs/reward_model/final")              # a path or hub id: loads model and tokenizer
        RewardModelScorer(model, tokenizer)                       # an AutoModelForSequenceClassification object

    Scores are computed in batches of `batch_size`, without gradients, on `device` (default: where the model is).
    `name` is the reward's name in the trainer's logs (rewards/NAME) and reward weights.
    """

    def __init__(self, model, tokenizer=None, batch_size: int = 16, device: str | torch.device | None = None,
                 dtype: torch.dtype | str = torch.float32, name: str = "reward_model"):
        if isinstance(model, str):
            model, own_tokenizer = load_reward_model(model, lora=None, dtype=dtype)
            tokenizer = tokenizer or own_tokenizer
        elif tokenizer is None:
            raise ValueError("RewardModelScorer: pass the reward model's tokenizer with the model object "
                             "(RewardModelScorer(model, tokenizer)), or a path to load both from")
        if batch_size < 1:
            raise ValueError(f"RewardModelScorer: batch_size must be >= 1, got {batch_size}")
        score_parts(model)
        self.model = model.to(device) if device is not None else model
        self.model.eval()
        self.tokenizer, self.batch_size, self.__name__ = tokenizer, batch_size, name
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out anyway

    @torch.no_grad()
    def __call__(self, prompts: list, completions: list[str], model_prompts: list | None = None,
                 **kwargs) -> list[float]:
        # the conversation as the policy saw it (the trainer passes model_prompts), else the dataset's prompts
        prompts = prompts if model_prompts is None else model_prompts
        if len(prompts) != len(completions):
            raise ValueError(f"{self.__name__}: {len(prompts)} prompts for {len(completions)} completions")
        seqs = [tokenize_conversation(self.tokenizer, p, c) for p, c in zip(prompts, completions)]
        device = next(self.model.parameters()).device
        scores = []
        for s in range(0, len(seqs), self.batch_size):
            ids, mask = pad_sequences(seqs[s:s + self.batch_size], self.pad_id, self.tokenizer.padding_side)
            scores += sequence_scores(self.model, ids.to(device), mask.to(device)).tolist()
        return scores
