"""Benchmark of the policy-gradient family (issue 5) beside Stable-Baselines3 PPO, in one invocation.

CartPole-v1, every agent from its recipe over the seeds: env steps until the mean return of the last 20 training
episodes reaches 475, deterministic evaluation over 20 episodes (reset seeds 1000..1019, as the anchor), and
the training wall time (the loop only, as the anchor times only `learn()`). SB3 PPO runs through
../shared/anchors/sb3_cartpole.py as-is, paired seed by seed with our PPO at the same step budget. Also
REINFORCE with each baseline (the value-baseline runs report every baseline's gradient variance on the same
batches) and PPO on Pendulum-v1.

    python bench/pg_cartpole.py [--seeds 0 1 2 3 4] [--only sb3_ppo ppo ...] [--out bench/results/pg.json]

`--only sb3_ppo_1thread ppo --out OTHER.json` pairs our PPO with the anchor run under OMP_NUM_THREADS=1 (torch on
one thread, as our agents run; its default two threads spin-wait on a busy 2-core box). Every run is a
subprocess under `flock /tmp/llmrl-bench.lock` (the machine is shared: no two benchmark runs overlap). Raw
results go to --out as JSON (re-running with --only replaces those entries and keeps the others), the markdown
tables to stdout and next to it (.md).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANCHOR = ROOT.parent / "shared" / "anchors" / "sb3_cartpole.py"
LOCK = "/tmp/llmrl-bench.lock"
BASELINES = ("none", "constant", "time_dependent", "optimal", "value")

# name -> (recipe, extra flags, step budget)
RUNS = {
    "ppo": ("ppo_cartpole", [], 100_000),
    "ppo_lr1e-3": ("ppo_cartpole", ["--learning_rate", "1e-3"], 100_000),  # the anchor's own step size
    "kl_ppo": ("kl_ppo_cartpole", [], 200_000),
    "a2c": ("a2c_cartpole", [], 200_000),
    "trpo": ("trpo_cartpole", [], 200_000),
    **{f"reinforce_{b}": ("reinforce_cartpole", ["--baseline", b] + (["--report_variance"] if b == "value"
                                                                    else []), 300_000) for b in BASELINES},
    "ppo_pendulum": ("ppo_pendulum", [], None),
}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_json(cmd: list[str], env: dict | None = None) -> dict:
    """Run `cmd` under the benchmark lock; its last stdout line parsed as JSON, plus `process_cpu_s`: the CPU
    seconds of the whole process (imports, setup, training, evaluation; all threads), comparable across
    libraries on a shared machine where wall time depends on the other users' load."""
    cpu = _children_cpu()
    out = subprocess.run(["flock", LOCK, *cmd], capture_output=True, text=True, cwd=ROOT,
                         env=None if env is None else os.environ | env)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]) | {"process_cpu_s": round(_children_cpu() - cpu, 1)}


def run_ours(name: str, seed: int, run_root: Path) -> dict:
    recipe, flags, budget = RUNS[name]
    run_dir = run_root / f"{name}_s{seed}"
    cmd = [sys.executable, str(ROOT / "recipes" / f"{recipe}.py"), "--seed", str(seed), "--output_dir", str(run_dir),
           "--overwrite_output_dir", "--no_progress_bar", "--report_to", "none", *flags]
    if budget is not None:
        cmd += ["--total_timesteps", str(budget)]
    res = run_json(cmd)
    # Learning speed beyond the single crossing of 475: the mean return of the training episodes that ended in
    # the first 100k steps (the area under the learning curve, less noisy than steps-to-475).
    episodes = [r for r in map(json.loads, open(run_dir / "metrics.jsonl")) if "episode_return" in r]
    early = [r["episode_return"] for r in episodes if r["step"] <= 100_000]
    res["mean_return_first_100k"] = statistics.fmean(early) if early else None
    if name == "reinforce_value":  # mean over the run's batches of each baseline's variance, and of its ratio to none
        rows = [r for r in map(json.loads, open(run_dir / "metrics.jsonl")) if "grad_var/none" in r]
        res["grad_var"] = {b: statistics.fmean(r[f"grad_var/{b}"] for r in rows) for b in BASELINES}
        res["grad_var_ratio"] = {b: statistics.fmean(r[f"grad_var/{b}"] / r["grad_var/none"] for r in rows)
                                 for b in BASELINES}
    return res


def run_sb3(seed: int, one_thread: bool = False, anchor: Path = ANCHOR) -> dict:
    """The anchor script as-is; `one_thread` runs it with OMP_NUM_THREADS=1 (torch then uses one thread, as our
    agents do: on a shared 2-core box SB3's default two threads spin-wait for each other)."""
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if one_thread else None
    res = run_json([sys.executable, str(anchor), "ppo", str(seed), "100000"], env)
    return {"seed": seed, "total_timesteps": res["total_steps"], "wall_s": res["wall_s"],
            "steps_to_solve": res["steps_to_475"], "eval_mean_return": res["eval_mean_return"],
            "process_cpu_s": res["process_cpu_s"]}


def _median(xs):
    return statistics.median(xs) if xs else None


def _fmt(x, digits=0):
    return "-" if x is None else f"{x:,.{digits}f}"


