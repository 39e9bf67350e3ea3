"""Scale-out engines (issue 15): the trainer under FSDP2 and DeepSpeed ZeRO-2/3 on 2 CPU processes gives the update
of one process, takes exactly one optimizer step per training step, samples, evaluates, checkpoints, resumes and
saves under sharding; an engine the launch asked for but accelerate did not set up is refused in one line.

FSDP2 runs through tests/llm/cpu_fsdp.py's shim (accelerate runs FSDP on GPUs only); DeepSpeed through
`accelerate launch --config_file configs/accelerate/ds_zero{2,3}.yaml`, as a user runs it, when deepspeed is
installed (`pip install deepspeed`; skipped otherwise). Launcher: tests/llm/engine_check.py.
Tolerance of "equals one process": atol 1e-6, rtol 1e-5 on the LoRA weights after 2 AdamW steps at lr 1e-2 (the
micro-batching and reduction order differ; measured 1e-7 for FSDP2, ZeRO-2 and ZeRO-3), as the DDP test uses.
"""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from llmrl.llm import engines
from llmrl.llm.config import GRPOConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECK = os.path.join(ROOT, "tests", "llm", "engine_check.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
for key in [k for k in ENV if k.startswith(("ACCELERATE_", "FSDP_"))]:  # the launches say which engine
    del ENV[key]


def _run(cmd, timeout=600):
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def _torchrun(n, engine, out, *scenarios):
    port = str(29000 + (os.getpid() * 7 + n + len(engine)) % 900)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port", port, CHECK,
          engine, str(out), *scenarios])


