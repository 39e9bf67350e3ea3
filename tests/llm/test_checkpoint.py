"""Checkpoint and resume: a run killed with SIGKILL and resumed ends with the same weights and metrics as an
uninterrupted one; a save interrupted half-way never leaves a checkpoint that loads half."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from llmrl.llm import checkpoint as ckpt
from llmrl.llm.trainer import TIMING_METRICS
from tests.llm.tiny import save_tiny, tiny_dataset, tiny_trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(model_dir, data, out, *flags, wait=True):
    cmd = [sys.executable, os.path.join(ROOT, "tests", "llm", "run_tiny.py"), model_dir, data,
           "--output_dir", out, "--max_steps", "40", "--save_steps", "1", "--save_total_limit", "2", *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _metrics(out):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_METRICS}
            for line in open(f"{out}/metrics.jsonl")]


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    """With evaluation during training on (greedy and sampled pass@k): its sampling must not move the training
    sampler's RNG stream, and its results are part of what must come out the same."""
    model_dir = save_tiny(tmp_path / "model")
    data = str(tmp_path / "data.jsonl")
    tiny_dataset(24).to_json(data)
    evaluation = ["--eval_steps", "3", "--eval_examples", "3", "--eval_pass_k", "1", "2", "--eval_reward", "length01",
                  "--eval_before", "false"]
    a = str(tmp_path / "a")
    res = _run(model_dir, data, a, *evaluation)
    assert res.returncode == 0, res.stderr[-2000:]

    b = str(tmp_path / "b")
    proc = _run(model_dir, data, b, *evaluation, wait=False)
    deadline = time.time() + 240
    while time.time() < deadline and len(ckpt.list_checkpoints(b)) == 0:  # kill somewhere after a first save
        time.sleep(0.05)
    time.sleep(0.2)  # then at whatever point the run has reached
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.list_checkpoints(b), "the run was killed before any checkpoint"
    assert not os.path.exists(f"{b}/final"), "the run finished before it was killed; the test proves nothing"
    res = _run(model_dir, data, b, "--resume", "latest", *evaluation)
    assert res.returncode == 0, res.stderr[-2000:]

    wa, wb = load_file(f"{a}/final/adapter_model.safetensors"), load_file(f"{b}/final/adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _metrics(a) == _metrics(b)
    assert [r["step"] for r in _metrics(a) if "eval/pass@2" in r] == list(range(3, 40, 3)) + [40]
    assert json.load(open(f"{a}/eval.json"))["after"]["pass@2"] == json.load(open(f"{b}/eval.json"))["after"]["pass@2"]
    base = load_file(f"{a}/checkpoint-40/adapter/adapter_model.safetensors")
    assert any(not torch.equal(base[k], torch.zeros_like(base[k])) for k in base if "lora_B" in k)  # it learned


def test_interrupted_save_leaves_previous_checkpoint_usable(tmp_path, monkeypatch):
    tr = tiny_trainer(tmp_path, max_steps=3, save_steps=1)
    tr.step()
    good = ckpt.save_checkpoint(tr)
    tr.step()
    real_save = torch.save
    calls = {"n": 0}

    def dying_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the RNG state went out; die while writing the trainer state
            raise KeyboardInterrupt("killed mid-save")
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tr)
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert ckpt.find_checkpoint(str(tmp_path), "latest") == good
    assert os.path.isdir(f"{tmp_path}/checkpoint-2.tmp") and not os.path.exists(f"{tmp_path}/checkpoint-2")
    fresh = tiny_trainer(tmp_path / "x", max_steps=3)
    ckpt.load_checkpoint(fresh, good)
    assert fresh.step_count == 1
    ckpt.save_checkpoint(tr)  # a later save replaces the leftover
    assert not os.path.exists(f"{tmp_path}/checkpoint-2.tmp") and os.path.isdir(f"{tmp_path}/checkpoint-2")


