"""Issue 6 learning benchmark: does GRPO teach the bundled SmolLM2-135M something in <= 100 steps on a CPU?

Task: the project's one-digit arithmetic word problems (`arithmetic`, bundled in llmrl/data/arithmetic), where the model starts weak but not
hopeless. llmrl's recipe and TRL's GRPOTrainer train with the same hyperparameters in the same run (each in its
own subprocess; `settings` gives every setting whose defaults differ to both explicitly, and TRL gets llmrl's
prompts in llmrl's order); then both final adapters and the base model are evaluated here the same way: greedy
decoding of the first --eval_examples test questions (bf16 weights), scored by llmrl's gsm8k_reward. Reward
curves of both go to one PNG. bench/time_to_accuracy.py reuses these pieces.

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
    """This benchmark's workload: 2 prompts x G, the GSM8K system prompt, gsm8k + format rewards, the final adapter
    only (keys: what `run_llmrl`, `run_trl` and `accuracies` read)."""
    return dict(B=2, G=args.G, max_new_tokens=args.max_new_tokens, lr=args.lr, beta=args.beta, steps=args.steps,
                temperature=1.0, lora_r=16, lora_alpha=32, seed=args.seed, system_prompt=None,
                reward_funcs=["gsm8k", "format"], save_steps=0, dtype="auto")


def settings(h: dict) -> tuple[dict, dict, dict]:
    """The hyperparameters `h` as (llmrl GRPOConfig fields, TRL GRPOConfig fields, peft LoraConfig fields of TRL's
    adapter). Every setting whose default differs, or could, between llmrl's GRPOConfig and TRL 1.16's is given to
    both explicitly; a pair is one line (llmrl name, TRL name, value)."""
    import torch

    from llmrl.llm.model import resolve_dtype

    n = h["B"] * h["G"]
    pairs = [("max_steps", "max_steps", h["steps"]),
             ("per_device_batch_size", "generation_batch_size", n),  # completions sampled per step
             ("micro_batch_size", "per_device_train_batch_size", n),  # all of them in one forward/backward
             ("num_generations", "num_generations", h["G"]),
             ("max_new_tokens", "max_completion_length", h["max_new_tokens"]),
             ("temperature", "temperature", h["temperature"]),
             ("top_p", "top_p", 1.0),
             ("top_k", "top_k", 0),
             ("learning_rate", "learning_rate", h["lr"]),  # TRL's default 1e-6, llmrl's 1e-4
             ("lr_scheduler", "lr_scheduler_type", "constant"),  # TRL's default linear, llmrl's constant_with_warmup
             ("warmup_steps", "warmup_steps", 0),
             ("weight_decay", "weight_decay", 0.0),
             ("adam_beta1", "adam_beta1", 0.9),
             ("adam_beta2", "adam_beta2", 0.999),
             ("max_grad_norm", "max_grad_norm", 1.0),
             ("beta", "beta", h["beta"]),
             ("loss_type", "loss_type", "dapo"),
             ("scale_rewards", "scale_rewards", "group"),  # both: (r - group mean) / (unbiased group std + 1e-4)
             ("clip_low", "epsilon", 0.2),
             ("clip_high", "epsilon_high", 0.2),
             ("ratio_level", "importance_sampling_level", "token"),
             ("num_iterations", "num_iterations", 1),
             ("mask_truncated_completions", "mask_truncated_completions", False),
             ("entropy_coef", "entropy_coef", 0.0),
             ("reward_weights", "reward_weights", [1.0] * len(h["reward_funcs"])),
             ("gradient_checkpointing", "gradient_checkpointing", False),  # TRL's default True recomputes (slower)
             ("use_cpu", "use_cpu", True),
             ("logging_steps", "logging_steps", 1),
             ("seed", "seed", h["seed"])]  # TRL's default 42
    bf16 = resolve_dtype(h["dtype"]) == torch.bfloat16
    llmrl = {a: v for a, _, v in pairs} | dict(
        advantage="grpo", dtype=h["dtype"], reward_funcs=h["reward_funcs"], lora_r=h["lora_r"],
        lora_alpha=h["lora_alpha"], lora_dropout=0.0, lora_target_modules=["all-linear"])
    trl = {b: v for _, b, v in pairs} | dict(
        gradient_accumulation_steps=1, adam_epsilon=1e-8,  # llmrl: torch.optim.AdamW's eps
        repetition_penalty=1.0, min_p=None,  # llmrl's sampler has neither
        bf16=bf16,  # autocast over float32 weights, TRL's fastest CPU setting where llmrl's dtype is bf16
        shuffle_dataset=False)  # the dataset comes in llmrl's prompt order (run_trl)
    lora = dict(r=h["lora_r"], lora_alpha=h["lora_alpha"], lora_dropout=0.0, target_modules="all-linear",
                task_type="CAUSAL_LM")
    return llmrl, trl, lora


def cli_flags(settings: dict) -> list[str]:
    """llmrl command-line flags for GRPOConfig fields (a list is several values, a bool True/False)."""
    flags = []
    for name, value in settings.items():
        flags += [f"--{name}", *map(str, value if isinstance(value, list) else [value])]
    return flags


def run_llmrl(h: dict, dataset: str, out: str) -> float:
    """llmrl's recipe (its CLI) on `h`, every checkpoint kept; returns the wall time of the whole subprocess."""
    llmrl, _, _ = settings(h)
    system = [] if h["system_prompt"] is None else ["--system_prompt", h["system_prompt"]]
    cmd = [sys.executable, os.path.join(ROOT, "recipes", "grpo_gsm8k.py"), "--dataset", dataset, *cli_flags(llmrl),
           *system, "--output_dir", out, "--overwrite_output_dir", "--report_to", "none", "--save_steps",
           str(h["save_steps"]), "--save_total_limit", str(h["steps"]), "--eval_examples", "0",
           "--log_completions", "False"]
    t = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - t


