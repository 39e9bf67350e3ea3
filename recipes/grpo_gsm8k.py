"""GRPO on grade-school math: sample G completions per question, reward the correct final answer (and the
"The answer is N." format), update a LoRA adapter with the clipped group-relative objective.

    accelerate launch recipes/grpo_gsm8k.py                                  # bundled model + bundled data
    python recipes/grpo_gsm8k.py --dataset ../shared/data/gsm8k --eval_examples 200 --max_steps 100
    python recipes/grpo_gsm8k.py --dataset openai/gsm8k --model HuggingFaceTB/SmolLM2-360M-Instruct
    python recipes/grpo_gsm8k.py --eval_only --adapter runs/grpo/final --eval_examples 200

Every GRPOConfig field is a flag (`--help` lists them). The run directory gets metrics.jsonl (plot it with
`python -m llmrl.plot RUN_DIR`), completions.jsonl, TensorBoard logs, checkpoints and the final adapter.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a clone, uninstalled

from transformers import HfArgumentParser  # noqa: E402

from llmrl.llm.config import GRPOConfig  # noqa: E402
from llmrl.llm.data import load_prompt_dataset  # noqa: E402
from llmrl.llm.trainer import GRPOTrainer  # noqa: E402


@dataclass
class RecipeArgs:
    eval_only: bool = field(default=False, metadata={"help": "Only evaluate (the base model, or --adapter)."})


def main(argv=None):
    cfg, args = HfArgumentParser((GRPOConfig, RecipeArgs)).parse_args_into_dataclasses(args=argv)
    if args.eval_only and cfg.eval_examples == 0:
        cfg.eval_examples = 200
    trainer = GRPOTrainer(cfg)
    eval_set = None
    if cfg.eval_examples:
        eval_set = load_prompt_dataset(cfg.eval_dataset or cfg.dataset, cfg.eval_split, cfg.dataset_config)
    results = {}

    def report(tag: str):
        res = trainer.evaluate(eval_set, cfg.eval_examples)
        results[tag] = res["accuracy"]
        if trainer.acc.is_main_process:
            print(f"[{tag}] greedy accuracy on {res['n']} held-out questions: {res['accuracy']:.3f}")
            os.makedirs(cfg.output_dir, exist_ok=True)
            with open(os.path.join(cfg.output_dir, f"eval_{tag}.jsonl"), "w") as f:
                for row in res["samples"]:
                    f.write(json.dumps(row) + "\n")

    if eval_set is not None and (args.eval_only or cfg.eval_before) and not cfg.resume:
        report("before")
    if not args.eval_only:
        trainer.train()
        out = trainer.save_final(merged=cfg.save_merged)
        if trainer.acc.is_main_process:
            print(f"adapter saved to {out}")
        if eval_set is not None:
            report("after")
    if trainer.acc.is_main_process and results:
        with open(os.path.join(cfg.output_dir, "eval.json"), "w") as f:
            json.dump(results, f, indent=2)
    trainer.close()
    return results


if __name__ == "__main__":
    main()
