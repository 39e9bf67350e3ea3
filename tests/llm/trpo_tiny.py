"""Shared by tests/llm/test_trust_region.py and tests/llm/trpo_ddp_check.py: a trainer on the tiny model with few
trainable parameters, and one fixed generation batch (4 prompts x G=4, short prompts) split over processes."""
from __future__ import annotations

import torch

from llmrl import objectives as O
from llmrl.llm.config import GRPOConfig
from llmrl.llm.model import LoraSettings, add_lora
from llmrl.llm.trainer import GRPOTrainer, RolloutBatch
from tests.llm.tiny import length_reward, tiny_dataset, tiny_model

G, PROMPTS = 4, 4
TEXTS = ["What is 1 + 2?", "hi", "7 - 3 = ?", "a longer question here"]


def trpo_trainer(output_dir, lora: bool = True, dtype=torch.float32, lora_targets=("q_proj", "v_proj"),
                 lora_r: int = 1, model_kw: dict | None = None, **overrides) -> GRPOTrainer:
    """optimizer=trpo on the tiny model: LoRA r=1 on a few modules (random non-zero B, so every LoRA weight moves
    the log-probs), or full fine-tuning; `dtype` float64 for exactness tests."""
    model, tok = tiny_model(0, **(model_kw or {}))
    if lora:
        model = add_lora(model, LoraSettings(r=lora_r, alpha=2 * lora_r, target_modules=lora_targets if isinstance(lora_targets, str) else list(lora_targets)))
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    model.to(dtype)
    kw = dict(output_dir=str(output_dir), max_steps=2, per_device_batch_size=PROMPTS * G, num_generations=G,
              max_new_tokens=7, micro_batch_size=PROMPTS * G, report_to=["none"], seed=0, dtype="float32",
              overwrite_output_dir=True, optimizer="trpo", cg_iters=5, loss_type="dapo", system_prompt="")
    kw.update(overrides)
    return GRPOTrainer(GRPOConfig(**kw), model=model, tokenizer=tok, reward_funcs=[length_reward],
                       train_dataset=tiny_dataset())


def fixed_batch(tr: GRPOTrainer, rank: int = 0, world: int = 1, advantages: torch.Tensor | None = None) -> RolloutBatch:
    """This process's share (PROMPTS / world prompts and their completions) of one fixed batch."""
    B = PROMPTS // world
    ids, mask = tr._tokenize_prompts(TEXTS)
    g = torch.Generator().manual_seed(0)
    C = tr.cfg.max_new_tokens
    comp = torch.randint(4, len(tr.tok), (PROMPTS * G, C), generator=g)
    cmask = (torch.arange(C)[None] < torch.randint(1, C + 1, (PROMPTS * G, 1), generator=g)).long()
    rewards = torch.randint(0, 3, (PROMPTS * G,), generator=g).float()
    adv = O.group_advantages(rewards, G) if advantages is None else advantages
    mine = slice(rank * B * G, (rank + 1) * B * G)
    return RolloutBatch(ids[rank * B:(rank + 1) * B], mask[rank * B:(rank + 1) * B], comp[mine], cmask[mine],
                        torch.arange(B).repeat_interleave(G), rewards[mine], adv[mine])
