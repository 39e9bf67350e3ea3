"""Prompt datasets for the LLM trainer: loading (local files or the Hugging Face hub), column checks, and turning
a row into a prompt (plain text or chat messages) and a prompt into the text the model sees."""
from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import datasets

GSM8K_SYSTEM_PROMPT = ("Solve the math problem step by step. "
                       "End with a final line of the form: The answer is N.")

# Local file extension -> the `datasets` loader that reads it.
_LOADERS = {".jsonl": datasets.Dataset.from_json, ".json": datasets.Dataset.from_json,
            ".parquet": datasets.Dataset.from_parquet, ".csv": datasets.Dataset.from_csv}
# Hub datasets with several configs, and the one to use when none is given.
_DEFAULT_CONFIGS = {"openai/gsm8k": "main", "gsm8k": "main"}


def _load_file(path: str) -> datasets.Dataset:
    ext = os.path.splitext(path)[1].lower()
    if ext not in _LOADERS:
        raise ValueError(f"load_prompt_dataset: {path!r} has extension {ext!r}; use one of {', '.join(_LOADERS)}")
    return _LOADERS[ext](path)


def _split_file(directory: str, split: str) -> str:
    candidates = [os.path.join(directory, split + ext) for ext in _LOADERS]
    found = [c for c in candidates if os.path.isfile(c)]
    if not found:
        raise FileNotFoundError(f"load_prompt_dataset: directory {directory!r} has no {split}.jsonl/.json/.parquet/"
                                f".csv (files: {', '.join(sorted(os.listdir(directory))) or 'none'}); pass "
                                f"split= one of those or a file path")
    if len(found) > 1:
        raise ValueError(f"load_prompt_dataset: directory {directory!r} has several files for split {split!r} "
                         f"({', '.join(os.path.basename(f) for f in found)}); pass the file path instead")
    return found[0]


def _looks_local(spec: str) -> bool:
    return (spec.startswith(("/", ".", "~")) or os.path.splitext(spec)[1].lower() in _LOADERS)


def load_prompt_dataset(spec: str, split: str | None = None, config_name: str | None = None) -> datasets.Dataset:
    """A prompt dataset from a local file, a local directory, or the Hugging Face hub.

    - a `.jsonl`/`.json`/`.parquet`/`.csv` file: the whole file (it is one split; `split` is not used);
    - a directory: its `{split}.jsonl` (or .json/.parquet/.csv), split defaulting to "train";
    - anything else: `datasets.load_dataset(spec, config_name, split=split or "train")`; `openai/gsm8k` defaults
      to config "main".
    """
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        return _load_file(_split_file(path, split or "train"))
    if os.path.isfile(path):
        return _load_file(path)
    if _looks_local(spec):
        raise FileNotFoundError(f"load_prompt_dataset: local path {spec!r} does not exist")
    config_name = config_name or _DEFAULT_CONFIGS.get(spec)
    try:
        return datasets.load_dataset(spec, config_name, split=split or "train")
    except Exception as e:
        raise RuntimeError(f"load_prompt_dataset: {spec!r} is not a local path and loading it from the Hugging Face "
                           f"hub failed (the hub must be reachable; or pass a local .jsonl/.json/.parquet/.csv file "
                           f"or directory)\n{type(e).__name__}: {e}") from e


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def check_columns(dataset: datasets.Dataset, required: Sequence[str],
                  needed_by: Mapping[str, str] | None = None) -> None:
    """Raise a one-line error if a required column is absent or the first row lacking a value for one.

    `needed_by` maps a column to who needs it (e.g. "the reward function 'gsm8k_reward'") for the message.
    """
    needed_by = needed_by or {}
    for column in required:
        if column not in dataset.column_names:
            who = needed_by.get(column, "the trainer")
            raise ValueError(f"dataset has no column {column!r} (columns: {', '.join(dataset.column_names)}); "
                             f"{who} needs it")
    first_missing = None
    for column in required:
        row = next((i for i, v in enumerate(dataset[column]) if _is_missing(v)), None)
        if row is not None and (first_missing is None or row < first_missing[0]):
            first_missing = (row, column)
    if first_missing is not None:
        row, column = first_missing
        raise ValueError(f"row {row} has no value for column {column!r}; fill it in or drop the row")


def make_prompt(row: Mapping[str, Any], prompt_column: str = "question",
                system_prompt: str | None = None) -> str | list[dict]:
    """A row's prompt: its `prompt` column as is when that is a list of chat messages; otherwise chat messages
    [system (only if system_prompt is set), user = row[prompt_column]]."""
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        for i, message in enumerate(prompt):
            if not isinstance(message, Mapping) or not {"role", "content"} <= set(message):
                raise ValueError(f"make_prompt: message {i} of the 'prompt' column is {message!r}; each message "
                                 f"must be a dict with 'role' and 'content'")
        return prompt
    if prompt_column not in row:
        raise ValueError(f"make_prompt: row has no column {prompt_column!r} (columns: {', '.join(row)}); set "
                         f"prompt_column to the column holding the question")
    text = row[prompt_column]
    if not isinstance(text, str):
        raise ValueError(f"make_prompt: column {prompt_column!r} holds {type(text).__name__} {text!r}; it must "
                         f"hold the prompt text")
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": text}]


def prompt_to_text(prompt: str | list[dict], tokenizer) -> str:
    """The text the model is given: chat messages through the tokenizer's chat template with the assistant turn
    opened (add_generation_prompt=True); a plain string unchanged."""
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, list):
        raise TypeError(f"prompt_to_text: prompt must be a str or a list of chat messages, got "
                        f"{type(prompt).__name__}")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"prompt_to_text: the prompt is a list of chat messages but tokenizer "
                         f"{getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__!r} has no "
                         f"chat_template; use an instruct model's tokenizer or plain-text prompts")
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
