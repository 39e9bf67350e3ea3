"""Experiment trackers of a run, through accelerate: TensorBoard (output_dir/tb) and wandb (online or
WANDB_MODE=offline) get the metrics, the config, and the sampled completions as a table (a markdown table in
TensorBoard's text view, a wandb Table)."""
from __future__ import annotations

import importlib.util
import inspect
import os

from ..utils import SetupError, config_dict

TABLE_ROWS = 8  # completions shown per logged step in TensorBoard's text view (wandb gets every one)
CELL_CHARS = 400


def check_tracker_packages(report_to: list[str], owner: str) -> None:
    """Refuse a tracker whose package is missing (accelerate would drop it without a word)."""
    for tracker in report_to:
        if tracker not in ("none", "all") and importlib.util.find_spec(tracker) is None:
            raise ValueError(f"{owner}: report_to {tracker!r} needs the {tracker} package: pip install {tracker} "
                             f"(for wandb: pip install 'llmrl[wandb]'), or drop it from report_to")


def _uses_wandb(report_to: list[str]) -> bool:
    """Whether accelerate would start wandb: named, or 'all' (every installed tracker) with wandb installed."""
    return "wandb" in report_to or ("all" in report_to and importlib.util.find_spec("wandb") is not None)


def check_wandb_login(report_to: list[str]) -> None:
    """Before anything loads: wandb online needs credentials, or wandb.init fails after the model has loaded
    (UsageError: No API key configured). wandb's own lookup decides (WANDB_API_KEY, .netrc, its settings files);
    offline and disabled modes (WANDB_MODE, `wandb offline`) need none."""
    if not _uses_wandb(report_to):
        return
    import wandb

    try:
        from wandb.sdk import wandb_setup
        mode = wandb_setup.singleton().settings.mode  # WANDB_MODE and the settings file `wandb offline` writes
    except (ImportError, AttributeError):  # wandb before the setup singleton
        mode = os.environ.get("WANDB_MODE", "online")
    if mode in ("offline", "dryrun", "disabled"):
        return
    if "prompt" in inspect.signature(wandb.login).parameters:  # looks for credentials without asking for them
        logged_in = wandb.login(prompt=False, verify=False)
    else:  # older wandb: its key lookup (environment, .netrc, settings)
        logged_in = bool(wandb.api.api_key)
    if not logged_in:
        raise SetupError("report_to wandb needs a W&B login: run `wandb login`, set WANDB_API_KEY, or log offline "
                         "with WANDB_MODE=offline (`wandb sync` uploads later)")


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