def summary_row(name: str, runs: list[dict]) -> str:
    solved = [r["steps_to_solve"] for r in runs if r["steps_to_solve"] is not None]
    # unsolved runs count as "more than the budget": the median is reported only when most runs solved
    med = _median(solved) if len(solved) * 2 > len(runs) else None
    per_seed = ", ".join("-" if r["steps_to_solve"] is None else f"{r['steps_to_solve'] / 1000:.1f}k" for r in runs)
    wall = [r["wall_s"] for r in runs]
    cpu = [r["process_cpu_s"] for r in runs]
    evals = [r["eval_mean_return"] for r in runs]
    return (f"| {name} | {runs[0]['total_timesteps'] / 1000:.0f}k | {len(solved)}/{len(runs)} | {_fmt(med)} | "
            f"{per_seed} | "
            f"{statistics.fmean(evals):.1f} (min {min(evals):.0f}) | {_median(wall):.1f} | {_median(cpu):.1f} |")


def tables(results: dict) -> str:
    head = ("| agent | budget | solved | median steps to 475 | steps to 475 per seed | eval return, mean over "
            "seeds | training wall s (median) | process CPU s (median) |\n|---|---|---|---|---|---|---|---|")
    lines = ["### CartPole-v1", "", head]
    labels = {"sb3_ppo": "SB3 PPO (anchor, as-is)", "sb3_ppo_1thread": "SB3 PPO (anchor, OMP_NUM_THREADS=1)"}
    for name in ("sb3_ppo", "sb3_ppo_1thread", "ppo", "ppo_lr1e-3", "kl_ppo", "a2c", "trpo"):
        if results.get(name):
            lines.append(summary_row(labels.get(name, name), results[name]))
    for sb3 in ("sb3_ppo", "sb3_ppo_1thread"):
        if not (results.get(sb3) and results.get("ppo")):
            continue
        pairs = [(o, s) for o in results["ppo"] for s in results[sb3] if o["seed"] == s["seed"]]
        for key, what in [("wall_s", "training wall time"), ("process_cpu_s", "process CPU time")]:
            ratios = [o[key] / s[key] for o, s in pairs]
            lines += ["", f"ppo / {labels[sb3]} {what}, paired by seed: {', '.join(f'{r:.2f}' for r in ratios)} "
                          f"(median {_median(ratios):.2f})."]
    reinforce = [f"reinforce_{b}" for b in BASELINES if results.get(f"reinforce_{b}")]
    if reinforce:
        lines += ["", "### REINFORCE baselines on CartPole-v1", "", head.replace("| agent |", "| baseline |")]
        lines += [summary_row(n.removeprefix("reinforce_"), results[n]) for n in reinforce]
        if all("mean_return_first_100k" in r for n in reinforce for r in results[n]):
            lines += ["", "| baseline | mean training-episode return in the first 100k steps, per seed | mean |",
                      "|---|---|---|"]
            for n in reinforce:
                early = [r["mean_return_first_100k"] for r in results[n]]
                lines.append(f"| {n.removeprefix('reinforce_')} | {', '.join(f'{x:.0f}' for x in early)} | "
                             f"{statistics.fmean(early):.1f} |")
        value_runs = [r for r in results.get("reinforce_value", []) if "grad_var" in r]
        if value_runs:
            lines += ["", "Gradient-estimator variance (trace of the covariance of the single-episode estimate), "
                          "every baseline on the same batches of the value-baseline runs, mean over batches and "
                          "seeds:", "", "| baseline | variance | variance / none (mean of per-batch ratios) |",
                      "|---|---|---|"]
            for b in BASELINES:
                var = statistics.fmean(r["grad_var"][b] for r in value_runs)
                ratio = statistics.fmean(r["grad_var_ratio"][b] for r in value_runs)
                lines.append(f"| {b} | {var:,.0f} | {ratio:.3f} |")
    if results.get("ppo_pendulum"):
        runs = results["ppo_pendulum"]
        evals = [r["eval_mean_return"] for r in runs]
        lines += ["", "### PPO on Pendulum-v1", "", "| budget | eval return per seed | mean | wall s (median) |",
                  "|---|---|---|---|",
                  f"| {runs[0]['total_timesteps'] / 1000:.0f}k | {', '.join(f'{e:.0f}' for e in evals)} | "
                  f"{statistics.fmean(evals):.1f} | {_median([r['wall_s'] for r in runs]):.1f} |"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--only", nargs="+", default=None,
                        help=f"subset of: sb3_ppo sb3_ppo_1thread {' '.join(RUNS)} (default: all but sb3_ppo_1thread)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "pg_cartpole.json"))
    parser.add_argument("--run_root", default=str(ROOT / "runs" / "bench_pg"))
    parser.add_argument("--anchor", default=str(ANCHOR), help="path of sb3_cartpole.py")
    args = parser.parse_args()
    names = args.only or ["sb3_ppo", *RUNS]
    unknown = sorted(set(names) - {"sb3_ppo", "sb3_ppo_1thread", *RUNS})
    if unknown:
        parser.error(f"--only: unknown runs {unknown}")
    results = json.load(open(args.out)) if os.path.exists(args.out) else {}
    results.pop("_meta", None)
    for name in names:
        results[name] = []
    t0 = time.time()
    for seed in args.seeds:  # seed-major, so SB3 and ours see the machine in the same state
        for name in names:
            if name.startswith("sb3_ppo"):
                res = run_sb3(seed, one_thread=name == "sb3_ppo_1thread", anchor=Path(args.anchor))
            else:
                res = run_ours(name, seed, Path(args.run_root))
            results[name].append(res)
            print(f"[{time.time() - t0:7.0f}s] {name} seed {seed}: {json.dumps(res)}", flush=True)
            os.makedirs(os.path.dirname(args.out), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(results | {"_meta": {"date": time.strftime("%Y-%m-%d"), "seeds": args.seeds}}, f, indent=1)
    md = tables(results)
    Path(args.out).with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
