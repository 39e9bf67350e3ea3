"""Issue 8 benchmark: one GRPO step of llmrl vs TRL's GRPOTrainer on identical work, in the same run.

Workload (the anchor's, ../shared/anchors/trl_grpo_cpu.py): SmolLM2-135M-Instruct (bundled GGUF) + LoRA r=16
alpha=32 on q/k/v/o, the first 64 GSM8K train questions, 2 prompts x G=8 completions per step, up to 128 new
tokens at T=1, beta=0.04 (k3 KL to the reference), lr 1e-5, dapo loss, seed 0. Step 1 is a warm-up; we report
the median of the later steps, tokens/s, peak RSS, the FLOPs of the work each step actually did (counted from
the real prompt and completion lengths), and the achieved FLOP/s against a bf16/fp32 matmul peak measured here.

    python bench/grpo_vs_trl.py --steps 4 --dtype bfloat16 --trl bf16     # llmrl bf16, then TRL bf16
    python bench/grpo_vs_trl.py --steps 4 --dtype float32 --trl fp32

`--ignore_eos` makes llmrl decode all 128 tokens of every completion (TRL's completions may stop earlier, so
llmrl then does at least TRL's work). The TRL side runs the anchor script unchanged in a subprocess.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

ANCHOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "anchors", "trl_grpo_cpu.py")
GSM8K = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "gsm8k", "train.jsonl")
SYSTEM = "Solve the problem. End with 'The answer is N.'"


def matmul_peak(dtype: torch.dtype, n: int = 2048, k: int = 576, m: int = 1536, reps: int = 10) -> float:
    """Best GFLOP/s of a (n x k) @ (k x m) matmul, the shape class of this model's projections."""
    a, w = torch.randn(n, k, dtype=dtype), torch.randn(m, k, dtype=dtype)
    best = 0.0
    for _ in range(3):
        torch.nn.functional.linear(a, w)
    for _ in range(reps):
        t = time.perf_counter()
        torch.nn.functional.linear(a, w)
        best = max(best, 2 * n * k * m / (time.perf_counter() - t) / 1e9)
    return best


def forward_flops(cfg, n_tokens: int, attn_pairs: int, head_tokens: int) -> float:
    """2 x multiply-adds of a forward pass: projections and MLP for n_tokens, attention scores and values for
    attn_pairs (query, key) pairs summed over sequences, and the LM head for head_tokens positions."""
    d, L = cfg.hidden_size, cfg.num_hidden_layers
    D = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    nh, nkv, ff, V = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size, cfg.vocab_size
    per_token = L * (d * nh * D + 2 * d * nkv * D + nh * D * d + 3 * d * ff)
    return 2.0 * (n_tokens * per_token + L * attn_pairs * 2 * nh * D + head_tokens * d * V)


def step_flops(cfg, prompt_lens: list[int], comp_lens: list[int], G: int, decode_steps: int,
               max_new: int, beta: float) -> dict:
    """FLOPs llmrl spends on one step: prefill once per prompt, decode of all rows for every decode step,
    reference forward and training forward (shared prefix: prompt once per group), backward ~ 1 forward for
    activations (LoRA weight gradients are negligible) plus the LM-head logits recomputed in backward."""
    P, C = max(prompt_lens), max_new
    prefill = forward_flops(cfg, sum(prompt_lens) and len(prompt_lens) * P, len(prompt_lens) * P * P // 2,
                            len(prompt_lens))
    N = len(comp_lens)
    decode = forward_flops(cfg, N * decode_steps, N * sum(P + t for t in range(decode_steps)), N * decode_steps)
    Cp = max(comp_lens)  # the padded completion length the training forward runs
    one = forward_flops(cfg, len(prompt_lens) * P + N * Cp, len(prompt_lens) * P * P // 2 + N * (P * Cp + Cp * Cp // 2),
                        N * Cp)
    head = forward_flops(cfg, 0, 0, N * Cp)
    train = 2 * one + head  # forward + backward (activations) + recomputed head logits
    return {"prefill": prefill, "decode": decode, "reference": one if beta > 0 else 0.0, "train": train}


