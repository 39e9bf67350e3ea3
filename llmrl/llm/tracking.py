"""Experiment trackers of a run, through accelerate: TensorBoard (output_dir/tb) and wandb (online or
WANDB_MODE=offline) get the metrics, the config, and the sampled completions as a table (a markdown table in
TensorBoard's text view, a wandb Table)."""
from __future__ import annotations

import os

from ..utils import config_dict

TABLE_ROWS = 8  # completions shown per logged step in TensorBoard's text view (wandb gets every one)
CELL_CHARS = 400


def init_trackers(acc, cfg) -> None:
    """Start accelerate's trackers for the run (main process; no-op without any). wandb's project is
    $WANDB_PROJECT (default 'llmrl'), its run is named after output_dir, its files go to $WANDB_DIR (default
    output_dir)."""
    if not acc.log_with:
        return
    from accelerate.tracking import WandBTracker

    # accelerate would name wandb's project after init_trackers' first argument, TensorBoard's folder name
    name = os.path.basename(os.path.abspath(cfg.output_dir))
    wandb_kwargs = {"name": name} if os.environ.get("WANDB_DIR") else {"name": name, "dir": cfg.output_dir}
    acc.log_with = [WandBTracker(os.environ.get("WANDB_PROJECT", "llmrl"), **wandb_kwargs) if str(t) == "wandb"
                    else t for t in acc.log_with]
    acc.init_trackers("tb", config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                    for k, v in config_dict(cfg).items()})


def _prompt_text(prompt) -> str:
    """A prompt as one string: plain text, or the last message of a chat prompt (the question)."""
    return prompt if isinstance(prompt, str) else str(prompt[-1]["content"])


def _cell(text) -> str:
    text = str(text)
    text = text if len(text) <= CELL_CHARS else text[:CELL_CHARS] + "..."
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")


def completions_markdown(rows: list[dict]) -> str:
    """A markdown table (TensorBoard's text view renders it) of completion rows {prompt, completion, reward,
    advantage}."""
    lines = ["| prompt | completion | reward | advantage |", "|---|---|---|---|"]
    lines += [f"| {_cell(_prompt_text(r['prompt']))} | {_cell(r['completion'])} | {r['reward']:.3f} | "
              f"{r['advantage']:.3f} |" for r in rows]
    return "\n".join(lines)


def log_completions_table(acc, rows: list[dict], step: int) -> None:
    """This step's completions in the trackers that show tables: the first TABLE_ROWS in TensorBoard's text view,
    all of them as a wandb Table (main process)."""
    for tracker in acc.trackers:
        if tracker.name == "tensorboard":
            tracker.log({"completions": completions_markdown(rows[:TABLE_ROWS])}, step=step)
        elif tracker.name == "wandb":
            columns = ["step", "prompt", "completion", "reward", "advantage"]
            tracker.log_table("completions", columns=columns, step=step,
                              data=[[step, _prompt_text(r["prompt"]), r["completion"], r["reward"], r["advantage"]]
                                    for r in rows])
