"""Issue 18's "time to learn": training seconds for the bundled SmolLM2-135M-Instruct (LoRA) to reach a greedy
accuracy target (default 0.9) on the bundled one-digit arithmetic task, llmrl vs TRL's GRPOTrainer with the same
hyperparameters, in one invocation; the target is llmrl / TRL <= 0.33.

Each side trains in its own subprocess (llmrl: its recipe, i.e. `llmrl grpo`; TRL 1.16: GRPOTrainer) and saves its
adapter every --save_every steps (llmrl: checkpoint-N/adapter, TRL: checkpoint-N/). Then the base model and every
saved adapter of both sides are evaluated by one evaluator (bench/grpo_learning.py's `accuracies`: greedy decoding
of the first --eval_examples test questions, prompted as in training, in the weights' dtype of --dtype, scored by
gsm8k_reward). A side's time to target is the sum of its per-step training seconds up to and including the first
saved step whose accuracy reaches --target (model loading, checkpoint writing, logging and evaluation excluded on
both sides; llmrl: its logged step_time; TRL: on_step_begin -> on_step_end, which, unlike TRL's own step_time,
includes the gradient clipping and the optimizer update as llmrl's does). A side that never reaches the target is
reported as such (null) with its best accuracy. Also recorded: the accuracy at every saved step with the
cumulative training seconds, the median step time, the whole subprocess's wall time, the CPU (lscpu). Output:
--out/result.json (printed too) and --out/time_to_accuracy.png (accuracy vs cumulative training seconds);
--out/training.json keeps the settings that trained the runs and their wall times (--skip_training checks them).

Workload (the defaults: `make demo`'s): 8 prompts x G=4 completions per step, up to 48 new tokens at temperature
1, lr 5e-4 constant, no system message (--system_prompt ''; SmolLM2's chat template then puts its own default
system line, the same for training and evaluation on both sides), reward = gsm8k_reward only, beta 0, DAPO
token-mean loss, LoRA r16 alpha 32 dropout 0 on all linear projections, seed 0, 40 steps, a checkpoint every 4.
Given to both sides explicitly (bench/grpo_learning.py `settings`; defaults checked in llmrl's GRPOConfig and in
TRL 1.16.0's GRPOConfig / transformers' TrainingArguments):
  - steps; completions per step B*G (llmrl per_device_batch_size, TRL generation_batch_size) in ONE forward /
    backward (llmrl micro_batch_size, TRL per_device_train_batch_size; TRL gradient_accumulation_steps 1);
    num_generations; max new tokens (TRL max_completion_length);
  - sampling: temperature 1, top_p 1, top_k 0 (TRL also repetition_penalty 1, min_p None: llmrl has neither);
    eos = token 2 on both (TRL: the tokenizer's + generation_config's; llmrl adds the config's, also 2);
  - optimizer: AdamW lr, betas (0.9, 0.999), eps 1e-8 (TRL adam_epsilon; llmrl uses torch's default), weight
    decay 0, grad-norm clip 1.0, constant schedule (defaults differ: llmrl constant_with_warmup, TRL linear),
    0 warm-up steps;
  - objective: beta (no reference model at 0), loss_type dapo, advantages (r - group mean) / (group std + 1e-4)
    with the unbiased std (llmrl advantage grpo / scale_rewards group; TRL scale_rewards group), clip epsilon 0.2
    below and above (llmrl clip_low / clip_high, TRL epsilon / epsilon_high), token-level ratio, num_iterations 1,
    mask_truncated_completions False, entropy_coef 0, reward weights 1;
  - model: LoRA r, alpha, dropout 0, target all-linear (peft's, on both), fp32 adapter weights; precision: --dtype
    auto (llmrl: bf16 weights where the CPU has fast bf16, else fp32; TRL: bf16=True autocast over fp32 weights
    exactly when llmrl's dtype resolves to bf16, else fp32); gradient checkpointing off (TRL's default is on: it
    recomputes activations, slower); use_cpu; seed (TRL's default 42);
  - data: the same prompts (llmrl's `make_prompt` through the same chat template: prompt token ids checked equal),
    and in the same order: TRL gets the train rows in the order of llmrl's seeded PromptSampler, unshuffled
    (shuffle_dataset=False), so step k of both trains on the same 8 questions.
Not the same, by nature: the random streams (LoRA initialization, sampling), so the completions differ; the
kernels (llmrl's own sampler and log-prob pass, TRL's HF generate and forward).

    # the full benchmark (the lead's run, on a quiet machine; about 2 x 40 steps, then 21 evaluations):
    python bench/time_to_accuracy.py --out runs/bench_tta
    # the same runs evaluated and reported again (e.g. with another --target), without training:
    python bench/time_to_accuracy.py --out runs/bench_tta --skip_training --target 0.8
    # a check of the script at a tiny budget (minutes):
    python bench/time_to_accuracy.py --steps 2 --save_every 1 --eval_examples 4 --max_new_tokens 8 \\
        --prompts_per_step 2 --G 2 --out /tmp/tta_tiny
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from grpo_learning import accuracies, run_llmrl, run_trl, settings, step_times  # noqa: E402
from grpo_vs_trl import cpu_info  # noqa: E402

SIDES = ("llmrl", "trl")


def hyper(args) -> dict:
    """The workload as bench/grpo_learning.py's functions read it."""
    return dict(B=args.prompts_per_step, G=args.G, max_new_tokens=args.max_new_tokens, lr=args.lr, beta=0.0,
                steps=args.steps, temperature=1.0, lora_r=16, lora_alpha=32, seed=args.seed,
                system_prompt=args.system_prompt, reward_funcs=["gsm8k"], save_steps=args.save_every, dtype=args.dtype)


