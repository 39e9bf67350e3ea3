"""Training curves of a run: `python -m llmrl.plot RUN_DIR [--out FILE.png] [--keys k1 k2 ...]`.

Reads RUN_DIR/metrics.jsonl (written by llmrl.utils.RunLogger, one JSON object with "step" per line) and draws
one subplot per key against step, except the evaluation metrics (eval/accuracy, eval/pass@k), which share one
panel; where RUN_DIR/eval.json holds accuracy before and after training, they are marked on it (at step 0 and at
the last step). Steps whose every group of completions had the same reward (frac_zero_std_groups = 1: no learning
signal, the update is zero apart from any KL term) are shaded on the reward panel. Default keys, those present:
for an LLM run reward, rewards/* (per-function means, when there are several; */std keys left out), kl, completion_length, loss, eval/*;
for a classic agent run episode_return (raw points and a moving average).
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .utils import cli_main, fail, program_name

# "rewards/" stands for every rewards/* key, "eval/" for every eval/* key
LLM_KEYS = ("reward", "rewards/", "kl", "completion_length", "loss", "eval/")
EVAL_PREFIX = "eval/"
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
        if key in ("rewards/", EVAL_PREFIX):
            found = sorted(k for k in available if k.startswith(key) and not k.endswith("std"))
            if key == "rewards/" and len(found) == 1 and "reward" in available:
                found = []  # one reward function: its curve is the reward's
            keys += found
        elif key in available:
            keys.append(key)
    return keys


def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` points (fewer at the start); same length as y."""
    c = np.cumsum(np.insert(np.asarray(y, dtype=float), 0, 0.0))
    idx = np.arange(1, len(y) + 1)
    start = np.maximum(idx - window, 0)
    return (c[idx] - c[start]) / (idx - start)


def panels(keys: list[str]) -> list[list[str]]:
    """One panel per key, and one for all the eval/* keys together (after the others)."""
    evals = [k for k in keys if k.startswith(EVAL_PREFIX)]
    return [[k] for k in keys if not k.startswith(EVAL_PREFIX)] + ([evals] if evals else [])


def before_after(run_dir: str) -> dict[str, float]:
    """Greedy accuracy before and after training from RUN_DIR/eval.json ({} when it has none)."""
    path = os.path.join(run_dir, "eval.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        try:
            results = json.load(f)
        except json.JSONDecodeError:
            raise ValueError(f"{path} is not valid JSON") from None
    out = {}
    for label in ("before", "after"):
        value = results.get(label) if isinstance(results, dict) else None
        value = value.get("accuracy") if isinstance(value, dict) else value
        if _is_number(value):
            out[label] = float(value)
    return out


NO_SIGNAL = "no learning signal (every group's rewards equal)"


def no_signal_steps(rows: list[dict]) -> list[int]:
    """Steps whose batch had no group with differing rewards (frac_zero_std_groups == 1)."""
    return [r["step"] for r in rows if r.get("frac_zero_std_groups") == 1]


def _shade_no_signal(ax, rows: list[dict]) -> None:
    """Shade each step without learning signal (one legend entry for all of them)."""
    for i, step in enumerate(no_signal_steps(rows)):
        ax.axvspan(step - 0.5, step + 0.5, color="0.85", zorder=0, label=NO_SIGNAL if i == 0 else None)


def plot_run(run_dir: str, out: str | None = None, keys: list[str] | None = None) -> str:
    """Write the curves of RUN_DIR to a PNG (default RUN_DIR/curves.png) and return its path."""
    fig = run_figure(run_dir, keys)
    out = out or os.path.join(run_dir, "curves.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def run_figure(run_dir: str, keys: list[str] | None = None) -> Figure:
    """The figure plot_run draws: one panel per key (the eval/* keys and the before/after marks share one)."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"plot_run: run directory {run_dir} does not exist")
    path = os.path.join(run_dir, "metrics.jsonl")
    rows = read_metrics(path)
    available = numeric_keys(rows)
    wants_eval = not keys or any(k.startswith(EVAL_PREFIX) for k in keys)
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
    marks = before_after(run_dir) if wants_eval else {}
    groups = panels(keys)
    if marks and not any(k.startswith(EVAL_PREFIX) for k in keys):
        groups.append([])  # an eval panel for the before/after marks alone
    fig = Figure(figsize=(7, 2.2 * len(groups)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 1, sharex=True, squeeze=False)[:, 0]
    for ax, group in zip(axes, groups):
        for key in group:
            points = [(r["step"], r[key]) for r in rows if _is_number(r.get(key))]
            x, y = np.array(points, dtype=float).T
            if key in SMOOTHED_KEYS:
                window = max(1, min(50, len(y) // 10))
                ax.plot(x, y, ".", alpha=0.3, label="raw")
                ax.plot(x, moving_average(y, window), label=f"mean of last {window}")
            else:
                ax.plot(x, y, marker="." if len(y) < 50 else None, label=key)
        is_eval = not group or group[0].startswith(EVAL_PREFIX)
        if group and group[0] == "reward":
            _shade_no_signal(ax, rows)
        for label, value in marks.items() if is_eval else ():
            step = 0 if label == "before" else max(r["step"] for r in rows)
            ax.plot([step], [value], "*", markersize=12, label=f"accuracy {label} training: {value:.3f}")
        ax.set_ylabel("eval" if is_eval else group[0])
        if is_eval or group[0] in SMOOTHED_KEYS or ax.get_legend_handles_labels()[1].count(NO_SIGNAL):
            ax.legend(loc="best", fontsize="small")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)))
    return fig


def main(argv: list[str] | None = None) -> None:
    """`llmrl plot RUN_DIR`: raises a user's mistake (a missing run, an unknown key) as FileNotFoundError or
    ValueError, which `llmrl plot` and `llmrl-plot` (run) end in one line `error: ...` and exit code 2."""
    parser = argparse.ArgumentParser(prog=program_name() or "llmrl-plot", description=__doc__.splitlines()[0])
    parser.error = fail  # one line, exit code 2, as every llmrl command
    parser.add_argument("run_dir", help="Run directory holding metrics.jsonl.")
    parser.add_argument("--out", default=None, help="PNG to write (default RUN_DIR/curves.png).")
    parser.add_argument("--keys", nargs="+", default=None, help="Metrics to plot (default: picked by run type).")
    args = parser.parse_args(argv)
    print(plot_run(args.run_dir, args.out, args.keys))


def run() -> None:
    """The installed `llmrl-plot` script's entry point."""
    cli_main(main)


if __name__ == "__main__":
    run()
