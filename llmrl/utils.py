"""Plumbing shared by the classic agents and the LLM trainer: the command line of the recipes (dataclass configs
as flags, one-line errors), seeding, atomic file writes, run directories, and a metrics logger (JSONL that
`llmrl-plot` reads, plus TensorBoard scalars)."""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import difflib
import json
import logging
import os
import random
import secrets
import shutil
import sys
import time
import typing
from types import SimpleNamespace
from typing import Any, Callable, Collection, Sequence

import numpy as np
import torch

class SetupError(RuntimeError):
    """A run cannot go on as set up, for a reason the user fixes (the hub unreachable or refusing a token, out of
    memory at these batch sizes); its message is one line that says what to change."""


# what our validation raises for a user's mistake (one line and exit code 2 from every recipe, not a traceback)
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, ConnectionError, SetupError)


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


_commands: list[str] = []  # the `llmrl COMMAND` being run (llmrl.cli sets it): the usage line of its --help


@contextlib.contextmanager
def running_command(name: str):
    """While the block runs, `program_name()` is `name` (the usage line of a --help and of argparse's errors)."""
    _commands.append(name)
    try:
        yield
    finally:
        _commands.pop()


def program_name() -> str | None:
    """The `llmrl COMMAND` being run, or None (argparse then names the script)."""
    return _commands[-1] if _commands else None


def _config_parser(classes: Sequence[type], defaults: dict[str, Any] | None, shown: Collection[str] | None = None,
                   description: str | None = None):
    """transformers.HfArgumentParser for `classes` with no abbreviations (`--env` is not guessed to be `--env_id`),
    each class's `ALIASES: ClassVar[dict[str, str]]` (alias flag -> field) accepted as that field, one-line errors,
    and `--no_FIELD` help (a bool field that defaults to True) taken from the field's metadata["help_off"]. With
    `shown`, --help lists only those fields (the others are still accepted)."""
    from transformers import HfArgumentParser

    class ConfigParser(HfArgumentParser):
        def _add_dataclass_arguments(self, dtype):
            hints = typing.get_type_hints(dtype)
            aliases = getattr(dtype, "ALIASES", {})
            missing = sorted(set(aliases.values()) - {f.name for f in dataclasses.fields(dtype)})
            if missing:
                raise TypeError(f"{dtype.__name__}.ALIASES names {missing}, which are not fields")
            for f in dataclasses.fields(dtype):
                if not f.init:
                    continue
                meta = dict(f.metadata)
                help_off = meta.pop("help_off", f"Same as --{f.name} False.")
                if shown is not None and f.name not in shown:
                    meta["help"] = help_off = argparse.SUPPRESS
                meta["aliases"] = [f"--{alias}" for alias, name in aliases.items() if name == f.name]
                f = copy.copy(f)
                f.type, f.metadata = hints[f.name], meta
                self._parse_dataclass_field(self, f)
                if f.type == (bool | None):  # TRL's bf16 & co.: a bare --flag means True, as for a plain bool
                    own = next(a for a in self._actions if a.dest == f.name)
                    own.nargs, own.const = "?", True
                off = self._actions[-1]
                if off.option_strings[0] == f"--no_{f.name}":
                    # the field's own flag sets the default; SUPPRESS keeps "(default: False)" off this help line
                    off.help, off.default = help_off, argparse.SUPPRESS

        def error(self, message):  # argparse prints its usage block first: one line is enough
            fail(message)

    parser = ConfigParser(list(classes), allow_abbrev=False, prog=program_name(), description=description)
    if shown is not None and set(shown) - {a.dest for a in parser._actions}:
        raise TypeError(f"parse_config shown names no field: {sorted(set(shown) - {a.dest for a in parser._actions})}")
    if defaults:
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(defaults) - known)
        if unknown:
            raise TypeError(f"parse_config defaults name no field: {unknown}")
        parser.set_defaults(**defaults)
    return parser


def fail(message: str) -> None:
    """A command-line error: one line `error: MESSAGE` on stderr, exit code 2 (argparse's code)."""
    print(f"error: {_one_line(message)}", file=sys.stderr)
    sys.exit(2)