def run_llmrl(args) -> dict:
    from datasets import Dataset

    from llmrl.llm.config import GRPOConfig
    from llmrl.llm.rewards import completion_text
    from llmrl.llm.trainer import GRPOTrainer

    torch.manual_seed(0)
    rows = [json.loads(line) for line in open(args.data)][:64]
    ds = Dataset.from_list([{"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["question"]}],
                             "answer": r["answer"].split("####")[-1].strip().replace(",", "")} for r in rows])

    def correct(prompts, completions, answer, **kw):  # the anchor's reward: last number equals the answer
        import re
        out = []
        for c, a in zip(completions, answer):
            nums = re.findall(r"-?\d+(?:\.\d+)?", completion_text(c).replace(",", ""))
            out.append(1.0 if nums and float(nums[-1]) == float(a) else 0.0)
        return out

    cfg = GRPOConfig(model="bundled", dtype=args.dtype, lora_r=16, lora_alpha=32,
                     lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], per_device_batch_size=16,
                     num_generations=8, max_new_tokens=128, temperature=1.0, beta=0.04, learning_rate=1e-5,
                     loss_type="dapo", lr_scheduler="linear", max_steps=args.steps, seed=0,
                     output_dir=args.output_dir, overwrite_output_dir=True, report_to=["none"], save_steps=0,
                     log_completions=False, micro_batch_size=args.micro_batch_size, sampler=args.sampler,
                     shared_prefix=not args.no_shared_prefix)
    tr = GRPOTrainer(cfg, reward_funcs=[correct], train_dataset=ds)
    if args.ignore_eos:
        tr.eos_ids = [-1]
    steps = []
    for _ in range(args.steps):
        m, r = tr.step()
        m["prompt_lens"] = r.prompt_mask.sum(-1).tolist()
        m["comp_lens"] = r.completion_mask.sum(-1).tolist()
        m["decode_steps"] = r.completion_ids.shape[1]
        steps.append(m)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in m.items()
                          if k in ("step_time", "sample_time", "optimize_time", "gen_time", "completion_length",
                                   "reward", "kl")}), flush=True)
    later = steps[1:] or steps
    flops = [step_flops(tr.model.config, s["prompt_lens"], s["comp_lens"], 8, s["decode_steps"], 128, 0.04)
             for s in later]
    total_flops = [sum(f.values()) for f in flops]
    med = statistics.median(s["step_time"] for s in later)
    return {"who": "llmrl", "dtype": args.dtype, "median_step_s": med,
            "median_sample_s": statistics.median(s["sample_time"] for s in later),
            "median_optimize_s": statistics.median(s["optimize_time"] for s in later),
            "mean_completion_length": statistics.mean(s["completion_length"] for s in later),
            "tokens_per_s": statistics.median(s["tokens_per_s"] for s in later),
            "tflop_per_step": statistics.median(total_flops) / 1e12,
            "flops_breakdown_tflop": {k: round(statistics.median(f[k] for f in flops) / 1e12, 3) for k in flops[0]},
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_trl(args, precision: str) -> dict:
    from llmrl.llm.model import _from_gguf, resolve_model
    model_dir = _from_gguf(*resolve_model("bundled"))  # the same plain HF copy of the bundled GGUF llmrl uses
    cmd = [sys.executable, ANCHOR, model_dir, args.data, str(args.steps)] + (["bf16"] if precision == "bf16" else [])
    t = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"TRL anchor failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    lengths = [h["completions/mean_length"] for h in out["log"] if "completions/mean_length" in h][1:]
    return {"who": "trl", "precision": precision, "median_step_s": out["median_step_s"],
            "mean_completion_length": statistics.mean(lengths) if lengths else None,
            "peak_rss_mb": out["peak_rss_mb"], "trl_version": out["trl_version"], "wall_s": time.time() - t}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--trl", nargs="*", default=[], choices=["bf16", "fp32"], help="also run TRL in these precisions")
    ap.add_argument("--skip_llmrl", action="store_true")
    ap.add_argument("--ignore_eos", action="store_true")
    ap.add_argument("--micro_batch_size", type=int, default=16)
    ap.add_argument("--sampler", default="auto", choices=["auto", "hf"])
    ap.add_argument("--no_shared_prefix", action="store_true")
    ap.add_argument("--data", default=GSM8K)
    ap.add_argument("--output_dir", default="/tmp/llmrl_bench_grpo")
    ap.add_argument("--json", default=None, help="write all results here")
    args = ap.parse_args()
    results = {"machine": os.uname().nodename, "threads": torch.get_num_threads(),
               "matmul_peak_gflops": {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}}
    print(json.dumps(results), flush=True)
    if not args.skip_llmrl:
        ours = run_llmrl(args)
        peak = results["matmul_peak_gflops"]["bf16" if args.dtype == "bfloat16" else "fp32"]
        ours["achieved_gflops"] = ours["tflop_per_step"] * 1e3 / ours["median_step_s"]
        ours["flop_floor_s"] = ours["tflop_per_step"] * 1e3 / peak
        ours["x_flop_floor"] = ours["median_step_s"] / ours["flop_floor_s"]
        results["llmrl"] = ours
        print(json.dumps(ours), flush=True)
    for p in args.trl:
        results[f"trl_{p}"] = run_trl(args, p)
        print(json.dumps(results[f"trl_{p}"]), flush=True)
        if "llmrl" in results:
            results[f"ratio_vs_trl_{p}"] = results["llmrl"]["median_step_s"] / results[f"trl_{p}"]["median_step_s"]
            print(f"llmrl / TRL({p}) s/step = {results[f'ratio_vs_trl_{p}']:.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
