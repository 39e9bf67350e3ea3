"""Prompt datasets for the LLM trainer: loading (the bundled data, local files, the Hugging Face hub), checks at
construction, the seeded prompt order, and turning a row into the prompt the model sees.

Which column is the prompt, and what becomes of it (`prompt_column`, default None):
  - a `prompt` column (TRL's standard format; used by default when the dataset has one): text is given to the
    model as is (no chat template, no system prompt, so base models work), chat messages go through the
    tokenizer's chat template;
  - any other column (default `question`, GSM8K's): its text becomes a user turn after the system prompt
    (`system_prompt`; default GSM8K_SYSTEM_PROMPT, "" for none), through the chat template; a column of chat
    messages is used as they are.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from importlib import resources
from typing import Any, Mapping, Sequence

import datasets
import torch

from ..utils import SetupError
from .rewards import RESERVED_ARGUMENTS

GSM8K_SYSTEM_PROMPT = ("Solve the math problem step by step. "
                       "End with a final line of the form: The answer is N.")
# Datasets shipped inside the package (llmrl/data/NAME/{train,test}.jsonl), loadable by name from anywhere.
BUNDLED_DATASETS = ("arithmetic",)
TRL_PROMPT_COLUMN, DEFAULT_QUESTION_COLUMN = "prompt", "question"

# Local file extension -> the `datasets` loader that reads it.
_LOADERS = {".jsonl": datasets.Dataset.from_json, ".json": datasets.Dataset.from_json,
            ".parquet": datasets.Dataset.from_parquet, ".csv": datasets.Dataset.from_csv}
# Hub datasets with several configs, and the one to use when none is given.
_DEFAULT_CONFIGS = {"openai/gsm8k": "main", "gsm8k": "main"}


def bundled_dataset_dir(name: str) -> str:
    """The directory of a dataset shipped with llmrl (e.g. "arithmetic"), wherever the package is installed."""
    if name not in BUNDLED_DATASETS:
        raise ValueError(f"no bundled dataset {name!r}; bundled: {', '.join(BUNDLED_DATASETS)}")
    return str(resources.files("llmrl") / "data" / name)


def _json_fault(path: str) -> str | None:
    """What is wrong with a .json/.jsonl file, naming the line (1-based), or None if every line reads."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        return "is empty"
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        pass
    else:  # one JSON document: a .json list of rows
        return "has no rows" if document == [] else None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            return f"line {number} is not valid JSON ({e.msg} at column {e.colno})"
        if not isinstance(row, dict):
            return f"line {number} holds a JSON {type(row).__name__}, not an object (one row per line)"
    return None


def _load_file(path: str, setting: str = "dataset") -> datasets.Dataset:
    ext = os.path.splitext(path)[1].lower()
    if ext not in _LOADERS:
        raise ValueError(f"{setting}: {path!r} has extension {ext!r}; use one of {', '.join(_LOADERS)}")
    try:
        dataset = _LOADERS[ext](path)
    except Exception as e:  # datasets says "An error occurred while generating the dataset" (or a bare StopIteration)
        fault = _json_fault(path) if ext in (".json", ".jsonl") else None
        if fault is None:
            fault = f"cannot be read ({type(e).__name__}: {' '.join(str(e).split())})"
        raise ValueError(f"{setting}: {path} {fault}") from e
    if len(dataset) == 0:
        raise ValueError(f"{setting}: {path} has no rows")
    return dataset


def _split_file(directory: str, split: str, setting: str = "dataset", split_setting: str = "dataset_split") -> str:
    candidates = [os.path.join(directory, split + ext) for ext in _LOADERS]
    found = [c for c in candidates if os.path.isfile(c)]
    if not found:
        splits = sorted({os.path.splitext(n)[0] for n in os.listdir(directory) if os.path.splitext(n)[1] in _LOADERS})
        there = (f"its splits: {', '.join(splits)}; pass --{split_setting} one of them" if splits else
                 f"it holds no .jsonl/.json/.parquet/.csv file; pass a directory that does")
        raise FileNotFoundError(f"{setting}: directory {directory!r} has no {split}.jsonl/.json/.parquet/.csv "
                                f"({there}, or a file path)")
    if len(found) > 1:
        raise ValueError(f"{setting}: directory {directory!r} has several files for split {split!r} "
                         f"({', '.join(os.path.basename(f) for f in found)}); pass the file path instead")
    return found[0]