def run_trl(h: dict, dataset: str, out: str) -> float:
    """TRL's GRPOTrainer on `h` in a subprocess, given llmrl's prompts in llmrl's order (its PromptSampler, so both
    trainers see the same questions at each step) through the same prompt builder. Writes log_history.json and
    step_times.json: the seconds of each optimizer step from on_step_begin to on_step_end (generation, scoring,
    forward/backward, clipping, the update: what llmrl's step_time counts; TRL's own step_time leaves out the
    clipping and the update), checkpoint-N/ every h["save_steps"] steps and final/."""
    _, trl, lora = settings(h)
    save = dict(save_strategy="steps", save_steps=h["save_steps"]) if h["save_steps"] else dict(save_strategy="no")
    code = f"""
import json, sys, time
sys.path.insert(0, {ROOT!r})
from peft import LoraConfig
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from llmrl.llm.data import PromptSampler, load_prompt_dataset, make_prompt
from llmrl.llm.model import _from_gguf, resolve_model
from llmrl.llm.rewards import gsm8k_reward, format_reward
h = {h!r}
ds = load_prompt_dataset({dataset!r}, "train")
order = PromptSampler(len(ds), h["B"], 1, 0, h["seed"])
ds = ds.select([i for _ in range(h["steps"]) for i in order.next()])
ds = ds.map(lambda r: {{"prompt": make_prompt(r, "question", h["system_prompt"])}})
text = lambda cs: [c[-1]["content"] if isinstance(c, list) else c for c in cs]
def gsm8k(prompts, completions, answer, **kw): return gsm8k_reward(prompts, text(completions), answer)
def format(prompts, completions, **kw): return format_reward(prompts, text(completions))
class StepClock(TrainerCallback):
    def __init__(self): self.times = []
    def on_step_begin(self, args, state, control, **kw): self.start = time.perf_counter()
    def on_step_end(self, args, state, control, **kw): self.times.append(time.perf_counter() - self.start)
clock = StepClock()
cfg = GRPOConfig(output_dir={out!r}, report_to=[], **{save!r}, **{trl!r})
tr = GRPOTrainer(model=_from_gguf(*resolve_model("bundled")), args=cfg, train_dataset=ds,
                 reward_funcs=[{{"gsm8k": gsm8k, "format": format}}[n] for n in h["reward_funcs"]],
                 peft_config=LoraConfig(**{lora!r}), callbacks=[clock])
tr.train()
tr.model.save_pretrained({os.path.join(out, 'final')!r})
json.dump(tr.state.log_history, open({os.path.join(out, 'log_history.json')!r}, "w"))
json.dump(clock.times, open({os.path.join(out, 'step_times.json')!r}, "w"))
"""
    t = time.time()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.time() - t