def _load(out, scenario, engine, world):
    return torch.load(os.path.join(out, f"{scenario}_{engine}_{world}.pt"), weights_only=False)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One process on the whole fixed batch (optimize); two DDP processes end to end (train)."""
    out = tmp_path_factory.mktemp("baseline")
    _torchrun(1, "plain", out, "optimize", "optimize_full")
    _torchrun(2, "plain", out, "train")
    return {"optimize": _load(out, "optimize", "plain", 1), "optimize_full": _load(out, "optimize_full", "plain", 1),
            "train": _load(out, "train", "plain", 2)}


def _assert_update_equals_one_process(got, one, reference="adapter copy"):
    assert got["sharded"], "the weights were not sharded: the engine was not in effect"
    assert got["reference"] == one["reference"] == reference  # (the adapter copy runs through the prepared module)
    assert got["adam_steps"] == one["adam_steps"] == 2  # num_iterations=2: one step per pass, 2 micro-batches each
    torch.testing.assert_close(got["ref_logp"], one["ref_logp"], atol=1e-6, rtol=1e-5)
    assert got["weights"].keys() == one["weights"].keys() and len(one["weights"]) > 10
    for k in one["weights"]:
        torch.testing.assert_close(got["weights"][k], one["weights"][k], atol=1e-6, rtol=1e-5, msg=k)


def _assert_trains_like_ddp(got, ddp):
    assert got["adam_steps"] == 3  # 3 training steps of 2 micro-batches each
    assert got["losses"] == pytest.approx(ddp["losses"], rel=1e-4, abs=1e-6)
    assert got["kl"] == pytest.approx(ddp["kl"], rel=1e-4, abs=1e-7)
    assert got["lr"] == ddp["lr"] == pytest.approx([1e-2 * (3 - k) / 3 for k in (1, 2, 3)])  # linear, per step
    assert got["greedy"] == ddp["greedy"]  # evaluation decodes from the gathered weights
    assert "engine_state" in got["files"]  # sharded model + optimizer through accelerate's save_state
    assert got["merged_diff"] < 1e-6  # final-merged = the saved adapter merged into the base by peft
    for k in got["weights"]:  # resume == uninterrupted, bit for bit
        assert torch.equal(got["resumed"][k], got["weights"][k]), k
        assert torch.equal(got["reloaded"][k], got["weights"][k]), k  # final/ reloads with from_pretrained
        torch.testing.assert_close(got["weights"][k], ddp["weights"][k], atol=1e-4, rtol=1e-4)


def test_fsdp2_two_processes_equal_one(tmp_path, baseline):
    _torchrun(2, "fsdp2", tmp_path, "optimize", "optimize_full", "train")
    got = _load(tmp_path, "optimize", "fsdp2", 2)
    assert got["engine"] == "fsdp2"
    _assert_update_equals_one_process(got, baseline["optimize"])
    _assert_update_equals_one_process(_load(tmp_path, "optimize_full", "fsdp2", 2), baseline["optimize_full"],
                                      "model copy")
    train = _load(tmp_path, "train", "fsdp2", 2)
    assert train["engine"] == "fsdp2"
    _assert_trains_like_ddp(train, baseline["train"])


def test_fsdp2_activation_checkpointing_equals_one_process(tmp_path, baseline):
    """accelerate's fsdp_activation_checkpointing replays the decoder into the shared prefix's KV cache (a crash
    before): gradient passes take the plain path."""
    _torchrun(2, "fsdp2-ac", tmp_path, "optimize")
    _assert_update_equals_one_process(_load(tmp_path, "optimize", "fsdp2-ac", 2), baseline["optimize"])


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_two_processes_equal_one(tmp_path, baseline, stage):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install deepspeed)")
    port = str(28000 + (os.getpid() + stage) % 900)
    _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
          os.path.join(ROOT, "configs", "accelerate", f"ds_zero{stage}.yaml"), "--main_process_port", port, CHECK,
          "deepspeed", str(tmp_path), "optimize", "optimize_full", "train"])
    got, full = _load(tmp_path, "optimize", "deepspeed", 2), _load(tmp_path, "optimize_full", "deepspeed", 2)
    assert got["engine"] == f"deepspeed-zero{stage}"
    # ZeRO-3 gathers each submodule's weights in its own hooks: activation_memory's forwards stay off there
    assert (got["lean_modules"] > 0) == (stage == 2)
    if stage == 2:  # weights stay whole under ZeRO-2
        got["sharded"] = full["sharded"] = True
    _assert_update_equals_one_process(got, baseline["optimize"])
    _assert_update_equals_one_process(full, baseline["optimize_full"], "model copy")
    _assert_trains_like_ddp(_load(tmp_path, "train", "deepspeed", 2), baseline["train"])


def test_fsdp_config_without_gpu_is_refused_in_one_line(tmp_path):
    """Issue 15: `accelerate launch --config_file fsdp2.yaml` without a GPU ran as plain DDP, silently."""
    from tests.llm.tiny import save_tiny, tiny_dataset

    model_dir = save_tiny(tmp_path / "model")
    data = str(tmp_path / "data.jsonl")
    tiny_dataset(8).to_json(data)
    res = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                          os.path.join(ROOT, "configs", "accelerate", "fsdp2.yaml"), "--num_processes", "1",
                          os.path.join(ROOT, "tests", "llm", "run_tiny.py"), model_dir, data, "--output_dir",
                          str(tmp_path / "run"), "--max_steps", "1"], env=ENV, capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode != 0
    line = [x for x in res.stderr.splitlines() if x.startswith("error:")][-1]
    assert "asks for FSDP" in line and "GPUs only" in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _cfg(**kw):
    return GRPOConfig(output_dir="unused", report_to=["none"], per_device_batch_size=8, num_generations=4,
                      micro_batch_size=4, **kw)


def _acc(kind, num_processes=2, **state):
    from accelerate.utils import DistributedType

    return SimpleNamespace(distributed_type=getattr(DistributedType, kind), num_processes=num_processes,
                           state=SimpleNamespace(**state))


def _fsdp(**kw):
    return SimpleNamespace(**{"fsdp_version": 2, "cpu_ram_efficient_loading": False,
                              "activation_checkpointing": False, **kw})


def _deepspeed(zero3_init_flag=False, **config):
    return SimpleNamespace(zero3_init_flag=zero3_init_flag, zero_stage=2,
                           deepspeed_config={"zero_optimization": {"stage": 2}, **config})


@pytest.mark.parametrize("env, acc, cfg, words", [
    ({"ACCELERATE_USE_FSDP": "true"}, _acc("MULTI_CPU"), {}, ["asks for FSDP", "MULTI_CPU"]),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, _acc("MULTI_CPU"), {"use_cpu": True}, ["asks for DeepSpeed", "use_cpu"]),
    ({"WORLD_SIZE": "2"}, _acc("NO", num_processes=1), {}, ["WORLD_SIZE", "each would train alone"]),
    ({}, _acc("FSDP", fsdp_plugin=_fsdp(fsdp_version=1)), {}, ["fsdp_version: 1", "fsdp_version: 2"]),
    ({}, _acc("FSDP", fsdp_plugin=_fsdp(cpu_ram_efficient_loading=True)), {}, ["fsdp_cpu_ram_efficient_loading"]),
    ({}, _acc("FSDP", fsdp_plugin=_fsdp(activation_checkpointing=True)), {"gradient_checkpointing": True},
     ["fsdp_activation_checkpointing"]),
    ({}, _acc("DEEPSPEED", deepspeed_plugin=_deepspeed(zero3_init_flag=True)), {}, ["zero3_init_flag"]),
    ({}, _acc("DEEPSPEED", deepspeed_plugin=_deepspeed(gradient_accumulation_steps=4)), {},
     ["gradient_accumulation_steps=4", "(2)"]),
    ({}, _acc("DEEPSPEED", deepspeed_plugin=_deepspeed(train_micro_batch_size_per_gpu=8)), {},
     ["train_micro_batch_size_per_gpu=8", "micro_batch_size (4)"]),
    ({}, _acc("DEEPSPEED", deepspeed_plugin=_deepspeed(gradient_clipping=0.5)), {}, ["gradient_clipping=0.5"]),
    ({}, _acc("DEEPSPEED", deepspeed_plugin=_deepspeed(zero_optimization={"offload_optimizer": {"device": "cpu"}})),
     {}, ["offload_optimizer"]),
])
def test_engine_settings_the_trainer_cannot_honour_are_refused(monkeypatch, env, acc, cfg, words):
    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError) as err:
        engines.check(acc, _cfg(**cfg))
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


@pytest.mark.parametrize("acc", [_acc("DEEPSPEED", deepspeed_plugin=_deepspeed(gradient_accumulation_steps=1,
                                                                               gradient_clipping=1.0)),
                                 _acc("DEEPSPEED", deepspeed_plugin=_deepspeed(gradient_accumulation_steps="auto",
                                                                               train_micro_batch_size_per_gpu=4)),
                                 _acc("FSDP", fsdp_plugin=_fsdp(activation_checkpointing=True)), _acc("MULTI_CPU")])
def test_engine_settings_the_trainer_honours_pass(monkeypatch, acc):
    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    engines.check(acc, _cfg())


def test_fsdp_asked_in_this_process_without_gpu_is_refused(tmp_path, monkeypatch):
    """The trainer's own Accelerator, built from the launch environment as accelerate launch leaves it."""
    from tests.llm.tiny import tiny_trainer

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(ValueError, match="asks for FSDP but accelerate .* set up"):
        tiny_trainer(tmp_path)