def _looks_local(spec: str) -> bool:
    return (spec.startswith(("/", ".", "~")) or os.path.splitext(spec)[1].lower() in _LOADERS)


def load_prompt_dataset(spec: str, split: str | None = None, config_name: str | None = None, setting: str = "dataset",
                        split_setting: str = "dataset_split") -> datasets.Dataset:
    """A prompt dataset by name, from a local file or directory, or from the Hugging Face hub.

    - a bundled name (BUNDLED_DATASETS, e.g. "arithmetic"): the data shipped inside llmrl, its `{split}.jsonl`;
      the name wins over a local directory of the same name (write "./arithmetic" for that);
    - a `.jsonl`/`.json`/`.parquet`/`.csv` file: the whole file (it is one split; `split` is not used);
    - a directory: its `{split}.jsonl` (or .json/.parquet/.csv), split defaulting to "train";
    - anything else: `datasets.load_dataset(spec, config_name, split=split or "train")`; `openai/gsm8k` defaults
      to config "main".
    A file that cannot be read (a malformed line: its number) or that has no rows is a one-line error naming
    `setting` (and `split_setting` for a missing split): the settings the caller read spec and split from.
    """
    if spec in BUNDLED_DATASETS:
        return _load_file(_split_file(bundled_dataset_dir(spec), split or "train", setting, split_setting), setting)
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        return _load_file(_split_file(path, split or "train", setting, split_setting), setting)
    if os.path.isfile(path):
        return _load_file(path, setting)
    if _looks_local(spec):
        raise FileNotFoundError(f"{setting}: local path {spec!r} does not exist; pass an existing file or directory, "
                                f"a bundled dataset ({', '.join(BUNDLED_DATASETS)}) or a hub dataset name")
    config_name = config_name or _DEFAULT_CONFIGS.get(spec)
    what = (f"{setting}: {spec!r} is not a local path or bundled dataset ({', '.join(BUNDLED_DATASETS)}) "
            f"and")
    fix = "pass a local .jsonl/.json/.parquet/.csv file or directory"
    if not datasets.config.HF_HUB_OFFLINE:  # fail at once, not after a minute of retries
        from .hub import hub_unreachable
        why = hub_unreachable()
        if why:
            raise ConnectionError(f"{what} {why}; {fix}")
    try:
        return datasets.load_dataset(spec, config_name, split=split or "train")
    except Exception as e:  # not on the hub, not cached while offline, no such split or config: the user's to fix
        detail = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        offline = " (HF_HUB_OFFLINE is set)" if datasets.config.HF_HUB_OFFLINE else ""
        raise SetupError(f"{what} loading it from the Hugging Face hub failed{offline}: {detail}; {fix}") from e


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


def resolve_prompt_column(columns: Sequence[str], prompt_column: str | None = None) -> str:
    """The column holding the prompt: `prompt_column` if given, else TRL's 'prompt' when present, else
    'question'."""
    if prompt_column is not None:
        return prompt_column
    return TRL_PROMPT_COLUMN if TRL_PROMPT_COLUMN in columns else DEFAULT_QUESTION_COLUMN


def _prompt_fault(value: Any, column: str, system_prompt: str | None) -> str | None:
    """Why a prompt column value cannot be used, or None."""
    if isinstance(value, list):
        # datasets stores a list of dicts as structs with every key, so a key a message lacks reads as None
        bad = next((i for i, m in enumerate(value) if not (isinstance(m, Mapping) and isinstance(m.get("role"), str)
                                                           and m.get("content") is not None)), None)
        if bad is not None:
            return (f"message {bad} of column {column!r} is {value[bad]!r}; each message must be a dict with 'role' "
                    f"and 'content'")
    elif not isinstance(value, str):
        return f"column {column!r} holds {type(value).__name__} {value!r}; it must hold text or chat messages"
    if system_prompt and (isinstance(value, list) or column == TRL_PROMPT_COLUMN):
        return (f"system_prompt is set, but column {column!r} holds whole prompts (used as they are); put the "
                f"system message in the prompts, or set system_prompt to ''")
    return None


def _prompt_value(row: Mapping[str, Any], prompt_column: str | None,
                  system_prompt: str | None) -> tuple[str, str | list[dict]]:
    column = resolve_prompt_column(list(row), prompt_column)
    if column not in row:
        raise ValueError(f"row has no column {column!r} (columns: {', '.join(row)}); set prompt_column to the "
                         f"column holding the prompt")
    fault = _prompt_fault(row[column], column, system_prompt)
    if fault:
        raise ValueError(fault)
    return column, row[column]


