"""Two processes (DDP over gloo on CPU, started with torchrun) train exactly as one process on the same data with
the per-token estimators: PPO with its critic (advantage=gae) and REINFORCE++ (whitening over the tokens of every
process, completions padded differently on each process, the critic's own DDP-synchronized update)."""
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ESTIMATORS = ["gae", "reinforce_plus_plus"]
COMPARED = ("reward", "advantages/mean", "advantages/std", "advantages/min", "advantages/max", "loss", "kl", "entropy",
            "grad_norm", "critic/value_loss", "critic/values_mean", "critic/returns_mean", "critic/grad_norm")


def _launch(n, out):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port",
           str(26500 + (os.getpid() % 1000) + n), os.path.join(ROOT, "tests", "llm", "critic_ddp_check.py"), out,
           *ESTIMATORS]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


def test_two_processes_equal_one_for_gae_and_reinforce_plus_plus(tmp_path):
    _launch(1, str(tmp_path))
    _launch(2, str(tmp_path))
    for est in ESTIMATORS:
        one = torch.load(tmp_path / f"{est}_1_0.pt")
        r0, r1 = torch.load(tmp_path / f"{est}_2_0.pt"), torch.load(tmp_path / f"{est}_2_1.pt")
        assert bool(one["critic"]) == (est == "gae")
        for step, full in enumerate(one["advantages"]):
            a, b = r0["advantages"][step], r1["advantages"][step]
            assert a.shape[1] != b.shape[1] or step == 1  # the shares are padded to different lengths
            both = torch.cat([F.pad(x, (0, full.shape[1] - x.shape[1])) for x in (a, b)])
            torch.testing.assert_close(both, full, atol=1e-5, rtol=1e-4, msg=f"{est} step {step}")
        for part in ("policy", "critic"):
            for k, v in one[part].items():
                assert torch.equal(r0[part][k], r1[part][k]), f"{est}: ranks disagree on {k}"
                # 4 AdamW steps at lr 1e-2 turn the float noise of the all-reduce into ~1e-6; AdamW is blind to the
                # gradient's scale, which the grad norms below pin down
                torch.testing.assert_close(r0[part][k], v, atol=2e-5, rtol=1e-4, msg=f"{est}: {k}")
        for m1, m2 in zip(one["metrics"], r0["metrics"]):
            for k in COMPARED:
                if k in m1:
                    assert abs(m1[k] - m2[k]) <= 1e-4 * max(1.0, abs(m1[k])), f"{est}: {k} {m1[k]} vs {m2[k]}"
