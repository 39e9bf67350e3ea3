"""Issue 6 learning benchmark: does GRPO teach the bundled SmolLM2-135M something in <= 100 steps on a CPU?

Task: the project's one-digit arithmetic word problems (`arithmetic`, bundled in llmrl/data/arithmetic), where the model starts weak but not
hopeless. llmrl's recipe and TRL's GRPOTrainer train with the same hyperparameters in the same run (each in its
own subprocess); then both final adapters and the base model are evaluated here the same way: greedy decoding
of the first --eval_examples test questions (bf16 weights), scored by llmrl's gsm8k_reward. Reward curves of
both go to one PNG.

    python bench/grpo_learning.py --steps 100 --out runs/bench_learning            # both
    python bench/grpo_learning.py --steps 100 --sides llmrl --out runs/bench_learning
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)


def hyper(args) -> dict:
    return dict(B=2, G=args.G, max_new_tokens=args.max_new_tokens, lr=args.lr, beta=args.beta, steps=args.steps,
                temperature=1.0, lora_r=16, lora_alpha=32, seed=args.seed)


def run_llmrl(args, out: str) -> float:
    h = hyper(args)
    cmd = [sys.executable, os.path.join(ROOT, "recipes", "grpo_gsm8k.py"), "--dataset", args.dataset,
           "--max_steps", str(h["steps"]), "--per_device_batch_size", str(h["B"] * h["G"]), "--num_generations",
           str(h["G"]), "--max_new_tokens", str(h["max_new_tokens"]), "--learning_rate", str(h["lr"]), "--beta",
           str(h["beta"]), "--lora_r", str(h["lora_r"]), "--lora_alpha", str(h["lora_alpha"]), "--seed",
           str(h["seed"]), "--lr_scheduler", "constant", "--loss_type", "dapo", "--output_dir", out,
           "--overwrite_output_dir", "--report_to", "none", "--save_steps", "0", "--eval_examples", "0"]
    t = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - t


def dataset_dir(name: str) -> str:
    from llmrl.llm.data import BUNDLED_DATASETS, bundled_dataset_dir
    return bundled_dataset_dir(name) if name in BUNDLED_DATASETS else os.path.abspath(name)


def run_trl(args, out: str) -> float:
    """TRL GRPOTrainer with the same hyperparameters (bf16 autocast, TRL's fastest CPU setting)."""
    code = f"""
import json, sys
sys.path.insert(0, {ROOT!r})
from datasets import load_dataset
from peft import LoraConfig
from trl import GRPOConfig, GRPOTrainer
from llmrl.llm.data import GSM8K_SYSTEM_PROMPT
from llmrl.llm.model import _from_gguf, resolve_model
from llmrl.llm.rewards import gsm8k_reward, format_reward
h = {hyper(args)!r}
ds = load_dataset("json", data_files={os.path.join(dataset_dir(args.dataset), 'train.jsonl')!r}, split="train")
ds = ds.map(lambda r: {{"prompt": [{{"role": "system", "content": GSM8K_SYSTEM_PROMPT}},
                                   {{"role": "user", "content": r["question"]}}]}})
text = lambda cs: [c[-1]["content"] if isinstance(c, list) else c for c in cs]
def gsm8k(prompts, completions, answer, **kw): return gsm8k_reward(prompts, text(completions), answer)
def format(prompts, completions, **kw): return format_reward(prompts, text(completions))
cfg = GRPOConfig(output_dir={out!r}, max_steps=h["steps"], per_device_train_batch_size=h["B"] * h["G"],
                 num_generations=h["G"], max_completion_length=h["max_new_tokens"], learning_rate=h["lr"],
                 beta=h["beta"], temperature=h["temperature"], logging_steps=1, save_strategy="no", report_to=[],
                 use_cpu=True, bf16=True, seed=h["seed"], loss_type="dapo", lr_scheduler_type="constant",
                 adam_beta2=0.999, max_grad_norm=1.0)
tr = GRPOTrainer(model=_from_gguf(*resolve_model("bundled")), reward_funcs=[gsm8k, format], args=cfg,
                 train_dataset=ds, peft_config=LoraConfig(r=h["lora_r"], lora_alpha=h["lora_alpha"],
                 lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
tr.train()
tr.model.save_pretrained({os.path.join(out, 'final')!r})
json.dump(tr.state.log_history, open({os.path.join(out, 'log_history.json')!r}, "w"))
"""
    t = time.time()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.time() - t


def evaluate(adapter: str | None, args) -> float:
    import torch
    from peft import PeftModel

    from llmrl.llm.data import GSM8K_SYSTEM_PROMPT, load_prompt_dataset
    from llmrl.llm.model import load_policy
    from llmrl.llm.evaluation import greedy_eval

    model, tok = load_policy("bundled", lora=None, dtype=torch.bfloat16)
    if adapter:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    test = load_prompt_dataset(args.dataset, "test")
    rows = [test[i] for i in range(min(args.eval_examples, len(test)))]
    res = greedy_eval(model, tok, rows, "gsm8k", "question", GSM8K_SYSTEM_PROMPT, args.max_new_tokens, 50)
    return res["correct"] / len(rows)


def logs(out: str, side: str) -> list[dict]:
    """Per-step log rows of a side (llmrl: metrics.jsonl; TRL: trainer.state.log_history)."""
    if side == "llmrl":
        return [json.loads(line) for line in open(os.path.join(out, "llmrl", "metrics.jsonl"))]
    return [h for h in json.load(open(os.path.join(out, "trl", "log_history.json"))) if "reward" in h]


def curves(out: str, sides: list[str]) -> dict:
    """Per-step mean reward of each side."""
    return {side: [float(h["reward"]) for h in logs(out, side)] for side in sides}


def plot(c: dict, path: str, acc: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, ys in c.items():
        ys = np.asarray(ys, dtype=float)
        k = min(10, len(ys))
        ma = np.convolve(ys, np.ones(k) / k, mode="valid")
        line, = ax.plot(np.arange(1, len(ys) + 1), ys, alpha=0.25)
        ax.plot(np.arange(k, len(ys) + 1), ma, color=line.get_color(),
                label=f"{name} (greedy acc {acc['base']:.2f} -> {acc.get(name, float('nan')):.2f})")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward (gsm8k + format)")
    ax.set_title("SmolLM2-135M + LoRA, one-digit arithmetic, CPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--G", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.0)
    ap.add_argument("--max_new_tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval_examples", type=int, default=200)
    ap.add_argument("--dataset", default="arithmetic")
    ap.add_argument("--sides", nargs="+", default=["llmrl", "trl"], choices=["llmrl", "trl"])
    ap.add_argument("--out", default="runs/bench_learning")
    ap.add_argument("--skip_training", action="store_true", help="only evaluate and plot the runs in --out")
    ap.add_argument("--reuse_eval", action="store_true",
                    help="take accuracies already in --out/result*.json (same eval set) instead of evaluating again")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    result = {"hyperparameters": hyper(args), "wall_s": {}}
    prior = os.path.join(args.out, "result.json")
    if os.path.exists(prior):  # sides trained by an earlier invocation keep their wall times
        result["wall_s"] = json.load(open(prior)).get("wall_s", {})
    for side in args.sides:
        if not args.skip_training:
            result["wall_s"][side] = (run_llmrl if side == "llmrl" else run_trl)(args, os.path.join(args.out, side))
    # accuracies already measured in --out (result*.json of earlier invocations, same eval set) are reused with
    # --reuse_eval: greedy decoding is deterministic, so evaluating the same adapter again gives the same number
    known = {}
    if args.reuse_eval:
        for name in sorted(os.listdir(args.out)):
            if name.startswith("result") and name.endswith(".json"):
                known |= json.load(open(os.path.join(args.out, name))).get("greedy_accuracy", {})
    acc = {"base": known["base"] if "base" in known else evaluate(None, args)}
    for side in args.sides:
        acc[side] = known[side] if side in known else evaluate(os.path.join(args.out, side, "final"), args)
    result["greedy_accuracy"] = acc
    c = curves(args.out, args.sides)
    # seconds per training step as each trainer logged it (excludes model loading and evaluation)
    result["median_step_s"] = {side: statistics.median(float(h["step_time"]) for h in logs(args.out, side))
                               for side in args.sides}
    result["reward_first10"] = {k: sum(v[:10]) / len(v[:10]) for k, v in c.items()}
    result["reward_last10"] = {k: sum(v[-10:]) / len(v[-10:]) for k, v in c.items()}
    plot(c, os.path.join(args.out, "reward_curves.png"), acc)
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
