"""Issue 16 benchmark: trust-region steps (TRPO, optionally NPG) vs GRPO's clipped surrogate with AdamW, on the
bundled SmolLM2-135M-Instruct + LoRA and the one-digit arithmetic task, at equal sample budgets (the same steps x
prompts x G completions, the same seed, so the first batch is the same for every optimizer).

Each optimizer trains through the recipe in its own subprocess (`recipes/grpo_gsm8k.py --optimizer ...`); then the
base model and every final adapter are evaluated the same way as in bench/grpo_learning.py (greedy decoding of the
first --eval_examples test questions, bf16 weights, `gsm8k_reward`). One PNG: mean reward per step, against the
step and against the wall time spent training.

    python bench/trpo_vs_adam.py --steps 100 --out runs/bench_trpo                      # adamw and trpo
    python bench/trpo_vs_adam.py --steps 100 --optimizers npg --out runs/bench_trpo     # add npg to the same run
    python bench/trpo_vs_adam.py --steps 100 --optimizers adamw trpo npg --skip_training --out runs/bench_trpo
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from grpo_learning import evaluate  # noqa: E402  (the same held-out evaluation as the GRPO learning benchmark)


def optimizer_flags(opt: str, args) -> list[str]:
    if opt == "adamw":
        return ["--optimizer", "adamw", "--learning_rate", str(args.lr), "--lr_scheduler", "constant"]
    return ["--optimizer", opt, "--max_kl", str(args.max_kl), "--cg_iters", str(args.cg_iters)]


def train(opt: str, args, out: str) -> float:
    """Train one optimizer through the recipe; returns the wall time of the whole subprocess."""
    cmd = [sys.executable, os.path.join(ROOT, "recipes", "grpo_gsm8k.py"), "--dataset", args.dataset,
           "--max_steps", str(args.steps), "--per_device_batch_size", str(args.B * args.G), "--num_generations",
           str(args.G), "--max_new_tokens", str(args.max_new_tokens), "--beta", "0", "--lora_r", "16",
           "--lora_alpha", "32", "--seed", str(args.seed), "--loss_type", "dapo", "--output_dir", out,
           "--overwrite_output_dir", "--report_to", "none", "--save_steps", "0", "--eval_examples", "0",
           "--micro_batch_size", str(args.micro_batch_size), *optimizer_flags(opt, args)]
    t = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - t


def logs(out: str, opt: str) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(out, opt, "metrics.jsonl"))]


def plot(rows: dict[str, list[dict]], acc: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for opt, rs in rows.items():
        ys = np.asarray([r["reward"] for r in rs], dtype=float)
        t = np.cumsum([r["step_time"] for r in rs]) / 60
        k = min(10, len(ys))
        ma = np.convolve(ys, np.ones(k) / k, mode="valid")
        label = f"{opt} (greedy acc {acc['base']:.2f} -> {acc.get(opt, float('nan')):.2f})"
        for ax, x in zip(axes, (np.arange(1, len(ys) + 1), t)):
            line, = ax.plot(x, ys, alpha=0.25)
            ax.plot(x[k - 1:], ma, color=line.get_color(), label=label)
    axes[0].set_xlabel("step (equal samples per step)")
    axes[1].set_xlabel("training wall time (min)")
    axes[0].set_ylabel("mean reward (gsm8k + format)")
    axes[0].legend()
    fig.suptitle("SmolLM2-135M + LoRA r16, one-digit arithmetic: trust region vs AdamW")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--optimizers", nargs="+", default=["adamw", "trpo"], choices=["adamw", "trpo", "npg"])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--B", type=int, default=2, help="prompts per step")
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    ap.add_argument("--max_kl", type=float, default=0.01, help="trust-region radius (trpo, npg)")
    ap.add_argument("--cg_iters", type=int, default=10)
    ap.add_argument("--max_new_tokens", type=int, default=96)
    ap.add_argument("--micro_batch_size", type=int, default=16,
                    help="completions per forward (the update does not depend on it; memory does)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval_examples", type=int, default=200)
    ap.add_argument("--dataset", default="arithmetic")
    ap.add_argument("--out", default="runs/bench_trpo")
    ap.add_argument("--skip_training", action="store_true", help="only evaluate and plot the runs in --out")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "result.json")
    result = json.load(open(path)) if os.path.exists(path) else {}  # optimizers of earlier invocations are kept
    result["hyperparameters"] = {k: v for k, v in vars(args).items() if k not in ("optimizers", "out",
                                                                                  "skip_training")}
    for opt in args.optimizers:
        if not args.skip_training:
            result.setdefault("wall_s", {})[opt] = train(opt, args, os.path.join(args.out, opt))
    acc = result.setdefault("greedy_accuracy", {})
    if "base" not in acc:
        acc["base"] = evaluate(None, args)
    for opt in args.optimizers:
        acc[opt] = evaluate(os.path.join(args.out, opt, "final"), args)
    done = [opt for opt in ("adamw", "trpo", "npg") if os.path.isfile(os.path.join(args.out, opt, "metrics.jsonl"))]
    rows = {opt: logs(args.out, opt) for opt in done}
    # seconds per step as the trainer logged them (model loading and evaluation excluded)
    for key, field in (("median_step_s", "step_time"), ("median_optimize_s", "optimize_time")):
        result[key] = {opt: statistics.median(float(r[field]) for r in rs) for opt, rs in rows.items()}
    result["reward_first10"] = {opt: statistics.mean(r["reward"] for r in rs[:10]) for opt, rs in rows.items()}
    result["reward_last10"] = {opt: statistics.mean(r["reward"] for r in rs[-10:]) for opt, rs in rows.items()}
    trust = {opt: rs for opt, rs in rows.items() if "trust_region/rejected" in rs[0]}
    result["trust_region"] = {opt: {"rejected_frac": statistics.mean(r["trust_region/rejected"] for r in rs),
                                    "mean_step_frac": statistics.mean(r["trust_region/step_frac"] for r in rs),
                                    "mean_step_kl": statistics.mean(r["trust_region/step_kl"] for r in rs)}
                              for opt, rs in trust.items()}
    plot(rows, acc, os.path.join(args.out, "reward_curves.png"))
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
