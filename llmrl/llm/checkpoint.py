"""Checkpoints that survive SIGKILL: everything needed to continue a run bit-for-bit (adapter or model weights,
optimizer, scheduler, KL controller, every RNG, data position, step), written to a temporary directory and
renamed into place, so a checkpoint directory either exists whole or not at all. The last K are kept."""
from __future__ import annotations

import json
import os
import re
import shutil

import torch

from ..utils import atomic_write_text, config_dict, rng_state, set_rng_state

_NAME = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoints in `output_dir`, oldest first (temporary directories of a killed save are ignored)."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), d) for d in os.listdir(output_dir) if (m := _NAME.match(d))]
    return [os.path.join(output_dir, d) for _, d in sorted(found)]


def find_checkpoint(output_dir: str, resume: str) -> str:
    """'latest' -> the newest complete checkpoint in output_dir; otherwise `resume` is the checkpoint path."""
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(f"resume='latest' but {output_dir} holds no checkpoint-N directory")
        return found[-1]
    if not os.path.isfile(os.path.join(resume, "trainer_state.pt")):
        raise FileNotFoundError(f"resume={resume!r} is not a checkpoint directory (no trainer_state.pt in it)")
    return resume


RUN_FILES = ("metrics.jsonl", "completions.jsonl", "config.json", "tb")


def prepare_fresh_output_dir(output_dir: str, overwrite: bool) -> None:
    """A new run must not silently mix with (or destroy) an earlier one in the same directory."""
    old = [d for d in RUN_FILES if os.path.exists(os.path.join(output_dir, d))] + \
        [os.path.basename(p) for p in list_checkpoints(output_dir)]
    if old and not overwrite:
        raise FileExistsError(f"output_dir {output_dir} already holds a run ({', '.join(sorted(old)[:3])}); pass "
                              f"--resume latest to continue it, --overwrite_output_dir to replace it, or another "
                              f"--output_dir")
    for name in old:
        path = os.path.join(output_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def write_config(cfg) -> None:
    atomic_write_text(os.path.join(cfg.output_dir, "config.json"), json.dumps(config_dict(cfg), indent=2))


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.named_parameters() if v.requires_grad}


def save_checkpoint(trainer) -> str | None:
    """Write output_dir/checkpoint-STEP atomically (all processes take part: each saves its RNG state)."""
    acc, cfg, step = trainer.acc, trainer.cfg, trainer.step_count
    final = os.path.join(cfg.output_dir, f"checkpoint-{step}")
    tmp = final + ".tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a save that was killed
        os.makedirs(tmp)
    acc.wait_for_everyone()
    torch.save({"rng": rng_state(), "sampler_generator": trainer.gen.get_state()},
               os.path.join(tmp, f"rng_{acc.process_index}.pt"))
    if acc.is_main_process:
        from .trainer import save_policy

        model = trainer.model
        save_policy(model, os.path.join(tmp, "adapter" if trainer.is_peft else "model"))  # loadable with peft / HF
        reference = trainer.reference.state_dict() if trainer.reference is not None else {}
        torch.save({"trainable": _trainable_state(model), "reference": reference, "optimizer": trainer.opt.state_dict(),
                    "scheduler": trainer.sched.state_dict(), "kl_controller": trainer.kl_ctl.state_dict(),
                    "data": trainer.sampler.state_dict(), "step": step,
                    "nonfinite_in_a_row": trainer.nonfinite_in_a_row, "num_processes": acc.num_processes},
                   os.path.join(tmp, "trainer_state.pt"))
        atomic_write_text(os.path.join(tmp, "config.json"), json.dumps(config_dict(cfg), indent=2))
    acc.wait_for_everyone()
    if acc.is_main_process:
        for root, _, files in os.walk(tmp):  # make the contents durable before the rename publishes them
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    os.fsync(f.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(cfg.output_dir)[:-cfg.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def load_checkpoint(trainer, path: str) -> None:
    """Restore a trainer to the state `save_checkpoint` wrote at `path`."""
    acc = trainer.acc
    state = torch.load(os.path.join(path, "trainer_state.pt"), map_location="cpu", weights_only=False)
    if state["num_processes"] != acc.num_processes:
        raise ValueError(f"checkpoint {path} was written by {state['num_processes']} processes, this run has "
                         f"{acc.num_processes}: resume with the same number of processes")
    params = dict(trainer.model.named_parameters())
    missing = sorted(set(state["trainable"]) - set(params))
    if missing:
        raise ValueError(f"checkpoint {path} has weights this model lacks (e.g. {missing[0]}): "
                         f"was it written with other LoRA settings?")
    with torch.no_grad():
        for k, v in state["trainable"].items():
            params[k].copy_(v)
    if trainer.reference is not None:
        trainer.reference.load_state_dict(state.get("reference", {}))
    trainer.opt.load_state_dict(state["optimizer"])
    trainer.sched.load_state_dict(state["scheduler"])
    trainer.kl_ctl.load_state_dict(state["kl_controller"])
    trainer.sampler.load_state_dict(state["data"])
    trainer.step_count = state["step"]
    trainer.nonfinite_in_a_row = state["nonfinite_in_a_row"]
    rng = torch.load(os.path.join(path, f"rng_{acc.process_index}.pt"), map_location="cpu", weights_only=False)
    set_rng_state(rng["rng"])
    trainer.gen.set_state(rng["sampler_generator"])
