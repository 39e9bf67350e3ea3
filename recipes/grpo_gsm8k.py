"""GRPO on grade-school math: sample G completions per question, reward the correct final answer (and the
"The answer is N." format), update a LoRA adapter with the clipped group-relative objective.

    accelerate launch recipes/grpo_gsm8k.py                                  # bundled model + bundled data
    python recipes/grpo_gsm8k.py --dataset ../shared/data/gsm8k --eval_examples 200 --max_steps 100
    python recipes/grpo_gsm8k.py --dataset openai/gsm8k --model HuggingFaceTB/SmolLM2-360M-Instruct
    python recipes/grpo_gsm8k.py --eval_only --adapter runs/grpo/final --eval_examples 200

Every GRPOConfig field is a flag (`--help` lists them). The run directory gets metrics.jsonl (plot it with
`python -m llmrl.plot RUN_DIR`), completions.jsonl, TensorBoard logs, checkpoints, the final adapter with its
model card, and eval.json: greedy accuracy (and pass@k) before and after training, under labels that are merged
with the ones already there.

--eval_only evaluates the base model (--model), a merged model directory (--model runs/x/final-merged) or an
adapter (--adapter: any run's final/ or checkpoint-N/ directory, or a peft directory). Its results go beside what
was evaluated (into the adapter's or the model's directory; into --output_dir when that flag is given, and there
for a hub or bundled model), under a label naming the adapter or model, the data and n.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a clone, uninstalled

from transformers import HfArgumentParser  # noqa: E402

from llmrl.llm.config import GRPOConfig  # noqa: E402
from llmrl.llm.evaluation import (describe, eval_label, evaluate_policy, format_result, load_eval_dataset,  # noqa: E402
                                  save_eval_results)
from llmrl.llm.model import load_tokenizer  # noqa: E402
from llmrl.llm.trainer import GRPOTrainer  # noqa: E402

EVAL_ONLY_EXAMPLES = 200


@dataclass
class RecipeArgs:
    eval_only: bool = field(default=False, metadata={
        "help": "Only evaluate --model (a hub id, 'bundled', or a merged model directory), with --adapter if given "
                f"(default {EVAL_ONLY_EXAMPLES} questions); results go beside the adapter or model directory, or "
                "into --output_dir when given."})


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, args = HfArgumentParser((GRPOConfig, RecipeArgs)).parse_args_into_dataclasses(args=argv)
    if args.eval_only:
        return evaluate_only(cfg, output_dir_given=_flag_given(argv, "output_dir"))
    # Everything that can refuse the run comes before the before-evaluation: the eval set here (before the model
    # loads), the output directory and the training set in the trainer's constructor, the hub just after.
    eval_set = load_eval_dataset(cfg, load_tokenizer(cfg.model)) if cfg.eval_examples else None
    trainer = GRPOTrainer(cfg, eval_dataset=eval_set)
    if cfg.push_to_hub:
        trainer.check_push_to_hub()
    results = {}

    def report(label: str, adapter: str | None, model: str | None = None):
        res = trainer.evaluate(desc=f"eval {label}")
        what = describe(cfg, adapter, res["n"], model)
        if trainer.acc.is_main_process:
            path = save_eval_results(cfg.output_dir, label, res, what)
            print(format_result(f"{label}: {eval_label(what)}", res) + f" (in {path})", flush=True)
        results[label] = {k: v for k, v in res.items() if k != "samples"}

    if eval_set is not None and cfg.eval_before and not cfg.resume:
        report("before", cfg.adapter)
    trainer.train()
    final = os.path.join(cfg.output_dir, "final")
    if eval_set is not None:  # the trained policy, saved to `final` next (its model card holds these results)
        report("after", final if trainer.is_peft else None, None if trainer.is_peft else final)
    out = trainer.save_final(merged=cfg.save_merged)
    if trainer.acc.is_main_process:
        print(f"{'adapter' if trainer.is_peft else 'model'} saved to {out}", flush=True)
        if trainer.best is not None:
            print(f"best checkpoint by {trainer.best['metric']} ({trainer.best['value']:.3f}): "
                  f"{os.path.join(cfg.output_dir, trainer.best['checkpoint'])}", flush=True)
    trainer.close()
    return results


def evaluate_only(cfg: GRPOConfig, output_dir_given: bool) -> dict:
    """Evaluate the model (with the adapter) that cfg names; the results are merged into eval.json beside the
    adapter or model directory (into output_dir when it was given, or when the model is on the hub)."""
    import torch
    from accelerate import Accelerator

    from llmrl.llm.evaluation import eos_token_ids
    from llmrl.llm.model import find_adapter_dir, load_adapter, load_policy
    from llmrl.llm.model import resolve_dtype

    if cfg.push_to_hub:
        raise ValueError("--eval_only uploads nothing: drop --push_to_hub (upload a run's final/ with "
                         "`hf upload REPO DIR`)")
    if cfg.eval_examples == 0:
        cfg.eval_examples = EVAL_ONLY_EXAMPLES
    adapter = os.path.normpath(cfg.adapter) if cfg.adapter else None
    if adapter:
        find_adapter_dir(adapter)  # a wrong path is a one-line error before anything loads
    tok = load_tokenizer(cfg.model)
    eval_set = load_eval_dataset(cfg, tok)
    no_gpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    acc = Accelerator(cpu=cfg.use_cpu or no_gpu)
    model, _ = load_policy(cfg.model, None, resolve_dtype(cfg.dtype))
    if adapter:
        model = load_adapter(model, adapter, trainable=False)
    model.to(acc.device)
    res = evaluate_policy(model, tok, eval_set, cfg.eval_examples, cfg, eos_token_ids(model, tok), acc)
    what = describe(cfg, adapter, res["n"])
    label = eval_label(what)
    if output_dir_given:
        directory = cfg.output_dir
    elif adapter:
        directory = adapter
    else:
        directory = cfg.model if os.path.isdir(cfg.model) else cfg.output_dir
    if acc.is_main_process:
        path = save_eval_results(directory, label, res, what)
        print(format_result(label, res) + f" (in {path})", flush=True)
    acc.wait_for_everyone()
    return {label: {k: v for k, v in res.items() if k != "samples"}}


def _flag_given(argv: list[str], name: str) -> bool:
    """Whether --name (or --name-with-dashes, or an abbreviation argparse accepts) is on the command line."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(f"--{name}", f"--{name.replace('_', '-')}", dest=name, default=None)
    return parser.parse_known_args(argv)[0].__dict__[name] is not None


if __name__ == "__main__":
    main()
