"""`llmrl rm` (recipes/reward_model.py): train a reward model on preference pairs with the Bradley-Terry loss: a
causal-LM backbone with a scalar head (LoRA by default; the head trains fully), pairwise accuracy on held-out
pairs.

    llmrl preferences --output_dir runs/arithmetic_preferences   # pairs from the bundled model
    llmrl rm --eval_dataset runs/arithmetic_preferences          # train on them (bundled backbone)
    accelerate launch -m llmrl.cli rm --model HuggingFaceTB/SmolLM2-360M-Instruct \\
        --dataset trl-lib/ultrafeedback_binarized --eval_dataset trl-lib/ultrafeedback_binarized

Every RewardConfig field is a flag (`--help` lists them). The run directory gets metrics.jsonl (plot it with
`python -m llmrl.plot RUN_DIR --keys loss accuracy eval/accuracy`), TensorBoard logs, checkpoints (`--resume
latest`), eval.json and final/: the model with the adapter merged, which
`AutoModelForSequenceClassification.from_pretrained` and `llmrl.llm.RewardModelScorer` load.
"""
from __future__ import annotations

import json
import os

from ..llm import checkpoint as ckpt
from ..llm.config import trl_resume
from ..llm.reward_trainer import RewardConfig, RewardTrainer
from ..utils import cli_main, parse_config


def main(argv=None) -> dict:
    raw = parse_config(RewardConfig, argv, checked=False)
    resume = trl_resume(raw.resume_from_checkpoint) if raw.resume is None else raw.resume
    # a resumed run goes on as it was set up; flags given now change what may change
    cfg = parse_config(RewardConfig, argv, defaults=ckpt.resume_defaults(RewardConfig, raw.output_dir, resume)
                       if resume else None)
    if not cfg.resume:  # before anything loads
        ckpt.check_fresh_output_dir(cfg.output_dir, cfg.overwrite_output_dir)
    trainer = RewardTrainer(cfg)
    history = trainer.train()
    out = trainer.save_final()
    result = {k: v for k, v in (history[-1] if history else {}).items() if k.startswith("eval/")}
    if trainer.acc.is_main_process:
        print(f"reward model saved to {out}")
        if result:
            print(f"held-out pairwise accuracy {result['eval/accuracy']:.3f} on {result['eval/pairs']} pairs")
            with open(os.path.join(cfg.output_dir, "eval.json"), "w") as f:
                json.dump(result, f, indent=2)
    trainer.close()
    return result


if __name__ == "__main__":
    cli_main(main)