def test_resume_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.find_checkpoint(str(tmp_path), "latest")
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        ckpt.find_checkpoint(str(tmp_path), str(tmp_path))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path, sig):
    """Issue 19.7: with --save_steps 50, a Ctrl-C at step 2 used to lose everything; SIGTERM (a scheduler's
    warning before it kills) does the same."""
    model_dir = save_tiny(tmp_path / "model")
    data = str(tmp_path / "data.jsonl")
    tiny_dataset(24).to_json(data)
    out = str(tmp_path / "run")
    cmd = [sys.executable, os.path.join(ROOT, "tests", "llm", "run_tiny.py"), model_dir, data, "--output_dir", out,
           "--max_steps", "200", "--save_steps", "50"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    metrics = os.path.join(out, "metrics.jsonl")
    while time.time() < deadline and not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
        time.sleep(0.05)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 130, stderr[-2000:]
    saved = ckpt.list_checkpoints(out)
    assert len(saved) == 1 and "--resume latest" in stdout + stderr
    step = int(saved[0].rsplit("-", 1)[1])
    assert 1 <= step < 200 and "Traceback" not in stderr
    res = _run(model_dir, data, out, "--resume", "latest", "--max_steps", str(step + 1))
    assert res.returncode == 0, res.stderr[-2000:]
    assert os.path.isdir(os.path.join(out, f"checkpoint-{step + 1}"))


def test_a_run_that_failed_before_its_first_step_does_not_block_the_retry(tmp_path):
    """Issue 19.7: the files a failed start left (config.json, tb/) made the corrected retry refuse."""
    def broken(prompts, completions, **kw):
        raise RuntimeError("bug in my reward")
    tr = tiny_trainer(tmp_path, reward_funcs=[broken], overwrite_output_dir=False)
    with pytest.raises(Exception, match="bug in my reward"):
        tr.train()
    assert os.path.exists(tmp_path / "config.json")
    tiny_trainer(tmp_path, overwrite_output_dir=False, max_steps=1).train()  # the retry runs
    assert len(_metrics(str(tmp_path))) == 1
    with pytest.raises(FileExistsError, match="already holds a run"):  # now it holds one
        tiny_trainer(tmp_path, overwrite_output_dir=False, max_steps=1).train()
    assert len(_metrics(str(tmp_path))) == 1  # refused before anything was written


def test_trl_train_resume_from_checkpoint(tmp_path):
    """TRL's habit, trainer.train(resume_from_checkpoint=True or a checkpoint's path): the trainer is built over the
    earlier run without a refusal, and the resumed run equals one uninterrupted run."""
    def weights(tr):
        return [v.detach().clone() for v in tr.model.parameters() if v.requires_grad]

    full = tiny_trainer(tmp_path / "full", max_steps=3, save_steps=0)
    full.train()
    for how in (True, "path"):
        run = tmp_path / f"run_{how}"
        tiny_trainer(run, max_steps=2, save_steps=1).train()
        tr = tiny_trainer(run, max_steps=3, save_steps=1, overwrite_output_dir=False)
        tr.train(resume_from_checkpoint=True if how is True else str(run / "checkpoint-2"))
        assert _metrics(run) == _metrics(tmp_path / "full")
        assert all(torch.equal(a, b) for a, b in zip(weights(tr), weights(full)))
    with pytest.raises(ValueError, match=r"resume_from_checkpoint=True\): this trainer has already trained"):
        tr.train(resume_from_checkpoint=True)
    tr.cfg.max_steps = 4
    tr.train()  # a second train() goes on from where the trainer is (step 3), not from the checkpoint it resumed
    assert [m["step"] for m in _metrics(run)] == [1, 2, 3, 4]


def test_resume_refuses_to_mix_runs_or_to_half_start(tmp_path):
    """A checkpoint of another run into an output_dir holding its own run would mix the two (metrics, config.json,
    final/): refused, nothing touched. A refused resume leaves the trainer as it was; False starts afresh."""
    def files(d):
        return sorted(os.listdir(d)), (d / "metrics.jsonl").read_text()

    tiny_trainer(tmp_path / "a", max_steps=2, save_steps=1).train()
    tiny_trainer(tmp_path / "b", max_steps=1, save_steps=1).train()
    b = files(tmp_path / "b")
    with pytest.raises(ValueError, match=r"^resume: .*a/checkpoint-2 is a checkpoint of the run in .*a, but "
                                         r"output_dir .*b holds another run"):
        tiny_trainer(tmp_path / "b", max_steps=3, overwrite_output_dir=False).train(
            resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert files(tmp_path / "b") == b
    os.symlink(tmp_path / "a", tmp_path / "link")  # the same run through a symlink: not another run
    assert ckpt.check_resume(tiny_trainer(tmp_path / "link", max_steps=3, overwrite_output_dir=False,
                                          resume=str(tmp_path / "a" / "checkpoint-2")).cfg)[0].endswith("checkpoint-2")
    assert ckpt.find_checkpoint(str(tmp_path / "a"), "checkpoint-1") == str(tmp_path / "a" / "checkpoint-1")  # a name
    fork = tiny_trainer(tmp_path / "fork", max_steps=3, overwrite_output_dir=False)  # an empty output_dir: allowed
    fork.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert [m["step"] for m in _metrics(tmp_path / "fork")] == [3]

    fresh = tiny_trainer(tmp_path / "c", max_steps=1, overwrite_output_dir=False)
    with pytest.raises(FileNotFoundError, match=r"is not a checkpoint directory .*holds no checkpoint$"):
        fresh.train(resume_from_checkpoint=str(tmp_path / "nope"))
    assert fresh.cfg.resume is None
    fresh.train()
    assert json.load(open(tmp_path / "c" / "config.json"))["resume"] is None
    again = tiny_trainer(tmp_path / "b", max_steps=2, overwrite_output_dir=True, resume="latest")
    again.train(resume_from_checkpoint=False)  # TRL: False = do not resume (here: start afresh, overwriting)
    assert [m["step"] for m in _metrics(tmp_path / "b")] == [1, 2]
