"""`llmrl grpo` (recipes/grpo_gsm8k.py): GRPO-family fine-tuning with reward functions or a reward model, with
greedy accuracy on held-out questions before and after; `llmrl eval` (or --eval_only): evaluation only.

    llmrl grpo                                                               # bundled model + bundled data
    llmrl grpo --dataset ../shared/data/gsm8k --eval_examples 200 --max_steps 100
    llmrl grpo --config my_run.yaml --learning_rate 5e-5                     # a YAML of flags; flags override it
    llmrl eval --adapter runs/grpo/final --eval_examples 200

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

import os
import sys
from dataclasses import dataclass, field

from ..llm.checkpoint import check_fresh_output_dir
from ..llm.config import GRPOConfig, trl_resume
from ..llm.evaluation import describe, eval_label, evaluate_policy, format_result, load_eval_dataset, save_eval_results
from ..llm.model import load_tokenizer
from ..llm.trainer import GRPOTrainer
from ..utils import cli_main, flag_given, parse_config, set_threads

EVAL_ONLY_EXAMPLES = 200
# What a trained adapter brings from the run that trained it when the command line does not say otherwise: its base
# model (for training on from it and for evaluation), and for evaluation the prompts and decoding of that run.
FROM_ADAPTER_RUN = ("model", "dtype")
FROM_ADAPTER_RUN_FOR_EVAL = FROM_ADAPTER_RUN + (
    "dataset", "dataset_config", "eval_dataset", "eval_split", "prompt_column", "system_prompt", "max_new_tokens",
    "temperature", "top_p", "top_k", "eval_reward", "eval_pass_k", "eval_num_samples")

# The settings `llmrl eval --help` lists: what the evaluation reads (the other GRPO flags are accepted, unused)
EVAL_SETTINGS = FROM_ADAPTER_RUN_FOR_EVAL + ("adapter", "eval_examples", "eval_batch_size", "sampler", "seed",
                                             "output_dir", "use_cpu", "torch_threads", "bf16",
                                             "max_completion_length", "per_device_eval_batch_size")
EVAL_HELP = (f"Greedy accuracy (and pass@k) of --model, with --adapter if given, on --eval_examples held-out questions "
             f"(default {EVAL_ONLY_EXAMPLES}); results go to eval.json beside the adapter or model directory, or into "
             f"--output_dir when given. An adapter trained by llmrl brings its run's model, data, prompts and "
             f"decoding unless a flag says otherwise. The help texts below are the training command's; the other "
             f"flags of `llmrl grpo` are accepted (and checked) but not used.")


@dataclass
class RecipeArgs:
    eval_only: bool = field(default=False, metadata={
        "help": "Only evaluate --model (a hub id, 'bundled', or a merged model directory), with --adapter if given "
                f"(default {EVAL_ONLY_EXAMPLES} questions); results go beside the adapter or model directory, or "
                "into --output_dir when given."})


def main(argv=None) -> dict:
    """Train (or with --eval_only, evaluate); returns the evaluation results by label."""
    argv = list(sys.argv[1:] if argv is None else argv)
    raw, args = parse_config((GRPOConfig, RecipeArgs), argv, checked=False)  # the run it continues, if any
    cfg, args = parse_config((GRPOConfig, RecipeArgs), argv, defaults=run_defaults(raw, args.eval_only))
    if args.eval_only:
        return evaluate_only(cfg, argv)
    # Everything that can refuse the run comes before the before-evaluation: the eval set here (before the model
    # loads), the output directory, then the training set in the trainer's constructor, the hub just after.
    if not cfg.resume:
        check_fresh_output_dir(cfg.output_dir, cfg.overwrite_output_dir)
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
        if "before" in results and "after" in results:
            b, a = results["before"], results["after"]
            steps = f"{trainer.step_count} step" + ("" if trainer.step_count == 1 else "s")
            print(f"greedy accuracy on {a['n']} held-out questions: {b['accuracy']:.3f} before training -> "
                  f"{a['accuracy']:.3f} after {steps}", flush=True)
    trainer.close()
    return results


def evaluate_main(argv=None) -> dict:
    """`llmrl eval`: the GRPO flags, evaluation only."""
    argv = list(sys.argv[1:] if argv is None else argv)
    shown = dict(shown=EVAL_SETTINGS, description=EVAL_HELP)
    raw = parse_config(GRPOConfig, argv, checked=False, **shown)
    cfg = parse_config(GRPOConfig, argv, defaults=run_defaults(raw, evaluation=True), **shown)
    return evaluate_only(cfg, argv)


def run_defaults(raw, evaluation: bool = False) -> dict:
    """Settings the command line did not give, from the run it continues (`raw`: the flags as parsed, unchecked):
    on --resume every setting of the run (its checkpoint's config.json; flags given now win and are checked by the
    trainer), with --adapter the FROM_ADAPTER_RUN settings of the run that trained the adapter, when it was an
    llmrl run. Printed when used."""
    from ..llm import checkpoint as ckpt

    resume = trl_resume(raw.resume_from_checkpoint) if raw.resume is None else raw.resume
    if resume and not evaluation:
        return ckpt.resume_defaults(GRPOConfig, raw.output_dir, resume)
    found = ckpt.run_settings(raw.adapter) if raw.adapter else None
    if found is None:
        return {}
    keep = FROM_ADAPTER_RUN_FOR_EVAL if evaluation else FROM_ADAPTER_RUN
    return ckpt.settings_as_defaults(GRPOConfig, *found, keep)


def evaluate_only(cfg: GRPOConfig, argv: list[str]) -> dict:
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
        if flag_given(argv, "eval_examples"):
            raise ValueError("eval_examples 0 skips evaluation, and evaluation is all this command does: pass "
                             f"--eval_examples N >= 1 (default {EVAL_ONLY_EXAMPLES})")
        cfg.eval_examples = EVAL_ONLY_EXAMPLES
    output_dir_given = flag_given(argv, "output_dir")
    adapter = os.path.normpath(cfg.adapter) if cfg.adapter else None
    if adapter:
        find_adapter_dir(adapter)  # a wrong path is a one-line error before anything loads
    tok = load_tokenizer(cfg.model)
    eval_set = load_eval_dataset(cfg, tok)
    no_gpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    acc = Accelerator(cpu=cfg.use_cpu or no_gpu)
    set_threads(cfg.torch_threads)
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


if __name__ == "__main__":
    cli_main(main)
