"""Issues 8 and 18 benchmark: one GRPO step of llmrl vs TRL's GRPOTrainer on identical work, in the same run, and
llmrl's time per phase against a roofline floor computed from the work each phase did.

Workload (the anchor's, ../shared/anchors/trl_grpo_cpu.py): SmolLM2-135M-Instruct (bundled GGUF) + LoRA r=16
alpha=32 on q/k/v/o, the first 64 GSM8K train questions, 2 prompts x G=8 completions per step, up to 128 new
tokens at T=1, beta=0.04 (k3 KL to the reference), lr 1e-5, dapo loss, seed 0. Step 1 is a warm-up; we report
the median of the later steps, tokens/s, peak RSS (taken before the bandwidth measurement below), and the CPU
(lscpu's model name, its bf16/AMX flags, the dtype `--dtype auto` resolves to here).

Roofline floor per phase (issue 18): floor = max(FLOPs / matmul peak, bytes / memory bandwidth) for the prefill,
the decode loop, the reference forward and training (forward + backward), each from the step's own batch shapes
(B prompts padded to P tokens, N = B*G completions padded to C tokens; the prompt is processed once per group,
as llmrl's shared-prefix path does). Both peaks are measured in the same run: the matmul peak of the weights'
dtype (a projection-shaped bf16 / fp32 matmul, best of 10) and the read bandwidth (a sum over a 1 GiB tensor,
best of 5; a copy's bandwidth is reported beside it). Bytes count what a phase cannot avoid reading: every
decoder layer's weights and the LM head's, in the weights' dtype, once per forward (per micro-batch; training
reads them twice and the head a third time, its logits being recomputed in backward), plus in decode the key /
value cache each new token attends over, laid out as the decoder holds it (N rows, the prompt's slots in each).
Activations are not counted, so a phase whose arithmetic dominates has its FLOP floor as floor; decode is bound
by streaming the weights, which the FLOP floor alone hides. Phases with no floor: the sampler's setup (LoRA
folded into the weights) and "other" (tokenizing, rewards, advantages: the step's time outside the phases).
The phase times are the trainer's metrics (time/prefill, time/decode, time/reference, optimize_time).

    flock /tmp/llmrl-bench.lock python bench/grpo_vs_trl.py --steps 4 --dtype auto --trl bf16 fp32
    flock /tmp/llmrl-bench.lock python bench/grpo_vs_trl.py --steps 4 --dtype float32 --trl fp32

`--ignore_eos` makes llmrl decode all 128 tokens of every completion (TRL's completions may stop earlier, so
llmrl then does at least TRL's work). The TRL side runs the anchor script unchanged in a subprocess.
`--max_new_tokens` shortens llmrl's work for a quick check of the script (not with --trl: the anchor decodes 128).
On a machine busier than its cores, torch's threads wait for each other several times over: the 1-minute load
average is recorded, and `--torch_threads 1` gives timings less distorted by other jobs (not a quiet run's).
"""
from __future__ import annotations

import argparse
import json
import math
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
ANCHOR_NEW_TOKENS = 128
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")  # bf16 speed
PHASES = ("sampler_setup", "prefill", "decode", "reference", "training", "other")


