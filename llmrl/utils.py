"""Plumbing shared by the classic agents and the LLM trainer: CLI parsing of dataclass configs, seeding,
atomic file writes, and a metrics logger (JSONL that `llmrl-plot` reads, plus TensorBoard scalars)."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import tempfile
import time
from typing import Any, Sequence, TypeVar

import numpy as np
import torch

C = TypeVar("C")


def parse_config(cls: type[C], argv: Sequence[str] | None = None) -> C:
    """Parse `--field value` flags into the dataclass `cls` (transformers.HfArgumentParser; `--help` lists each
    field with its metadata["help"]). Unknown flags are an error naming them."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(cls)
    (cfg,) = parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv))
    return cfg


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def rng_state() -> dict:
    """The python / numpy / torch RNG states, for checkpoints."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_write_text(path: str, text: str) -> None:
    """Write a text file so that a reader sees the old or the new content, never half of it (write + rename)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def truncate_jsonl(path: str, max_step: int) -> None:
    """Drop the rows of a JSONL log whose "step" is beyond `max_step` (and a torn last line), atomically: what a
    killed run logged after its last checkpoint is logged again by the resumed run."""
    if not os.path.exists(path):
        return
    keep = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step", 0) <= max_step:
                keep.append(json.dumps(row) + "\n")
    atomic_write_text(path, "".join(keep))


def config_dict(cfg: Any) -> dict:
    """A dataclass config as a JSON-safe dict."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


class RunLogger:
    """Metrics of a run: one JSON object per line in RUN_DIR/metrics.jsonl (what `llmrl-plot` draws) and, when
    `tensorboard=True`, the same scalars in TensorBoard event files under RUN_DIR/tb."""

    def __init__(self, run_dir: str, tensorboard: bool = True, append: bool = False):
        os.makedirs(run_dir, exist_ok=True)
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self._file = open(self.path, "a" if append else "w")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(os.path.join(run_dir, "tb"))
        self._t0 = time.time()

    def log(self, metrics: dict, step: int) -> None:
        row = {"step": int(step), "time": round(time.time() - self._t0, 3)}
        for k, v in metrics.items():
            v = v.item() if isinstance(v, torch.Tensor) else v
            if isinstance(v, (np.floating, np.integer)):
                v = v.item()
            row[k] = v
            if self._tb is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(k, v, step)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