def close_flags(flag: str, names: Sequence[str]) -> list[str]:
    """Up to 3 of `names` close to an unknown `--flag`: those it begins or whose initials it spells
    (`--env` -> env_id, `--lr` -> learning_rate), else difflib's close matches (`--learning_rat`)."""
    name = flag.lstrip("-").split("=", 1)[0].replace("-", "_")
    found = [c for c in names if c.startswith(name) or ("_" in c and "".join(w[0] for w in c.split("_")) == name)]
    return found[:3] or difflib.get_close_matches(name, names, n=3, cutoff=0.55)


def expand_config_file(argv: Sequence[str]) -> list[str]:
    """`--config FILE.yaml` (as TRL's CLI takes it) replaced by the flags the YAML mapping holds (`key: value`,
    lists for list fields, `null` = leave the default), placed first so that flags given on the command line win."""
    argv = list(argv)
    if "--config" not in argv and not any(a.startswith("--config=") for a in argv):
        return argv
    i = next(i for i, a in enumerate(argv) if a == "--config" or a.startswith("--config="))
    if argv[i] == "--config":
        if i + 1 >= len(argv):
            fail("--config needs a YAML file")
        path, rest = argv[i + 1], argv[:i] + argv[i + 2:]
    else:
        path, rest = argv[i].split("=", 1)[1], argv[:i] + argv[i + 1:]
    import yaml

    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except OSError as e:
        fail(f"--config {path}: {e.strerror}")
    except yaml.YAMLError as e:
        fail(f"--config {path} is not valid YAML: {e}")
    if not isinstance(values, dict):
        fail(f"--config {path} must hold a mapping of settings (key: value), got {type(values).__name__}")
    flags = []
    for key, value in values.items():
        if value is None:
            continue
        flags.append(f"--{key}")
        flags += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    return flags + rest


def flag_given(argv: Sequence[str], name: str) -> bool:
    """Whether `--name` is set on the command line (or by its --config file)."""
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in expand_config_file(argv))


def parse_config(cls: type | tuple[type, ...], argv: Sequence[str] | None = None,
                 defaults: dict[str, Any] | None = None, shown: Collection[str] | None = None,
                 description: str | None = None, checked: bool = True) -> Any:
    """Parse `--field value` flags into the dataclass `cls` (or into each of a tuple of dataclasses, returning a
    tuple). `defaults` replaces field defaults (a recipe's own settings, a resumed run's; `--help` shows them), except
    for the settings a TRL-named flag given sets (`cls.TRL_TARGETS`). `--help` lists every
    field with its metadata["help"] (only the `shown` fields when given, under `description`). checked=False gives
    the raw values (SimpleNamespace, the config's checks not run): what a command reads before its real parse.
    `--config FILE.yaml` reads flags from a YAML mapping (command-line flags win).
    A flag error prints one line `error: ...` (an unknown flag with the closest field names) and exits with code
    2; a value the config's `__post_init__` refuses raises its ValueError (see `cli_main`)."""
    classes = cls if isinstance(cls, tuple) else (cls,)
    if defaults:  # a flag given wins over the defaults of the settings it sets: a TRL-named flag (--bf16) over its
        # llmrl setting's (dtype), an llmrl flag (--max_steps) over a TRL name that would set it (num_train_epochs)
        given = list(sys.argv[1:] if argv is None else argv)
        drop = set()
        for c in classes:
            for trl, targets in getattr(c, "TRL_TARGETS", {}).items():
                if flag_given(given, trl):
                    drop.update(targets)
                if any(flag_given(given, t) for t in targets):
                    drop.add(trl)
        defaults = {k: v for k, v in defaults.items() if k not in drop}
    parser = _config_parser(classes, defaults, shown, description)
    parser.add_argument("--config", default=None, help="A YAML file of settings (key: value); flags given on the "
                                                        "command line override it.")
    argv = expand_config_file(list(sys.argv[1:] if argv is None else argv))
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = next((a for a in unknown if a.startswith("-")), unknown[0])
        if not flag.startswith("-"):
            fail(f"unexpected argument {flag!r} (every setting is a --flag; see --help)")
        names = sorted({a.dest for a in parser._actions if a.dest not in ("help", "config")}
                       | {alias for c in classes for alias in getattr(c, "ALIASES", {})})
        close = close_flags(flag, names)
        fail(f"unknown flag {flag.split('=', 1)[0]}" +
             (f"; did you mean {' or '.join('--' + c for c in close)}?" if close else "; see --help"))
    values = vars(namespace)
    make = (lambda c, kw: c(**kw)) if checked else (lambda c, kw: SimpleNamespace(**kw))
    configs = tuple(make(c, {f.name: values[f.name] for f in dataclasses.fields(c) if f.init}) for c in classes)
    return configs if isinstance(cls, tuple) else configs[0]


