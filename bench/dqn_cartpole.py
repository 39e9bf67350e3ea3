"""Benchmark: the DQN family on CartPole-v1 against Stable-Baselines3 DQN, in one run (issue 4).

For each seed, every variant (DQN, Double, Dueling, PER, Noisy, all combined, and DQN / combined with 1-step
targets; same hyperparameters, only the switches differ) and the SB3 anchor (`../shared/anchors/sb3_cartpole.py`
in a subprocess, as-is and once more with OMP_NUM_THREADS=1) train for the same number of env steps, interleaved
so that load drift on a shared machine hits them alike; each run holds /tmp/llmrl-bench.lock (runs of other
benchmarks never overlap ours, and they can go between two of ours). Reported: env steps until the mean return of the last 20
training episodes reaches 475, a deterministic 20-episode evaluation (reset seeds 1000..1019, as the anchor),
wall time of training (the loop only, as the anchor times only `learn()`), and wall time per env step.

    .venv/bin/python bench/dqn_cartpole.py --seeds 1 2 3 4 5 --steps 50000

Raw results go to --out (JSON); the markdown table is printed.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import platform
import subprocess
import sys

import numpy as np
import torch

from llmrl.classic.dqn import DQNConfig, train_dqn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANCHOR = os.path.normpath(os.path.join(REPO, "..", "shared", "anchors", "sb3_cartpole.py"))
LOCK = "/tmp/llmrl-bench.lock"
SWITCHES = ("double", "dueling", "prioritized", "noisy")
# Every agent shares DQNConfig's defaults (tuned for the combined agent, 5-step returns included) and differs only
# in its switches; the two 1-step rows are textbook DQN (Algorithm 6) and what the combined agent loses without
# k-step returns.
VARIANTS = {
    "dqn": {},
    "double": {"double": True},
    "dueling": {"dueling": True},
    "per": {"prioritized": True},
    "noisy": {"noisy": True},
    "combined": {s: True for s in SWITCHES},
    "dqn_1step": {"n_step": 1},
    "combined_1step": {**{s: True for s in SWITCHES}, "n_step": 1},
}


@contextlib.contextmanager
def bench_lock(path: str):
    """Hold the machine's benchmark lock (what `flock PATH cmd` takes) for one run; '' = no lock."""
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_ours(variant: str, seed: int, steps: int, overrides: dict, run_root: str) -> dict:
    settings = {s: False for s in SWITCHES} | VARIANTS[variant] | overrides
    cfg = DQNConfig(seed=seed, total_timesteps=steps, eval_episodes=20, eval_seed=1000,
                    output_dir=os.path.join(run_root, f"{variant}_s{seed}"), overwrite_output_dir=True,
                    report_to="none", progress_bar=False, **settings)
    res = train_dqn(cfg)
    return {"name": variant, "seed": seed, "total_steps": steps, "wall_s": round(res.wall_s, 2),
            "steps_to_475": res.steps_to_solve, "eval_mean_return": res.eval_mean_return,
            "episodes": len(res.episode_returns), "gradient_steps": res.info["gradient_steps"]}


def run_sb3(name: str, seed: int, steps: int, anchor: str) -> dict:
    # "sb3" runs the anchor as-is (torch's default thread count); "sb3_1thread" only sets OMP_NUM_THREADS=1, the
    # thread count our agents train with, to separate implementation cost from threading on a shared machine.
    env = os.environ | ({"OMP_NUM_THREADS": "1"} if name == "sb3_1thread" else {})
    out = subprocess.run([sys.executable, anchor, "dqn", str(seed), str(steps)], capture_output=True, text=True,
                         check=True, env=env).stdout
    row = json.loads(out.strip().splitlines()[-1])
    return {"name": name, "seed": seed, "total_steps": steps, "wall_s": row["wall_s"],
            "steps_to_475": row["steps_to_475"], "eval_mean_return": row["eval_mean_return"]}


def table(rows: list[dict], names: list[str]) -> str:
    def us_per_step(name):
        rs = [r for r in rows if r["name"] == name]
        return np.mean([r["wall_s"] / r["total_steps"] * 1e6 for r in rs]) if rs else None

    refs = [us_per_step("sb3"), us_per_step("sb3_1thread")]
    lines = ["| agent | solved (mean of last 20 >= 475) | env steps to solve, per seed | eval return (20 ep.), "
             "per seed | wall s, mean | us / env step | vs SB3 | vs SB3 1 thread |",
             "|---|---|---|---|---|---|---|---|"]
    for name in names:
        rs = sorted((r for r in rows if r["name"] == name), key=lambda r: r["seed"])
        if not rs:
            continue
        solved = [r["steps_to_475"] for r in rs]
        steps = ", ".join("-" if s is None else str(s) for s in solved)
        evals = ", ".join(f"{r['eval_mean_return']:.0f}" for r in rs)
        wall = np.mean([r["wall_s"] for r in rs])
        us = np.mean([r["wall_s"] / r["total_steps"] * 1e6 for r in rs])
        ratios = " | ".join("" if ref is None else f"{us / ref:.2f}x" for ref in refs)
        lines.append(f"| {name} | {sum(s is not None for s in solved)}/{len(rs)} | {steps} | {evals} | {wall:.1f} "
                     f"| {us:.0f} | {ratios} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--no-sb3", action="store_true", help="skip the Stable-Baselines3 anchor runs")
    ap.add_argument("--anchor", default=ANCHOR, help="path of sb3_cartpole.py")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="override DQNConfig fields for every variant (values parsed as JSON, else strings)")
    ap.add_argument("--lock", default=LOCK, help="lock file held during each run ('' = none; do not also wrap "
                    "this command in flock on the same file: it would wait for itself)")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "dqn_cartpole.json"))
    ap.add_argument("--run_root", default=os.path.join(REPO, "runs", "bench_dqn"), help="each run's output_dir")
    args = ap.parse_args(argv)

    overrides = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    names = args.variants + ([] if args.no_sb3 else ["sb3", "sb3_1thread"])
    rows = []
    for seed in args.seeds:  # interleaved: each seed runs every agent before the next seed
        for name in names:
            with bench_lock(args.lock):
                row = run_sb3(name, seed, args.steps, args.anchor) if name.startswith("sb3") else \
                    run_ours(name, seed, args.steps, overrides, args.run_root)
            rows.append(row)
            print(json.dumps(row), flush=True)

    meta = {"command": " ".join([os.path.relpath(sys.argv[0], REPO)] + (argv or sys.argv[1:])),
            "date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "overrides": overrides,
            "config": dataclasses.asdict(DQNConfig(**overrides))}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(table(rows, names))


if __name__ == "__main__":
    main()
