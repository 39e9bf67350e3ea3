"""Checkpoints that survive SIGKILL: everything needed to continue a run bit-for-bit (adapter or model weights,
optimizer, scheduler, KL controller, the critic with a per-token estimator, every RNG, data position, step),
written to a temporary directory and renamed into place, so a checkpoint directory either exists whole or not at
all. The last K are kept.

Under an engine that partitions model or optimizer state (FSDP2, DeepSpeed) every process writes its part of the
model and optimizer through accelerate's save_state (in ENGINE_STATE); the rest is the same for every engine."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import torch

from ..utils import atomic_write_text, config_dict, rng_state, set_rng_state
from . import engines

_NAME = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoints in `output_dir`, oldest first (temporary directories of a killed save are ignored)."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), d) for d in os.listdir(output_dir) if (m := _NAME.match(d))]
    return [os.path.join(output_dir, d) for _, d in sorted(found)]


def _step_of(path: str) -> int | None:
    m = _NAME.match(os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else None


def find_checkpoint(output_dir: str, resume: str) -> str:
    """'latest' -> the newest complete checkpoint in output_dir; otherwise `resume` is the checkpoint path (or the
    name of one in output_dir)."""
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(f"resume='latest' but {output_dir} holds no checkpoint-N directory")
        return found[-1]
    if not os.path.isfile(os.path.join(resume, "trainer_state.pt")) and \
            os.path.isfile(os.path.join(output_dir, resume, "trainer_state.pt")):
        return os.path.join(output_dir, resume)  # a checkpoint's name in output_dir ('checkpoint-6')
    if not os.path.isfile(os.path.join(resume, "trainer_state.pt")):
        found = [os.path.basename(c) for c in list_checkpoints(output_dir)]
        there = (f"; checkpoints in {output_dir}: {', '.join(found)} (or pass 'latest')" if found else
                 f"; {output_dir} holds no checkpoint")
        raise FileNotFoundError(f"resume={resume!r} is not a checkpoint directory (no trainer_state.pt in it){there}")
    return resume


def run_settings(path: str) -> tuple[str, dict] | None:
    """The settings of the llmrl run that wrote `path` (a run directory, or its checkpoint-N/, final/ or
    checkpoint-N/adapter/): (its config.json path, the settings), or None where no run's config.json is found (a
    plain peft or model directory: a model's own config.json holds no run settings)."""
    d = os.path.normpath(path)
    for _ in range(3):
        file = os.path.join(d, "config.json")
        if os.path.isfile(file):
            with open(file) as f:
                try:
                    settings = json.load(f)
                except json.JSONDecodeError:
                    return None
            if isinstance(settings, dict) and "num_generations" in settings and "output_dir" in settings:
                return file, settings
        d = os.path.dirname(d)
    return None


def settings_as_defaults(cls, path: str, settings: dict, keep) -> dict:
    """The `keep` settings (those that are fields of the config class `cls`) as parse_config defaults, printed
    where they differ from cls's own defaults, so that a user sees what was taken from `path`."""
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    defaults = {k: settings[k] for k in keep if k in settings and k in fields}
    plain = cls()
    differ = {k: v for k, v in defaults.items() if v != getattr(plain, k, None) and k != "output_dir"}
    if differ:
        shown = ", ".join(f"{k} {v!r}" for k, v in list(differ.items())[:8]) + (", ..." if len(differ) > 8 else "")
        print(f"settings not given on the command line come from {path}: {shown}", flush=True)
    return defaults


def resume_defaults(cls: type, output_dir: str, resume: str) -> dict:
    """For `--resume`: every setting of the checkpoint's config.json as parse_config defaults of config class `cls`
    (flags given now win, and the trainer checks them against its fixed settings), so a resumed run goes on as it
    was set up."""
    path = os.path.join(find_checkpoint(output_dir, resume), "config.json")
    with open(path) as f:
        settings = json.load(f)
    return settings_as_defaults(cls, path, settings, [k for k in settings if k != "resume"])


BEST_FILE = "best_checkpoint.json"
ENGINE_STATE = "engine_state"  # accelerate's save_state: sharded model + optimizer (FSDP2, DeepSpeed)
RUN_FILES = ("metrics.jsonl", "completions.jsonl", "config.json", "tb", BEST_FILE)
# Settings that define a run (the model and its adapter's shape, the data order, the groups): a resumed run must
# keep them. Every other setting may change on resume; the new value is applied and recorded in config.json.
FIXED_ON_RESUME = ("model", "adapter", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "dataset",
                   "dataset_config", "dataset_split", "per_device_batch_size", "num_generations", "seed",
                   "critic_model", "critic_lora_r")


