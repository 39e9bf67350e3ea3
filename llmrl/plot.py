"""Training curves of a run: `python -m llmrl.plot RUN_DIR [--out FILE.png] [--keys k1 k2 ...]`.

Reads RUN_DIR/metrics.jsonl (written by llmrl.utils.RunLogger, one JSON object with "step" per line) and draws
one subplot per key against step. Default keys, those present: for an LLM run reward, rewards/* (per-function
means; */std keys left out), kl, completion_length, loss; for a classic agent run episode_return (raw points and a
moving average).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

LLM_KEYS = ("reward", "rewards/", "kl", "completion_length", "loss")  # "rewards/" stands for every rewards/* key
SMOOTHED_KEYS = ("episode_return",)


def read_metrics(path: str) -> list[dict]:
    """The rows of a metrics.jsonl; a truncated last line (a run killed mid-write) is skipped."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"read_metrics: {path} does not exist; is RUN_DIR the directory of a run?")
    with open(path) as f:
        lines = [(i + 1, line) for i, line in enumerate(f) if line.strip()]
    rows = []
    for k, (lineno, line) in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if k == len(lines) - 1:
                break
            raise ValueError(f"read_metrics: line {lineno} of {path} is not valid JSON: {line[:80]!r}") from None
        if not isinstance(row, dict) or "step" not in row:
            raise ValueError(f"read_metrics: line {lineno} of {path} has no 'step': {line[:80]!r}")
        rows.append(row)
    return rows


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def numeric_keys(rows: list[dict]) -> list[str]:
    """Keys (other than step) with at least one number, in first-seen order."""
    keys = {}
    for row in rows:
        for k, v in row.items():
            if k != "step" and _is_number(v):
                keys[k] = None
    return list(keys)


def default_keys(available: list[str]) -> list[str]:
    """The keys to plot when none are asked for (see the module docstring)."""
    keys = []
    for key in LLM_KEYS + SMOOTHED_KEYS:
        if key == "rewards/":
            keys += sorted(k for k in available if k.startswith("rewards/") and not k.endswith("std"))
        elif key in available:
            keys.append(key)
    return keys


def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` points (fewer at the start); same length as y."""
    c = np.cumsum(np.insert(np.asarray(y, dtype=float), 0, 0.0))
    idx = np.arange(1, len(y) + 1)
    start = np.maximum(idx - window, 0)
    return (c[idx] - c[start]) / (idx - start)


def plot_run(run_dir: str, out: str | None = None, keys: list[str] | None = None) -> str:
    """Write the curves of RUN_DIR to a PNG (default RUN_DIR/curves.png) and return its path."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"plot_run: run directory {run_dir} does not exist")
    path = os.path.join(run_dir, "metrics.jsonl")
    rows = read_metrics(path)
    available = numeric_keys(rows)
    if keys:
        unknown = [k for k in keys if k not in available]
        if unknown:
            raise ValueError(f"plot_run: no numeric key {unknown[0]!r} in {path}; available: "
                             f"{', '.join(available) or 'none'}")
    else:
        keys = default_keys(available)
        if not keys:
            raise ValueError(f"plot_run: none of the default keys are in {path}; pick some with --keys from: "
                             f"{', '.join(available) or 'none'}")
    fig = Figure(figsize=(7, 2.2 * len(keys)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys):
        points = [(r["step"], r[key]) for r in rows if _is_number(r.get(key))]
        x, y = np.array(points, dtype=float).T
        if key in SMOOTHED_KEYS:
            window = max(1, min(50, len(y) // 10))
            ax.plot(x, y, ".", alpha=0.3, label="raw")
            ax.plot(x, moving_average(y, window), label=f"mean of last {window}")
            ax.legend(loc="best", fontsize="small")
        else:
            ax.plot(x, y, marker="." if len(y) < 50 else None)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)))
    out = out or os.path.join(run_dir, "curves.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="llmrl-plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="Run directory holding metrics.jsonl.")
    parser.add_argument("--out", default=None, help="PNG to write (default RUN_DIR/curves.png).")
    parser.add_argument("--keys", nargs="+", default=None, help="Metrics to plot (default: picked by run type).")
    args = parser.parse_args(argv)
    try:
        out = plot_run(args.run_dir, args.out, args.keys)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"llmrl-plot: {e}")
    print(out)


if __name__ == "__main__":
    main()