class _DeepSpeedCPUNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Setting accelerator to CPU")


def quiet_deepspeed_cpu_notice() -> None:
    """Drop DeepSpeed's "Setting accelerator to CPU ..." warning. When DeepSpeed is installed, accelerate and
    transformers import it at every model unwrap and save (accelerate's extract_model_from_parallel), in runs that do
    not use it too, and on a machine without a GPU it logs that line in the middle of the progress bars."""
    logger = logging.getLogger("DeepSpeed")  # the logger deepspeed.utils.logging creates (and keeps the filters of)
    if not any(isinstance(f, _DeepSpeedCPUNotice) for f in logger.filters):
        logger.addFilter(_DeepSpeedCPUNotice())


def cli_main(main: Callable[[], Any]) -> None:
    """Run a recipe's `main()`. A user's mistake (USER_ERRORS: a ValueError, FileNotFoundError, FileExistsError,
    ConnectionError or SetupError from our validation) ends in one line `error: MESSAGE` on stderr and exit code 2, Ctrl-C in `interrupted` and 130; any
    other exception is a bug and keeps its traceback. LLMRL_DEBUG=1 shows the traceback of user errors too."""
    quiet_deepspeed_cpu_notice()
    try:
        main()
    except USER_ERRORS as e:
        if os.environ.get("LLMRL_DEBUG") == "1":
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if os.environ.get("LLMRL_DEBUG") == "1":
            raise
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def set_threads(n: int) -> None:
    """torch's CPU threads: n > 0 sets them; 0 keeps torch's default but warns (once, on stderr) when the machine
    is busier than it has cores, where threads that wait for a busy core spin and one thread is faster."""
    if n > 0:
        torch.set_num_threads(n)
        return
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if cores > 1 and load >= cores and torch.get_num_threads() > 1:
        print(f"note: this machine is busy (load {load:.1f} on {cores} cores); --torch_threads 1 can be several "
              f"times faster here", file=sys.stderr)


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
    """Write a text file so that a reader sees the old or the new content, never half of it (write + rename).
    The file gets the permissions of any new file (0666 less the umask), not a temporary file's 0600."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".tmp-{secrets.token_hex(8)}-{os.path.basename(path)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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


def prepare_output_dir(output_dir: str, overwrite: bool, run_files: Sequence[str]) -> None:
    """Make `output_dir` ready for a new run. If it holds any of `run_files` (an earlier run's files or folders),
    refuse with one line naming --overwrite_output_dir, or with `overwrite` delete them: two runs' logs and
    TensorBoard events never mix. Call it before anything of the run is written."""
    old = sorted(name for name in run_files if os.path.exists(os.path.join(output_dir, name)))
    if old and not overwrite:
        raise FileExistsError(f"output_dir {output_dir} already holds a run ({', '.join(old[:3])}); pass "
                              f"--overwrite_output_dir to replace it, or choose another --output_dir")
    for name in old:
        path = os.path.join(output_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


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


def end_process_group(acc, trainer) -> None:
    """End a multi-process run once all collective work is done: free the trainer's DDP wrappers (their reducers hold
    the process group) and accelerate's references to them while the group is alive, then destroy the group. Freed
    after it is destroyed, a wrapper's teardown at exit can hang or abort ('terminate called without an active
    exception'): seen about once in 30 two-process runs on CPU (gloo) before this order."""
    import gc

    import torch

    acc.wait_for_everyone()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for owner in (trainer, getattr(trainer, "critic", None)):
        for name, value in list(vars(owner).items()) if owner is not None else []:
            if isinstance(value, torch.nn.parallel.DistributedDataParallel):
                setattr(owner, name, acc.unwrap_model(value))
    acc.free_memory()
    gc.collect()
    acc.wait_for_everyone()
    torch.distributed.destroy_process_group()
