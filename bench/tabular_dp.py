"""Value and policy iteration on random sparse MDPs, llmrl vs pymdptoolbox, side by side in one run.

    pip install pymdptoolbox    # or: make bench-env
    flock /tmp/llmrl-bench.lock python bench/tabular_dp.py [--sizes 1000 10000 100000] [--actions 4 10]
                                [--gamma 0.95] [--eps 0.01] [--peer_timeout 900] [--out runs/bench_tabular_dp.json]

The MDP: TabularMDP.random(S, A, successors=5, seed=0): each (s, a) moves to 5 uniform random states with
Dirichlet(1) probabilities, r(s, a) ~ U[0, 1). Both libraries get the same raw input, A scipy CSR (S, S) matrices
and R (S, A), and are timed from it to a policy (llmrl: TabularMDP(...) + solve; pymdptoolbox: constructor + run(),
its constructor computes its iteration bound).

Solvers compared:
- VI, same stopping rule: llmrl value_iteration(stop="span", tol=eps) vs pymdptoolbox ValueIteration(epsilon=eps),
  both stop once sp(V_k - V_{k-1}) < eps (1-gamma)/gamma (an eps-optimal greedy policy). Also llmrl's default
  sup-norm rule (stop="sup"), which needs more sweeps for the same guarantee.
- PI: llmrl policy_iteration (exact evaluation: sparse LU up to 2000 states, BiCGSTAB to 1e-12 above) vs
  pymdptoolbox PolicyIteration (default eval_type="matrix": a dense S x S solve).

A size a library cannot handle shows the error it raised (pymdptoolbox's input check compares each sparse P[a]
with 0, which materializes a dense S x S array). Each solve runs in a fresh subprocess with one BLAS thread (on a shared 2-core box OpenBLAS threads that spin
against other processes made level-1 BLAS ~100x slower). Memory = peak RSS of the solve above the RSS holding the
raw input (Linux VmHWM, reset before the solve). Accuracy: max |V - V_ref| and the fraction of states whose action
equals the reference policy, the reference being llmrl's policy iteration (exact up to the solver residual).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

SOLVERS = [  # (library, algorithm, label)
    ("llmrl", "pi", "llmrl PI"),
    ("pymdptoolbox", "pi", "pymdptoolbox PI"),
    ("llmrl", "vi_span", "llmrl VI (span rule)"),
    ("pymdptoolbox", "vi_span", "pymdptoolbox VI (span rule)"),
    ("llmrl", "vi_sup", "llmrl VI (sup rule)"),
]


def _proc_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def child(lib: str, algo: str, S: int, A: int, gamma: float, eps: float, out: str) -> None:
    """One solve; prints a JSON line and saves V and the policy to `out` (.npz)."""
    import numpy as np
    import scipy.sparse as sp

    from llmrl.classic.mdp import TabularMDP

    base = TabularMDP.random(S, A, successors=5, gamma=gamma, seed=0)
    P = [sp.csr_matrix(base.P[a * S:(a + 1) * S]) for a in range(A)]  # the raw input both libraries get
    R = np.ascontiguousarray(base.r)
    nnz = int(base.P.nnz)
    del base
    gc.collect()
    rss0 = _proc_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM so it measures this solve only
    t0 = time.perf_counter()
    if lib == "llmrl":
        from llmrl.classic.dp import policy_iteration, value_iteration

        mdp = TabularMDP(P, R, gamma)
        t_build = time.perf_counter() - t0
        res = policy_iteration(mdp) if algo == "pi" else value_iteration(mdp, tol=eps, stop=algo[3:])
        V, policy, iters = res.V, res.policy, res.iterations
    else:
        import warnings

        import mdptoolbox.mdp

        warnings.simplefilter("ignore")
        solver = (mdptoolbox.mdp.PolicyIteration(P, R, gamma) if algo == "pi"
                  else mdptoolbox.mdp.ValueIteration(P, R, gamma, epsilon=eps))
        t_build = time.perf_counter() - t0
        solver.run()
        V, policy, iters = np.array(solver.V), np.array(solver.policy), solver.iter
    seconds = time.perf_counter() - t0
    peak_mb = (_proc_kb("VmHWM") - rss0) / 1024
    np.savez(out, V=V, policy=policy)
    print(json.dumps({"seconds": seconds, "setup_seconds": t_build, "iterations": int(iters),
                      "peak_mb": peak_mb, "nnz": nnz}))


def run_one(lib, algo, S, A, args, tmpdir) -> dict:
    out = os.path.join(tmpdir, f"{lib}-{algo}-{S}-{A}.npz")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--child", lib, algo, str(S), str(A), str(args.gamma), str(args.eps), out]
    timeout = args.peer_timeout if lib == "pymdptoolbox" else None
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {timeout:.0f} s"}
    if p.returncode != 0:
        return {"status": "failed: " + (p.stderr.strip().splitlines() or ["?"])[-1][:200]}
    row = json.loads(p.stdout.strip().splitlines()[-1])
    row.update(status="ok", file=out)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--actions", type=int, nargs="+", default=[4, 10])
    ap.add_argument("--gamma", type=float, default=0.95)
    ap.add_argument("--eps", type=float, default=0.01, help="VI tolerance (the greedy policy is eps-optimal)")
    ap.add_argument("--peer_timeout", type=float, default=900, help="seconds allowed to one pymdptoolbox solve")
    ap.add_argument("--out", default="runs/bench_tabular_dp.json")
    ap.add_argument("--table_from", default=None, help="print the Markdown table of a saved --out JSON and exit")
    ap.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        lib, algo, S, A, gamma, eps, out = args.child
        return child(lib, algo, int(S), int(A), float(gamma), float(eps), out)
    if args.table_from:
        with open(args.table_from) as f:
            saved = json.load(f)
        keys = ("library", "algorithm", "S", "A")
        return print(markdown({tuple(r[k] for k in keys): r for r in saved["rows"]}))

    import numpy as np

    try:
        import mdptoolbox  # noqa: F401
        have_peer = True
    except ImportError:
        have_peer = False
        print("pymdptoolbox is not installed (pip install pymdptoolbox): running llmrl only", file=sys.stderr)
    measured: dict = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        for A in args.actions:
            for S in args.sizes:
                for lib, algo, label in SOLVERS:
                    installed = have_peer or lib == "llmrl"
                    row = run_one(lib, algo, S, A, args, tmpdir) if installed else {"status": "not installed"}
                    measured[(lib, algo, S, A)] = row
                    ref = measured[("llmrl", "pi", S, A)]
                    if row.get("status") == "ok" and ref.get("status") == "ok":
                        mine, truth = np.load(row["file"]), np.load(ref["file"])
                        row["max_abs_V_err"] = float(np.abs(mine["V"] - truth["V"]).max())
                        row["policy_agreement"] = float((mine["policy"] == truth["policy"]).mean())
                    print(f"S={S:>6} A={A:>2} {label:<28} " + (
                        f"{row['seconds']:8.2f} s  iters {row['iterations']:>4}  peak {row['peak_mb']:7.1f} MB  "
                        f"|V-V*| {row.get('max_abs_V_err', float('nan')):.1e}  "
                        f"agree {row.get('policy_agreement', float('nan')):.3f}"
                        if row.get("status") == "ok" else row["status"]), flush=True)
    rows = [{"library": lib, "algorithm": algo, "S": S, "A": A, **{k: v for k, v in r.items() if k != "file"}}
            for (lib, algo, S, A), r in measured.items()]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"gamma": args.gamma, "eps": args.eps, "rows": rows}, f, indent=1)
    print(markdown(measured))


def markdown(measured: dict) -> str:
    """The results as the Markdown table of docs/BENCHMARKS.md (time growth: ratio to the size 10x smaller)."""
    lines = ["| S | A | solver | time (s) | of which setup (s) | iterations | peak memory (MB) | max abs(V - V*) | "
             "policy = PI's | time x per 10x S |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (lib, algo, S, A), r in measured.items():
        label = next(lbl for lb, al, lbl in SOLVERS if (lb, al) == (lib, algo))
        if r.get("status") != "ok":
            status = r["status"]
            if "Unable to allocate" in status:  # numpy's MemoryError, without its long tail
                status = "failed: MemoryError, " + status[status.index("Unable"):].split(" and data")[0]
            lines.append(f"| {S:,} | {A} | {label} | {status} | | | | | | |")
            continue
        prev = measured.get((lib, algo, S // 10, A), {})
        growth = f"{r['seconds'] / prev['seconds']:.1f}" if prev.get("status") == "ok" else ""
        reference = (lib, algo) == ("llmrl", "pi")
        err = "(reference)" if reference else f"{r.get('max_abs_V_err', float('nan')):.1e}"
        agree = "(reference)" if reference else f"{r.get('policy_agreement', float('nan')):.1%}"
        mb = r["peak_mb"]
        lines.append(f"| {S:,} | {A} | {label} | {r['seconds']:.3f} | {r['setup_seconds']:.3f} | {r['iterations']} | "
                     f"{mb:.1f} | {err} | {agree} | {growth} |" if mb < 10 else
                     f"| {S:,} | {A} | {label} | {r['seconds']:.3f} | {r['setup_seconds']:.3f} | {r['iterations']} | "
                     f"{mb:.0f} | {err} | {agree} | {growth} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