def row_prompt(row: Mapping[str, Any], prompt_column: str | None = None) -> str | list[dict]:
    """A row's prompt as the dataset holds it (text or chat messages): what reward functions get as `prompts`."""
    return _prompt_value(row, prompt_column, None)[1]


def make_prompt(row: Mapping[str, Any], prompt_column: str | None = None,
                system_prompt: str | None = None) -> str | list[dict]:
    """The prompt the model is given for a row (the rules are in the module docstring): a 'prompt' column's text
    as is; chat messages as they are; other text as [system (system_prompt; None = GSM8K_SYSTEM_PROMPT, '' =
    none), user = the text]."""
    column, prompt = _prompt_value(row, prompt_column, system_prompt)
    if isinstance(prompt, list) or column == TRL_PROMPT_COLUMN:
        return prompt
    system = GSM8K_SYSTEM_PROMPT if system_prompt is None else system_prompt
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def check_prompt_dataset(dataset: datasets.Dataset, tokenizer, prompt_column: str | None = None,
                         system_prompt: str | None = None, needed_by: Mapping[str, str] | None = None) -> None:
    """Refuse, with one line naming the column, a dataset the trainer cannot use: no rows, no prompt column,
    a prompt that is neither text nor chat messages, chat without a chat template, a system prompt that would be
    ignored, a column the reward functions need (`needed_by`: column -> who) missing or empty in some row, or a
    column named like an argument the scorer passes itself. Warns when 'prompt' is chosen over 'question'."""
    if len(dataset) == 0:
        raise ValueError("dataset has no rows; give at least one step's prompts")
    columns = dataset.column_names
    column = resolve_prompt_column(columns, prompt_column)
    if prompt_column is None and {TRL_PROMPT_COLUMN, DEFAULT_QUESTION_COLUMN} <= set(columns):
        warnings.warn(f"the dataset has both {TRL_PROMPT_COLUMN!r} and {DEFAULT_QUESTION_COLUMN!r} columns: the "
                      f"prompts come from {TRL_PROMPT_COLUMN!r} (TRL's convention); set prompt_column="
                      f"{DEFAULT_QUESTION_COLUMN!r} to use the other", stacklevel=2)
    clash = next((c for c in columns if c in RESERVED_ARGUMENTS), None)
    if clash is not None:
        raise ValueError(f"dataset column {clash!r} has the name of an argument the reward functions get from the "
                         f"trainer; rename the column")
    needed = {column: "the prompt (prompt_column)", **(needed_by or {})}
    if column not in columns:
        hint = "" if prompt_column else f" (by default {TRL_PROMPT_COLUMN!r}, TRL's, else {DEFAULT_QUESTION_COLUMN!r})"
        raise ValueError(f"dataset has no column {column!r} (columns: {', '.join(columns)}); set prompt_column to "
                         f"the column holding the prompt{hint}")
    check_columns(dataset, list(needed), needed)
    needs_template = False
    for i, value in enumerate(dataset[column]):
        fault = _prompt_fault(value, column, system_prompt)
        if fault:
            raise ValueError(f"row {i}: {fault}")
        needs_template = needs_template or isinstance(value, list) or column != TRL_PROMPT_COLUMN
    if needs_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"column {column!r} gives chat prompts (chat messages, or text put in a user turn) but the "
                         f"tokenizer has no chat_template; use a model with one, or give a {TRL_PROMPT_COLUMN!r} "
                         f"column of plain text (used as is)")


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


class PromptSampler:
    """Seeded order over the dataset, reshuffled each epoch; each of the N processes takes its own B prompts of
    every global batch. Its state (epoch, position) goes into checkpoints."""

    def __init__(self, size: int, per_process: int, num_processes: int, rank: int, seed: int):
        self.size, self.B, self.N, self.rank, self.seed = size, per_process, num_processes, rank, seed
        if size < per_process * num_processes:
            raise ValueError(f"dataset has {size} rows, fewer than one step's {per_process * num_processes} prompts")
        self.epoch, self.pos = 0, 0
        self._order = self._perm()

    def _perm(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def next(self) -> list[int]:
        if self.pos + self.B * self.N > self.size:  # drop the incomplete tail batch of the epoch
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._perm()
        start = self.pos + self.rank * self.B
        self.pos += self.B * self.N
        return self._order[start:start + self.B]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.pos = s["epoch"], s["pos"]
        self._order = self._perm()