# ----------------------------------------------------------------------------- the machine
def cpu_info() -> dict:
    """lscpu's model name (with family / model numbers: a VM may name only the vendor), the flags of CPU_FLAGS this
    CPU has, and the dtype `dtype="auto"` resolves to here."""
    from llmrl.llm.model import resolve_dtype

    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
        model = f"{fields.get('Model name', 'unknown')} (family {fields.get('CPU family', '?')} model " \
                f"{fields.get('Model', '?')})"
    except (OSError, subprocess.CalledProcessError):
        model = "unknown (no lscpu)"
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        flags = set()
    return {"cpu_model": model, "cpu_flags": [f for f in CPU_FLAGS if f in flags],
            "dtype_auto": str(resolve_dtype("auto")).removeprefix("torch."), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


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


def memory_bandwidth(gib: float = 1.0, reps: int = 5) -> dict:
    """Best GB/s (1e9 bytes) over `reps` of reading a `gib` GiB fp32 tensor (a sum: reads only) and of copying it
    (read + write bytes); far larger than any cache, so both stream from memory."""
    x = torch.ones(int(gib * 2**30) // 4)  # ones, not empty: the pages are touched before timing
    y = torch.empty_like(x)
    nbytes = x.numel() * 4
    read = copy = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        x.sum()
        read = max(read, nbytes / (time.perf_counter() - t) / 1e9)
        t = time.perf_counter()
        y.copy_(x)
        copy = max(copy, 2 * nbytes / (time.perf_counter() - t) / 1e9)
    return {"read_gbs": read, "copy_gbs": copy, "tensor_gib": gib}


# ----------------------------------------------------------------------------- the work of a step
def forward_flops(cfg, n_tokens: int, attn_pairs: int, head_tokens: int) -> float:
    """2 x multiply-adds of a forward pass: projections and MLP for n_tokens, attention scores and values for
    attn_pairs (query, key) pairs summed over sequences, and the LM head for head_tokens positions."""
    d, L = cfg.hidden_size, cfg.num_hidden_layers
    D = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    nh, nkv, ff, V = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size, cfg.vocab_size
    per_token = L * (d * nh * D + 2 * d * nkv * D + nh * D * d + 3 * d * ff)
    return 2.0 * (n_tokens * per_token + L * attn_pairs * 2 * nh * D + head_tokens * d * V)


def weight_bytes(model) -> tuple[int, int, int]:
    """(bytes of the decoder layers' weights, bytes of the LM head's weight, bytes per element) of the base model:
    what one forward pass must read. The embedding's lookup reads only the rows used; LoRA weights are tiny."""
    from llmrl.llm.logprobs import logits_head
    from llmrl.llm.model import unwrap_peft

    dec = unwrap_peft(model).get_decoder()
    layers = [p for n, p in dec.named_parameters() if not n.startswith("embed_tokens") and "lora_" not in n]
    head = logits_head(model).weight
    return sum(p.numel() * p.element_size() for p in layers), head.numel() * head.element_size(), head.element_size()


def phase_work(cfg, B: int, P: int, N: int, C: int, micro_batches: int, layer_bytes: int, head_bytes: int,
               elem: int, reference: bool) -> dict[str, tuple[float, float]]:
    """{phase: (FLOPs, bytes)} of one step of B prompts padded to P tokens and N completions padded to C tokens.

    prefill: B*P tokens, causal attention, cache written. decode: C tokens sampled, the first from the prefill's
    last hidden state (one LM head), then C-1 forwards of N rows, the one at step t attending over P+t+1 slots.
    reference and training: one pass over the prompts (once per group) and the N*C completion tokens with the LM
    head at every completion token, once per micro-batch; training adds backward ~ one more forward (activation
    gradients; the frozen base weights get none) and the LM head's logits recomputed in backward."""
    L, D = cfg.num_hidden_layers, getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_slot = L * 2 * cfg.num_key_value_heads * D * elem  # bytes of one token's keys and values
    weights = layer_bytes + head_bytes
    steps = range(C - 1)
    prefill = (forward_flops(cfg, B * P, B * P * (P + 1) // 2, 0), layer_bytes + B * P * kv_slot)
    decode = (forward_flops(cfg, N * (C - 1), N * sum(P + t + 1 for t in steps), N * C),
              (C - 1) * layer_bytes + C * head_bytes + N * sum(P + t + 1 for t in steps) * kv_slot)
    pairs = B * P * (P + 1) // 2 + N * (P * C + C * (C + 1) // 2)
    one = forward_flops(cfg, B * P + N * C, pairs, N * C)
    head = forward_flops(cfg, 0, 0, N * C)
    return {"prefill": prefill, "decode": decode,
            "reference": (one, micro_batches * weights) if reference else (0.0, 0.0),
            "training": (2 * one + head, micro_batches * (2 * weights + head_bytes))}


def roofline(work: dict[str, tuple[float, float]], gflops: float, read_gbs: float) -> dict[str, dict]:
    """{phase: FLOPs, bytes, flop_floor_s, byte_floor_s, floor_s} at the measured matmul peak and bandwidth."""
    out = {}
    for phase, (flops, nbytes) in work.items():
        f, b = flops / (gflops * 1e9), nbytes / (read_gbs * 1e9)
        out[phase] = {"gflop": flops / 1e9, "gbytes": nbytes / 1e9, "flop_floor_s": f, "byte_floor_s": b,
                      "floor_s": max(f, b), "bound": "FLOPs" if f >= b else "bytes"}
    return out


# ----------------------------------------------------------------------------- the two trainers
def run_llmrl(args) -> dict:
    """llmrl's steps on the anchor workload: per step its metrics and the batch shapes the floors need."""
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
                     num_generations=8, max_new_tokens=args.max_new_tokens, temperature=1.0, beta=0.04,
                     learning_rate=1e-5, loss_type="dapo", lr_scheduler="linear", max_steps=args.steps, seed=0,
                     output_dir=args.output_dir, overwrite_output_dir=True, report_to=["none"], save_steps=0,
                     log_completions=False, micro_batch_size=args.micro_batch_size, sampler=args.sampler,
                     shared_prefix=not args.no_shared_prefix, torch_threads=args.torch_threads)
    tr = GRPOTrainer(cfg, reward_funcs=[correct], train_dataset=ds)
    if args.ignore_eos:
        tr.eos_ids = [-1]
    steps = []
    for _ in range(args.steps):
        m, r = tr.step()
        N = len(r)
        m["shape"] = {"B": r.prompt_ids.shape[0], "P": r.prompt_ids.shape[1], "N": N, "C": r.completion_ids.shape[1],
                      "micro_batches": math.ceil(N / cfg.micro_batch_size), "reference": r.ref_logp is not None}
        steps.append(m)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in m.items()
                          if k in ("step_time", "sample_time", "optimize_time", "gen_time", "completion_length",
                                   "reward", "kl", "shape") or k.startswith("time/")}), flush=True)
    layer_bytes, head_bytes, elem = weight_bytes(tr.model)
    return {"who": "llmrl", "dtype": str(tr.dtype).removeprefix("torch."), "steps": steps,
            "weights": {"layer_bytes": layer_bytes, "head_bytes": head_bytes, "element_size": elem},
            "config": tr.model.config, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def phase_times(m: dict) -> dict[str, float]:
    """Seconds of each phase of one step from the trainer's metrics; "other" is the rest of step_time."""
    t = {"sampler_setup": m["time/sampler_setup"], "prefill": m["time/prefill"], "decode": m["time/decode"],
         "reference": m["time/reference"], "training": m["optimize_time"]}
    t["other"] = m["step_time"] - sum(t.values())
    return t


def llmrl_report(run: dict, machine: dict) -> dict:
    """Medians over the steps after the warm-up: step time, phase times, their floors and the ratios."""
    later = run["steps"][1:] or run["steps"]
    peak = machine["matmul_peak_gflops"]["bf16" if run["dtype"] == "bfloat16" else "fp32"]
    bw = machine["memory_bandwidth"]["read_gbs"]
    w = run["weights"]
    floors = [roofline(phase_work(run["config"], **s["shape"], layer_bytes=w["layer_bytes"],
                                  head_bytes=w["head_bytes"], elem=w["element_size"]), peak, bw) for s in later]
    times = [phase_times(s) for s in later]
    med = lambda xs: statistics.median(xs)  # noqa: E731
    phases = {}
    for p in PHASES:
        row = {"s": med(t[p] for t in times)}
        if p in floors[0]:
            row.update({k: med(f[p][k] for f in floors) for k in ("gflop", "gbytes", "flop_floor_s", "byte_floor_s",
                                                                   "floor_s")})
            row["bound"] = floors[0][p]["bound"]
            row["x_floor"] = row["s"] / row["floor_s"] if row["floor_s"] > 0 else None
        phases[p] = row
    step_s = med(s["step_time"] for s in later)
    floor_s = sum(r.get("floor_s", 0.0) for r in phases.values())
    gflop = sum(r.get("gflop", 0.0) for r in phases.values())
    return {"who": "llmrl", "dtype": run["dtype"], "median_step_s": step_s,
            "median_sample_s": med(s["sample_time"] for s in later),
            "median_optimize_s": med(s["optimize_time"] for s in later),
            "mean_completion_length": statistics.mean(s["completion_length"] for s in later),
            "tokens_per_s": med(s["tokens_per_s"] for s in later), "peak_rss_mb": run["peak_rss_mb"],
            "matmul_peak_gflops": peak, "read_gbs": bw, "tflop_per_step": gflop / 1e3,
            "achieved_gflops": gflop / step_s, "flop_floor_s": gflop / peak, "x_flop_floor": step_s * peak / gflop,
            "floor_s": floor_s, "x_floor": step_s / floor_s, "phases": phases,
            "weights": run["weights"], "shapes": [s["shape"] for s in later]}


def print_phases(ours: dict) -> None:
    print(f"\nllmrl {ours['dtype']}: per phase, median of steps after the first "
          f"(matmul peak {ours['matmul_peak_gflops']:.0f} GFLOP/s, read bandwidth {ours['read_gbs']:.1f} GB/s)")
    print(f"{'phase':<14}{'s/step':>9}{'GFLOP':>9}{'GB read':>9}{'FLOP fl.':>10}{'byte fl.':>10}{'floor':>9}"
          f"{'x floor':>9}  bound")
    for p, r in ours["phases"].items():
        if "floor_s" in r:
            x = f"{r['x_floor']:.2f}" if r["x_floor"] is not None else "-"
            print(f"{p:<14}{r['s']:>9.3f}{r['gflop']:>9.1f}{r['gbytes']:>9.2f}{r['flop_floor_s']:>10.3f}"
                  f"{r['byte_floor_s']:>10.3f}{r['floor_s']:>9.3f}{x:>9}  {r['bound']}")
        else:
            print(f"{p:<14}{r['s']:>9.3f}{'(no floor)':>47}")
    print(f"{'step':<14}{ours['median_step_s']:>9.3f}{ours['tflop_per_step'] * 1e3:>9.1f}{'':>29}"
          f"{ours['floor_s']:>9.3f}{ours['x_floor']:>9.2f}\n", flush=True)


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
    ap.add_argument("--dtype", default="bfloat16", choices=["auto", "bfloat16", "float32"],
                    help="llmrl's weights; auto resolves per CPU (recorded as dtype_auto)")
    ap.add_argument("--trl", nargs="*", default=[], choices=["bf16", "fp32"], help="also run TRL in these precisions")
    ap.add_argument("--skip_llmrl", action="store_true")
    ap.add_argument("--ignore_eos", action="store_true")
    ap.add_argument("--max_new_tokens", type=int, default=ANCHOR_NEW_TOKENS,
                    help="llmrl's completion budget; other than 128 only for a quick check, without --trl")
    ap.add_argument("--micro_batch_size", type=int, default=16)
    ap.add_argument("--sampler", default="auto", choices=["auto", "hf"])
    ap.add_argument("--no_shared_prefix", action="store_true")
    ap.add_argument("--torch_threads", type=int, default=0,
                    help="llmrl's and the peaks' CPU threads (0: torch's default); 1 on a busy machine")
    ap.add_argument("--data", default=GSM8K)
    ap.add_argument("--output_dir", default="/tmp/llmrl_bench_grpo")
    ap.add_argument("--json", default=None, help="write all results here")
    args = ap.parse_args()
    if args.trl and args.max_new_tokens != ANCHOR_NEW_TOKENS:
        ap.error(f"--max_new_tokens {args.max_new_tokens} with --trl: the TRL anchor decodes {ANCHOR_NEW_TOKENS} "
                 f"tokens, so drop --max_new_tokens or --trl")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    machine = {"machine": os.uname().nodename, "load_avg_1min": os.getloadavg()[0], **cpu_info(),
               "matmul_peak_gflops": {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}}
    print(json.dumps(machine), flush=True)
    flags = " ".join(machine["cpu_flags"]) or f"none of {' '.join(CPU_FLAGS)}"
    print(f"CPU {machine['cpu_model']}, flags: {flags}; --dtype auto -> {machine['dtype_auto']}; "
          f"{machine['threads']} threads", flush=True)
    results = {"machine": machine}
    run = None if args.skip_llmrl else run_llmrl(args)  # before the bandwidth's 2 GiB, which would set peak RSS
    machine["memory_bandwidth"] = memory_bandwidth()
    print(json.dumps({"memory_bandwidth": machine["memory_bandwidth"]}), flush=True)
    if run is not None:
        ours = results["llmrl"] = llmrl_report(run, machine)
        print(json.dumps({k: v for k, v in ours.items() if k not in ("phases", "shapes", "weights")}), flush=True)
        print_phases(ours)
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
