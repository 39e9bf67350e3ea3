"""Two processes (DDP over gloo on CPU, started with torchrun) give the same update as one process on the same
data. (`accelerate launch --cpu --num_processes 2` starts a single process in accelerate 1.x, so CPU tests use
torchrun; on GPUs users run `accelerate launch --num_processes N`.)"""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _launch(n, out, *loss_types):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port",
           str(29500 + (os.getpid() % 1000) + n), os.path.join(ROOT, "tests", "llm", "ddp_check.py"), out, *loss_types]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def test_two_processes_equal_one(tmp_path):
    """grpo normalizes per sequence, dapo by the token count of all processes: both must match one process."""
    losses = ["grpo", "dapo", "dr_grpo"]
    _launch(1, str(tmp_path), *losses)
    _launch(2, str(tmp_path), *losses)
    for loss in losses:
        one = torch.load(tmp_path / f"weights_{loss}_1_0.pt")
        r0, r1 = torch.load(tmp_path / f"weights_{loss}_2_0.pt"), torch.load(tmp_path / f"weights_{loss}_2_1.pt")
        assert any("lora_A" in k for k in one)
        for k in one:
            assert torch.equal(r0[k], r1[k]), f"{loss}: ranks disagree on {k}"
            assert torch.allclose(one[k], r0[k], atol=1e-6, rtol=1e-5), f"{loss}: {k}"


def test_batch_statistics_are_over_the_global_batch(tmp_path):
    """Issue 12.8: scale_rewards="batch" and advantage="reinforce" used each process's own mean/std."""
    _launch(1, str(tmp_path), "advantages")
    _launch(2, str(tmp_path), "advantages")
    one = torch.load(tmp_path / "advantages_1_0.pt")
    r0, r1 = torch.load(tmp_path / "advantages_2_0.pt"), torch.load(tmp_path / "advantages_2_1.pt")
    assert len(one) == 6
    for mode, full in one.items():
        torch.testing.assert_close(torch.cat([r0[mode], r1[mode]]), full, msg=mode)
    rewards = torch.randn(16, generator=torch.Generator().manual_seed(1)) * 3 + 1
    torch.testing.assert_close(one["reinforce_group"], rewards - rewards.mean())  # by hand, one process


def test_learning_rate_schedule_is_per_step_under_two_processes(tmp_path):
    """accelerate's prepared scheduler stepped once per process: a 2-process run decayed twice as fast."""
    _launch(1, str(tmp_path), "schedule")
    _launch(2, str(tmp_path), "schedule")
    want = [1e-2 * (4 - k) / 4 for k in (1, 2, 3)]  # linear decay to 0 over max_steps = 4, by hand
    for name in ("schedule_1_0.pt", "schedule_2_0.pt", "schedule_2_1.pt"):
        assert torch.load(tmp_path / name) == pytest.approx(want), name


def test_dynamic_sampling_under_two_processes(tmp_path):
    """Issue 17.3: every rank's batch is full of groups with a learning signal, and the ranks take the same number
    of generation rounds per step (their data order stays aligned) and end with the same weights."""
    _launch(2, str(tmp_path), "dynamic")
    r0, r1 = torch.load(tmp_path / "dynamic_2_0.pt"), torch.load(tmp_path / "dynamic_2_1.pt")
    for a, b in zip(r0["info"], r1["info"]):
        assert a["rounds"] == b["rounds"] and a["pos"] == b["pos"] and a["dropped"] == b["dropped"]
        assert not a["flat"] and not b["flat"] and a["n"] == b["n"] == 8
    assert sum(a["dropped"] for a in r0["info"]) > 0  # groups were dropped, so the lockstep was exercised
    assert all(torch.equal(r0["weights"][k], r1["weights"][k]) for k in r0["weights"])


def test_recipe_trains_with_two_processes(tmp_path):
    """End to end: each process samples its own prompts, metrics are gathered, checkpoints hold every rank's RNG."""
    from tests.llm.tiny import save_tiny, tiny_dataset
    model_dir = save_tiny(tmp_path / "model")
    data = str(tmp_path / "data.jsonl")
    tiny_dataset(24).to_json(data)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(28500 + os.getpid() % 1000), os.path.join(ROOT, "tests", "llm", "run_tiny.py"), model_dir, data,
           "--output_dir", str(out), "--max_steps", "2", "--save_steps", "1", "--eval_examples", "4"]
    res = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(os.listdir(out / "checkpoint-2")) == ["adapter", "config.json", "rng_0.pt", "rng_1.pt",
                                                        "trainer_state.pt"]
    import json
    rows = [json.loads(x) for x in open(out / "completions.jsonl")]
    assert len(rows) == 2 * 16  # both processes' completions, gathered
    assert json.load(open(out / "eval.json")).keys() == {"before", "after"}
