"""TEST SHIM: make accelerate run FSDP2 on a CPU-only machine, so that CI can test the trainer's FSDP2 paths.

accelerate 1.x turns FSDP on only for GPU-like distributed types (AcceleratorState.__init__): on CPU it sets up
MULTI_CPU (plain DDP over gloo) and drops the FSDP plugin, which llmrl's trainer refuses in one line. torch's
FSDP2 (`fully_shard`) itself runs on gloo. This shim builds the CPU state (gloo process group, process count) and
then writes accelerate's PRIVATE shared state to say FSDP, which is all that prepare / no_sync / clip_grad_norm_ /
get_state_dict / save_state / load_state look at. Every Accelerator created afterwards in the process (the
trainer's own) shares that state. It belongs in tests only; on GPUs `accelerate launch --config_file
configs/accelerate/fsdp2.yaml` needs nothing of this.
"""
from __future__ import annotations

import os


def force_cpu_fsdp2(**plugin_kwargs):
    """Switch this process's accelerate state to FSDP2 (plugin: FullyShardedDataParallelPlugin(fsdp_version=2,
    **plugin_kwargs)); call once, first, in every process of a torchrun launch. Returns the plugin."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    os.environ.update(ACCELERATE_USE_FSDP="true", FSDP_VERSION="2")  # what accelerate launch exports for FSDP2
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, **plugin_kwargs)
    Accelerator(cpu=True)  # initializes the shared state: MULTI_CPU, gloo
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    # MULTI_CPU names the device "cpu:0"; plain "cpu" is the same device and what FSDP expects
    PartialState._shared_state["device"] = AcceleratorState._shared_state["device"] = torch.device("cpu")
    return plugin
