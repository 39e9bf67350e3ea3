"""The `llmrl` command: one subcommand per job, each taking the same flags as its recipe (`--help` lists them) and
`--config FILE.yaml` (a mapping of flags, as TRL's CLI takes it; flags on the command line win).

    llmrl grpo --max_steps 50                     # GRPO-family fine-tuning (recipes/grpo_gsm8k.py)
    llmrl eval --adapter runs/grpo/final          # greedy accuracy / pass@k of a model or adapter
    llmrl preferences --output_dir runs/prefs     # preference pairs sampled from a policy, labelled by rules
    llmrl rm --dataset runs/prefs                 # reward model (Bradley-Terry) (recipes/reward_model.py)
    llmrl plot runs/grpo                          # curves of a run's metrics.jsonl
    accelerate launch -m llmrl.cli grpo ...       # several processes / GPUs
"""
from __future__ import annotations

import importlib
import sys

from .utils import cli_main, close_flags, fail, running_command

# subcommand -> (module, function, what it does)
COMMANDS = {
    "grpo": ("llmrl.scripts.grpo", "main", "GRPO-family fine-tuning of a causal LM (LoRA) with rewards"),
    "eval": ("llmrl.scripts.grpo", "evaluate_main", "evaluate a model, merged model or adapter (greedy, pass@k)"),
    "preferences": ("llmrl.llm.preference_data", "main", "sample preference pairs from a policy, labelled by rules"),
    "rm": ("llmrl.scripts.reward_model", "main", "train a reward model on preference pairs (Bradley-Terry)"),
    "plot": ("llmrl.plot", "main", "plot a run's metrics.jsonl to PNG"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, _, what) in COMMANDS.items()]
    return "usage: llmrl COMMAND [--flags] (llmrl COMMAND --help lists its flags)\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return None
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = close_flags(command, list(COMMANDS))
        fail(f"unknown command {command!r}" + (f"; did you mean {' or '.join(close)}?" if close else "") +
             f" (commands: {', '.join(COMMANDS)})")
    module, function, _ = COMMANDS[command]
    with running_command(f"llmrl {command}"):
        return getattr(importlib.import_module(module), function)(rest)


def run() -> None:
    """The installed `llmrl` script's entry point."""
    cli_main(main)


if __name__ == "__main__":
    run()