def saved_steps(run: str) -> list[int]:
    """The steps N of the checkpoint-N directories in a run directory, in order."""
    names = [n for n in os.listdir(run) if n.startswith("checkpoint-") and n[len("checkpoint-"):].isdigit()]
    return sorted(int(n[len("checkpoint-"):]) for n in names)


def time_to_target(seconds: list[float], accuracy: dict[int, float], target: float) -> dict:
    """Training seconds until the first evaluated step whose accuracy reaches `target`: the sum of the per-step
    seconds of steps 1..s (seconds[0] is step 1's; accuracy maps a step to its accuracy, step 0 = the base
    model, reached in 0 s). {"step": s, "seconds": ...}, or both None when no evaluated step reaches it."""
    late = max(accuracy)
    if late > len(seconds):
        raise ValueError(f"accuracy at step {late} but step times of only {len(seconds)} steps")
    reached = [s for s in sorted(accuracy) if accuracy[s] >= target]
    if not reached:
        return {"step": None, "seconds": None}
    return {"step": reached[0], "seconds": sum(seconds[:reached[0]])}


def plot(curves: dict[str, dict], target: float, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for side, c in curves.items():
        reach = c["time_to_target"]
        when = f"{reach['seconds']:.0f} s (step {reach['step']})" if reach["seconds"] is not None else "not reached"
        ax.plot(c["cumulative_s"], c["accuracy"], marker="o", label=f"{side}: {target:g} at {when}")
    ax.axhline(target, color="gray", linestyle="--", linewidth=1)
    ax.set(xlabel="training seconds (sum of step times)", ylabel="greedy accuracy (held-out)",
           title="SmolLM2-135M + LoRA, one-digit arithmetic: time to accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    ap.add_argument("--target", type=float, default=0.9, help="greedy accuracy to reach")
    ap.add_argument("--steps", type=int, default=40, help="training steps of each side")
    ap.add_argument("--save_every", type=int, default=4, help="steps between saved (and evaluated) adapters")
    ap.add_argument("--eval_examples", type=int, default=200, help="first N test questions (at most 200)")
    ap.add_argument("--max_new_tokens", type=int, default=48, help="in training and evaluation")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--G", type=int, default=4, help="completions per prompt")
    ap.add_argument("--prompts_per_step", type=int, default=8)
    ap.add_argument("--system_prompt", default="", help="system message in training and evaluation ('' = none)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                    help="llmrl's weights (TRL: bf16 autocast exactly when this resolves to bfloat16); evaluation's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dataset", default="arithmetic")
    ap.add_argument("--out", default="runs/bench_tta")
    ap.add_argument("--skip_training", action="store_true", help="evaluate and report the runs already in --out")
    args = ap.parse_args()
    if args.steps % args.save_every:
        ap.error(f"--steps {args.steps} must be a multiple of --save_every {args.save_every}, so that both sides "
                 f"save the same steps")
    from llmrl.llm.model import resolve_dtype

    h = hyper(args)
    os.makedirs(args.out, exist_ok=True)
    # what trained the runs in --out and each run's whole-subprocess wall time, written as each side finishes
    log = os.path.join(args.out, "training.json")
    trained = json.load(open(log)) if os.path.exists(log) else None
    if args.skip_training:
        if trained is None:
            ap.error(f"--skip_training: {log} is missing; train first (drop --skip_training)")
        changed = [f"{k}={v!r}" for k, v in trained["hyperparameters"].items() if h.get(k) != v]
        if changed:
            ap.error(f"--skip_training: the runs in {args.out} were trained with {', '.join(changed)}; give the "
                     f"flags that trained them")
    else:
        if trained is None or trained["hyperparameters"] != h:  # other settings: earlier wall times do not apply
            trained = {"hyperparameters": h, "wall_s": {}}
        for side in args.sides:
            run = run_llmrl if side == "llmrl" else run_trl
            trained["wall_s"][side] = run(h, args.dataset, os.path.join(args.out, side))
            with open(log, "w") as f:
                json.dump(trained, f, indent=2)

    # one evaluator, one model load: the base model, then every saved adapter of each side
    steps = {side: saved_steps(os.path.join(args.out, side)) for side in args.sides}
    adapters = [None] + [os.path.join(args.out, side, f"checkpoint-{s}") for side in args.sides for s in steps[side]]
    acc = iter(accuracies(adapters, args.dataset, args.eval_examples, args.max_new_tokens, args.system_prompt,
                          resolve_dtype(args.dtype)))
    base = next(acc)
    llmrl_cfg, trl_cfg, lora = settings(h)
    result = {"machine": {**cpu_info(), "load_avg_1min": os.getloadavg()[0]},
              "hyperparameters": h, "llmrl_settings": llmrl_cfg, "trl_settings": trl_cfg, "trl_lora": lora,
              "target": args.target, "eval_examples": args.eval_examples, "base_accuracy": base, "sides": {}}
    for side in args.sides:
        seconds = step_times(args.out, side)
        table = {0: base} | {s: next(acc) for s in steps[side]}
        result["sides"][side] = {
            "time_to_target": time_to_target(seconds, table, args.target),
            "best_accuracy": max(table.values()), "steps": list(table), "accuracy": list(table.values()),
            "cumulative_s": [sum(seconds[:s]) for s in table], "median_step_s": statistics.median(seconds),
            "training_s": sum(seconds), "wall_s": trained["wall_s"].get(side)}
    reach = {side: r["time_to_target"]["seconds"] for side, r in result["sides"].items()}
    if reach.get("llmrl") is not None and reach.get("trl"):
        result["ratio_llmrl_over_trl"] = reach["llmrl"] / reach["trl"]
    else:
        why = [f"{s} was not run" if s not in reach else f"{s} did not reach {args.target}" for s in SIDES
               if reach.get(s) is None] or ["the base model reaches the target (0 s on both sides)"]
        result["ratio_llmrl_over_trl"] = None
        result["no_ratio_because"] = "; ".join(why)
    plot(result["sides"], args.target, os.path.join(args.out, "time_to_accuracy.png"))
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
