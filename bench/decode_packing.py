"""Decode step time of the lean decoder with its weights packed once for oneDNN (`fast_decode.Linear`) and with
plain F.linear (which re-packs each weight on every call), alternating, on the bundled SmolLM2-135M: 2 prompts of
100 random tokens x G=8 rows, 128 sampled tokens (EOS ignored). Prints ms per token step.

    python bench/decode_packing.py --dtype bfloat16
    python bench/decode_packing.py --dtype float32
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from llmrl.llm import fast_decode, sampling  # noqa: E402
from llmrl.llm.logprobs import prefill  # noqa: E402
from llmrl.llm.model import load_policy  # noqa: E402


def ms_per_token_step(model, pack: bool, B=2, G=8, P=100, C=128) -> float:
    real = fast_decode.packing_works
    fast_decode.packing_works = real if pack else (lambda dtype: False)
    try:
        lean = fast_decode.LlamaSampler(model, rows=B * G)
    finally:
        fast_decode.packing_works = real
    ids = torch.randint(100, 4000, (B, P), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pre = prefill(lean.run, ids, torch.ones_like(ids), G, lean.new_cache(B, P + C))
        t = time.perf_counter()
        out = sampling.decode_loop(lean.run, lean.head, pre, C, sampling.sample_token, torch.tensor([-1]), 0)
    return (time.perf_counter() - t) / out.shape[1] * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    model, _ = load_policy(None, dtype=args.dtype)
    print(f"packing_works({args.dtype}) = {fast_decode.packing_works(getattr(torch, args.dtype))}")
    for _ in range(args.repeats):
        for pack in (False, True):
            ms = ms_per_token_step(model, pack)
            print(f"{args.dtype} {'packed' if pack else 'F.linear'}: {ms:.1f} ms/token step", flush=True)


if __name__ == "__main__":
    main()