def accuracies(adapters: list[str | None], dataset: str, n: int, max_new_tokens: int, system_prompt: str | None,
               dtype) -> list[float]:
    """Greedy accuracy (gsm8k_reward) of the bundled model with each adapter (a peft directory or a run's
    checkpoint-N/; None = the base model alone) on the first n test questions, prompted as the trainers were
    (`system_prompt`: None = the GSM8K instruction, '' = none) in `dtype`: one evaluator for llmrl's and TRL's
    adapters. The base model loads once; each adapter is loaded onto it and unloaded after."""
    from peft import PeftModel

    from llmrl.llm.data import load_prompt_dataset
    from llmrl.llm.evaluation import eos_token_ids, greedy_eval
    from llmrl.llm.model import find_adapter_dir, load_policy

    test = load_prompt_dataset(dataset, "test")
    if n > len(test):
        raise ValueError(f"eval_examples {n} > the {len(test)} test questions of {dataset}; pass at most {len(test)}")
    rows = [test[i] for i in range(n)]
    base, tok = load_policy("bundled", lora=None, dtype=dtype)
    out = []
    for adapter in adapters:
        model = PeftModel.from_pretrained(base, find_adapter_dir(adapter)) if adapter else base
        model.eval()
        res = greedy_eval(model, tok, rows, "gsm8k", "question", system_prompt, max_new_tokens, 50,
                          eos_token_ids(model, tok))
        out.append(res["correct"] / n)
        if adapter:
            base = model.unload()  # the base model without this adapter's layers, for the next one
    return out


def evaluate(adapter: str | None, args) -> float:
    """`accuracies` of one adapter with this benchmark's prompts (the GSM8K instruction) in bf16."""
    import torch

    return accuracies([adapter], args.dataset, args.eval_examples, args.max_new_tokens, None, torch.bfloat16)[0]


def step_times(out: str, side: str) -> list[float]:
    """Seconds of each training step of a side, step 1 first (llmrl: its logged step_time; TRL: step_times.json,
    see run_trl): model loading, logging, checkpoint writing and evaluation excluded."""
    if side == "llmrl":
        return [float(h["step_time"]) for h in logs(out, side)]
    path = os.path.join(out, "trl", "step_times.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: the TRL run in {out} predates the step clock; train it again")
    return [float(t) for t in json.load(open(path))]


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
            result["wall_s"][side] = (run_llmrl if side == "llmrl" else run_trl)(hyper(args), args.dataset,
                                                                                 os.path.join(args.out, side))
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
    # seconds per training step (excludes model loading and evaluation)
    result["median_step_s"] = {side: statistics.median(step_times(args.out, side)) for side in args.sides}
    result["reward_first10"] = {k: sum(v[:10]) / len(v[:10]) for k, v in c.items()}
    result["reward_last10"] = {k: sum(v[-10:]) / len(v[-10:]) for k, v in c.items()}
    plot(c, os.path.join(args.out, "reward_curves.png"), acc)
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