def holds_a_run(output_dir: str) -> bool:
    """True when `output_dir` holds a run that completed at least one step (a checkpoint or logged metrics); what
    a run that failed before its first step left behind does not count."""
    metrics = os.path.join(output_dir, "metrics.jsonl")
    return bool(list_checkpoints(output_dir)) or (os.path.isfile(metrics) and os.path.getsize(metrics) > 0)


def check_fresh_output_dir(output_dir: str, overwrite: bool) -> None:
    """Refuse, before anything is loaded or written, to start a new run over an earlier one."""
    if holds_a_run(output_dir) and not overwrite:
        raise FileExistsError(f"output_dir {output_dir} already holds a run; pass --resume latest to continue it "
                              f"(Python: trainer.train(resume_from_checkpoint=True)), --overwrite_output_dir to "
                              f"replace it, or another --output_dir")


def prepare_fresh_output_dir(output_dir: str, overwrite: bool) -> None:
    """A new run must not silently mix with (or destroy) an earlier one in the same directory; the leftovers of a
    run that failed before its first step are cleared."""
    check_fresh_output_dir(output_dir, overwrite)
    old = [d for d in RUN_FILES if os.path.exists(os.path.join(output_dir, d))] + \
        [os.path.basename(p) for p in list_checkpoints(output_dir)]
    for name in old:
        path = os.path.join(output_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def check_resume(cfg, fixed: tuple[str, ...] = FIXED_ON_RESUME) -> tuple[str, dict]:
    """Before anything is loaded: the checkpoint `cfg.resume` names, and the settings that differ from the ones it
    was written with ({name: (old, new)}); a change to a setting in `fixed` is refused by name, as is a checkpoint
    older than the run's newest or one of another run when output_dir holds a run (two runs would mix)."""
    path = find_checkpoint(cfg.output_dir, cfg.resume)
    owner = os.path.dirname(os.path.abspath(path))
    if os.path.realpath(owner) != os.path.realpath(cfg.output_dir) and holds_a_run(cfg.output_dir):
        raise ValueError(f"resume: {path} is a checkpoint of the run in {owner}, but output_dir {cfg.output_dir} holds "
                         f"another run, which it would mix with; continue that run with output_dir {owner}, or "
                         f"resume it into an empty output_dir")
    step = _step_of(path)
    later = [c for c in list_checkpoints(cfg.output_dir) if step is not None and _step_of(c) > step]
    if later:  # its metrics would be cut back while the newer checkpoints stay, and 'latest' would pick them later
        raise ValueError(f"resume: {path} is older than {later[-1]} in {cfg.output_dir}; move the newer "
                         f"checkpoint(s) out of the run directory first, or resume from latest")
    with open(os.path.join(path, "config.json")) as f:
        old = json.load(f)
    new = config_dict(cfg)
    changed = {k: (old[k], new[k]) for k in new if k in old and old[k] != new[k] and k != "resume"}
    for key in fixed:
        if key in changed:
            was, now = changed[key]
            raise ValueError(f"resume: {key} is {now!r} but {path} was written with {was!r}; it cannot change in a "
                             f"resumed run (drop --{key}, or start a new run in another --output_dir)")
    return path, changed


def resume_request(cfg, checkpoint: str | bool, began: bool, pending: tuple[str, dict] | None,
                   fixed: tuple[str, ...] = FIXED_ON_RESUME) -> tuple[str, dict] | None:
    """What a trainer's train(resume_from_checkpoint=...) resumes (TRL's argument): True or 'latest' for
    output_dir's newest checkpoint, a path for that checkpoint, False for a fresh run even when cfg.resume is set;
    checked by check_resume. Returns the pending resume ((path, changed settings) or None) and sets cfg.resume;
    a refused request leaves cfg as it was. `pending` is the resume config.resume asked for, if any."""
    if began:
        raise ValueError(f"train(resume_from_checkpoint={checkpoint!r}): this trainer has already trained; make a new "
                         f"trainer to resume a checkpoint")
    if checkpoint is False:
        cfg.resume = None
        return None
    resume = "latest" if checkpoint is True else str(checkpoint)
    if pending is not None and cfg.resume != resume:
        raise ValueError(f"train(resume_from_checkpoint={checkpoint!r}) but config.resume is {cfg.resume!r}; give "
                         f"only one of them")
    before, cfg.resume = cfg.resume, resume
    try:
        return check_resume(cfg, fixed)
    except Exception:
        cfg.resume = before
        raise


def apply_learning_rate(optimizer, scheduler, lr: float) -> None:
    """Make a restored optimizer and LambdaLR-style scheduler continue at base learning rate `lr` (the checkpoint
    holds the old one) from the scheduler's current step."""
    sched = getattr(scheduler, "scheduler", scheduler)  # through accelerate's AcceleratedScheduler
    sched.base_lrs = [lr for _ in optimizer.param_groups]
    for group, fn in zip(optimizer.param_groups, sched.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * fn(sched.last_epoch)
    sched._last_lr = [group["lr"] for group in optimizer.param_groups]


def write_config(cfg) -> None:
    atomic_write_text(os.path.join(cfg.output_dir, "config.json"), json.dumps(config_dict(cfg), indent=2))


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.named_parameters() if v.requires_grad}


def _load_weights(model, state: dict[str, torch.Tensor], path: str, what: str) -> None:
    params = dict(model.named_parameters())
    missing = sorted(set(state) - set(params))
    if missing:
        raise ValueError(f"checkpoint {path} has {what} weights this run's lacks (e.g. {missing[0]}): "
                         f"was it written with other LoRA settings?")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def _critic_state(critic) -> dict | None:
    """The critic's trainable weights (its adapter and head, or all), optimizer and schedule (advantage=gae)."""
    if critic is None:
        return None
    return {"trainable": _trainable_state(critic.model), "optimizer": critic.opt.state_dict(),
            "scheduler": critic.sched.state_dict()}


def update_best(trainer, step: int) -> None:
    """trainer.best <- checkpoint-STEP when its eval metric (cfg.metric_for_best_model, measured at this very
    step) beats the best so far (a tie keeps the earlier checkpoint, as transformers' Trainer does)."""
    cfg, evaluation = trainer.cfg, trainer.last_eval
    if not cfg.metric_for_best_model or evaluation is None or evaluation["step"] != step:
        return
    value, best = evaluation[cfg.metric_for_best_model], trainer.best
    if best is not None and best["metric"] == cfg.metric_for_best_model and \
            not (value > best["value"] if cfg.greater_is_better else value < best["value"]):
        return
    trainer.best = {"checkpoint": f"checkpoint-{step}", "step": step, "metric": cfg.metric_for_best_model,
                    "value": value, "greater_is_better": cfg.greater_is_better}


def write_best(trainer) -> None:
    """output_dir/best_checkpoint.json: which checkpoint is the best, by which metric (main process)."""
    if trainer.best is not None and trainer.best["metric"] == trainer.cfg.metric_for_best_model:
        atomic_write_text(os.path.join(trainer.cfg.output_dir, BEST_FILE), json.dumps(trainer.best, indent=2))


def start_checkpoint(acc, output_dir: str, step: int) -> tuple[str, str]:
    """(output_dir/checkpoint-STEP, its temporary twin): the twin made empty on the main process (the leftovers of
    a save that was killed removed), and every process past that point. Fill the twin, then publish_checkpoint."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = final + ".tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    acc.wait_for_everyone()
    return final, tmp


def save_checkpoint(trainer) -> str | None:
    """Write output_dir/checkpoint-STEP atomically (all processes take part: each saves its RNG state). The last
    save_total_limit checkpoints are kept, and the best one by metric_for_best_model."""
    acc, cfg, step = trainer.acc, trainer.cfg, trainer.step_count
    update_best(trainer, step)
    final, tmp = start_checkpoint(acc, cfg.output_dir, step)
    torch.save({"rng": rng_state(), "sampler_generator": trainer.gen.get_state()},
               os.path.join(tmp, f"rng_{acc.process_index}.pt"))
    sharded = engines.owns_state(acc)
    if sharded:  # the model (the reference adapter too) and the optimizer, each process its part
        acc.save_state(os.path.join(tmp, ENGINE_STATE))
    full = engines.full_state_dict(acc, trainer.policy)
    if acc.is_main_process:
        from .trainer import save_policy

        model = trainer.model
        save_policy(model, os.path.join(tmp, "adapter" if trainer.is_peft else "model"), full)  # peft / HF format
        state = {"scheduler": trainer.sched.state_dict(), "kl_controller": trainer.kl_ctl.state_dict(),
                 "data": trainer.sampler.state_dict(), "step": step, "nonfinite_in_a_row": trainer.nonfinite_in_a_row,
                 "num_processes": acc.num_processes, "engine": engines.name(acc), "best": trainer.best,
                 "critic": _critic_state(trainer.critic)}
        if not sharded:
            state.update(trainable=_trainable_state(model), optimizer=trainer.opt.state_dict(),
                         reference=trainer.reference.state_dict() if trainer.reference is not None else {})
        torch.save(state, os.path.join(tmp, "trainer_state.pt"))
        atomic_write_text(os.path.join(tmp, "config.json"), json.dumps(config_dict(cfg), indent=2))
    acc.wait_for_everyone()
    if acc.is_main_process:
        best = trainer.best["checkpoint"] if trainer.best is not None else None
        publish_checkpoint(tmp, final, cfg.save_total_limit, keep=best, before_rotation=lambda: write_best(trainer))
    acc.wait_for_everyone()
    return final


def publish_checkpoint(tmp: str, final: str, save_total_limit: int, keep: str | None = None,
                       before_rotation=None) -> None:
    """Make a fully written checkpoint directory `tmp` durable, rename it to `final` (a checkpoint exists whole or
    not at all), then keep the newest `save_total_limit` checkpoints beside it (and `keep`, a directory name)."""
    for root, _, files in os.walk(tmp):  # make the contents durable before the rename publishes them
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    if before_rotation is not None:
        before_rotation()
    for old in list_checkpoints(os.path.dirname(final))[:-save_total_limit]:
        if os.path.basename(old) != keep:
            shutil.rmtree(old, ignore_errors=True)


def read_trainer_state(path: str, acc) -> dict:
    """A checkpoint's trainer_state.pt (step, RNGs, data position, ...), refused when it was written by another
    number of processes (each process's RNG and data stream are in it)."""
    state = torch.load(os.path.join(path, "trainer_state.pt"), map_location="cpu", weights_only=False)
    if state["num_processes"] != acc.num_processes:
        raise ValueError(f"checkpoint {path} was written by {state['num_processes']} processes, this run has "
                         f"{acc.num_processes}: resume with the same number of processes")
    return state


def load_checkpoint(trainer, path: str) -> None:
    """Restore a trainer to the state `save_checkpoint` wrote at `path`."""
    acc = trainer.acc
    state = read_trainer_state(path, acc)
    engine = state.get("engine", "ddp")
    if engine != engines.name(acc):
        raise ValueError(f"checkpoint {path} was written under {engine}, this run is {engines.name(acc)}: resume "
                         f"with the same accelerate config")
    critic = state.get("critic")
    if (critic is None) != (trainer.critic is None):
        raise ValueError(f"checkpoint {path} was written {'with' if critic is not None else 'without'} a critic "
                         f"(advantage=gae) and this run has {'one' if trainer.critic is not None else 'none'}: resume "
                         f"with the advantage it was written with")
    if critic is not None:
        _load_weights(trainer.critic.model, critic["trainable"], path, "critic")
        trainer.critic.opt.load_state_dict(critic["optimizer"])
        trainer.critic.sched.load_state_dict(critic["scheduler"])
    if engines.owns_state(acc):
        acc.load_state(os.path.join(path, ENGINE_STATE))
    else:
        _load_weights(trainer.model, state["trainable"], path, "policy")
        if trainer.reference is not None:
            trainer.reference.load_state_dict(state.get("reference", {}))
        trainer.opt.load_state_dict(state["optimizer"])
    trainer.sched.load_state_dict(state["scheduler"])
    trainer.kl_ctl.load_state_dict(state["kl_controller"])
    trainer.sampler.load_state_dict(state["data"])
    trainer.step_count = state["step"]
    trainer.nonfinite_in_a_row = state["nonfinite_in_a_row"]
    trainer.best = state.get("best")
    if acc.is_main_process:
        write_best(trainer)  # a kill between the checkpoint's rename and the file's update left the older one
    rng = torch.load(os.path.join(path, f"rng_{acc.process_index}.pt"), map_location="cpu", weights_only=False)
    set_rng_state(rng["rng"])
    trainer.gen.set_state(rng["sampler_generator"])
