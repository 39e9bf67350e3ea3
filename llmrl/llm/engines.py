"""Scale-out through accelerate: the engine `accelerate launch --config_file configs/accelerate/X.yaml` asks for
(DDP, FSDP2, DeepSpeed ZeRO-1/2/3) is either the one the trainer runs, or the run is refused in one line naming
the setting. Never a silent fallback: accelerate 1.x quietly sets up plain DDP when it cannot honour an FSDP or
DeepSpeed config (e.g. without a GPU), so what was asked for is read from the launcher's environment and compared
with what accelerate set up.

What each engine changes in the trainer, and nothing else:
- `accelerator`: build and check the Accelerator (DeepSpeed also runs on CPU, over gloo; FSDP needs GPUs); models
  loaded before `prepare` are whole, under ZeRO-3 too (the trainer checks them and builds the reference first);
- `prepare`: the values the trainer owns in the engine's config (DeepSpeed's micro-batch size, accumulation steps
  and clipping; FSDP2's wrapped layer class), then accelerate's `prepare`;
- `full_parameters`: the samplers read weights directly, so under FSDP2 / ZeRO-3 every process gathers the whole
  model while it samples (the price of the lean sampler: one full copy per process for that time);
- `accumulate` / `backward`: exactly one optimizer step per pass over the micro-batches under every engine
  (DeepSpeed steps inside `backward` at accelerate's sync boundary, which only `accelerate.accumulate` sets);
- `full_state_dict`, `owns_state`: the final adapter/model in plain HF/peft format, and checkpoints whose
  sharded model and optimizer state accelerate's `save_state`/`load_state` write and read.
Log-probs (policy, reference, KL) always run through the prepared module, whose forward gathers what it needs.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os

import torch

from .logprobs import logits_head
from .model import unwrap_peft


def requested(env=os.environ) -> str:
    """The engine the launcher asked for: 'fsdp', 'deepspeed' or 'ddp' (plain data parallel, or one process).
    accelerate's launcher (and an Accelerator given a plugin) says so in the environment."""
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    if env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    return "ddp"


def name(acc) -> str:
    """The engine in effect: 'fsdp2', 'deepspeed-zero<stage>' or 'ddp' (also one process)."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.FSDP:
        return f"fsdp{acc.state.fsdp_plugin.fsdp_version}"
    if acc.distributed_type == DistributedType.DEEPSPEED:
        return f"deepspeed-zero{acc.state.deepspeed_plugin.zero_stage}"
    return "ddp"


def params_sharded(acc) -> bool:
    """True when each process holds only a shard of the weights (FSDP2, ZeRO-3): direct reads need a gather."""
    return name(acc) in ("fsdp2", "deepspeed-zero3")


def gathers_per_submodule(acc) -> bool:
    """True under DeepSpeed ZeRO-3, which gathers each submodule's weights in that submodule's forward hooks: code
    reading a child's weight directly (activation_memory's LoRA forward) would see an empty shard."""
    return name(acc) == "deepspeed-zero3"


def owns_state(acc) -> bool:
    """True when the engine partitions model or optimizer state (FSDP2, any DeepSpeed stage): checkpoints go
    through accelerate's save_state/load_state on every process."""
    return name(acc) != "ddp"


def accelerator(cfg, given=None, **kwargs):
    """The Accelerator for this run (`given`, or one built from the launch environment with `kwargs`), refused in
    one line when it is not what the launch asked for or when the trainer cannot run that engine's settings."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    no_gpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    if given is not None:
        acc = given
    elif requested() == "deepspeed" and no_gpu and not cfg.use_cpu:
        # DeepSpeed has a CPU accelerator (gloo): accelerate only needs the backend named. Told cpu=True it would
        # set up plain DDP instead, and without a backend one independent process per rank.
        from accelerate.utils import InitProcessGroupKwargs

        acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")], **kwargs)
    else:
        # Without a GPU, accelerate only runs several processes (torchrun, DDP over gloo) when told to use the CPU.
        acc = Accelerator(cpu=cfg.use_cpu or no_gpu, **kwargs)
    check(acc, cfg)
    if acc.distributed_type == DistributedType.DEEPSPEED:
        # Under ZeRO-3 accelerate has transformers partition every model it loads (zero.Init); until `prepare` shards
        # the policy, models load whole (the policy, a reward model, the reference), as llmrl's checks need them
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    return acc


def check(acc, cfg) -> None:
    """Refuse, with a one-line ValueError naming the setting, an engine configuration the trainer cannot honour."""
    import accelerate
    from accelerate.utils import DistributedType

    asked, setup = requested(), acc.distributed_type.value
    cpu_note = " (use_cpu is set)" if cfg.use_cpu else ""
    if asked == "fsdp" and acc.distributed_type != DistributedType.FSDP:
        raise ValueError(f"the accelerate config asks for FSDP but accelerate {accelerate.__version__} set up {setup}"
                         f"{cpu_note}: it runs FSDP on GPUs only; without a GPU use DDP (torchrun --nproc_per_node "
                         f"N) or DeepSpeed (configs/accelerate/ds_zero3.yaml)")
    if asked == "deepspeed" and acc.distributed_type != DistributedType.DEEPSPEED:
        raise ValueError(f"the accelerate config asks for DeepSpeed but accelerate set up {setup}{cpu_note}: it "
                         f"drops DeepSpeed when told to use the CPU (use_cpu, Accelerator(cpu=True)); without a GPU "
                         f"DeepSpeed runs on the CPU by itself")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and acc.num_processes == 1:
        raise ValueError(f"{world} processes were launched (WORLD_SIZE) but accelerate set up {setup} with one "
                         f"process: each would train alone on its own data; build the Accelerator with cpu=True "
                         f"when there is no GPU, or let GRPOTrainer build it")
    if getattr(cfg, "optimizer", "adamw") != "adamw" and owns_state(acc):
        raise ValueError(f"optimizer={cfg.optimizer} needs whole parameters and gradients on each process (its "
                         f"Fisher-vector products and line search run on them), but {name(acc)} partitions them: "
                         f"use DDP (torchrun, accelerate launch --multi_gpu), or optimizer=adamw")
    if getattr(cfg, "advantage", None) == "gae" and owns_state(acc):
        raise ValueError(f"advantage=gae: the critic is a second model with its own optimizer, which {name(acc)} "
                         f"would have to partition too (not supported yet): use DDP, or an advantage without a "
                         f"critic (grpo, rloo, reinforce_plus_plus, ...)")
    if acc.distributed_type == DistributedType.FSDP:
        _check_fsdp(acc.state.fsdp_plugin, cfg)
    if acc.distributed_type == DistributedType.DEEPSPEED:
        _check_deepspeed(acc.state.deepspeed_plugin, cfg)


def _check_fsdp(plugin, cfg) -> None:
    if plugin.fsdp_version != 2:
        raise ValueError(f"fsdp_version: {plugin.fsdp_version} is not supported (FSDP1 saves an empty peft adapter "
                         f"and loses optimizer state on resume): set fsdp_version: 2 in the accelerate config")
    if plugin.cpu_ram_efficient_loading:
        raise ValueError("fsdp_cpu_ram_efficient_loading: true loads the weights on the first process only, but "
                         "llmrl checks the model and builds the reference before sharding: set it to false")
    if plugin.activation_checkpointing and cfg.gradient_checkpointing:
        raise ValueError("gradient_checkpointing and the accelerate config's fsdp_activation_checkpointing both "
                         "checkpoint the decoder layers: keep one of them")


def _check_deepspeed(plugin, cfg) -> None:
    ds = plugin.deepspeed_config
    micro, steps = micro_batches(cfg)
    zero = ds.get("zero_optimization", {})
    if plugin.zero3_init_flag:
        raise ValueError("zero3_init_flag: true partitions the weights while the model loads, but llmrl checks the "
                         "model and builds the reference before sharding: set zero3_init_flag: false in the "
                         "accelerate config")
    owned = {"train_micro_batch_size_per_gpu": ({micro}, f"micro_batch_size ({micro})"),
             "gradient_accumulation_steps": ({1, steps}, f"micro-batches per step, per_device_batch_size / "
                                                         f"micro_batch_size ({steps})"),
             "gradient_clipping": ({float(cfg.max_grad_norm)}, f"max_grad_norm ({cfg.max_grad_norm})")}
    for key, (ok, ours) in owned.items():
        value = ds.get(key, "auto")
        if value not in (None, "auto") and value not in ok:
            raise ValueError(f"the DeepSpeed config's {key}={value} contradicts llmrl's {ours}, which sets it: "
                             f"make it 'auto' (or equal)")
    for kind in ("offload_optimizer", "offload_param"):
        if zero.get(kind, {}).get("device", "none") not in (None, "none"):
            raise ValueError(f"DeepSpeed {kind} needs DeepSpeed's own CPU optimizer; llmrl trains with torch's "
                             f"AdamW: set {kind}_device: none in the accelerate config")


def micro_batches(cfg) -> tuple[int, int]:
    """(completions per micro-batch, micro-batches per optimizer step) on each process."""
    micro = min(cfg.micro_batch_size, cfg.per_device_batch_size)
    return micro, math.ceil(cfg.per_device_batch_size / micro)


def prepare(acc, module, optimizer, cfg):
    """accelerate's prepare of the log-prob module and optimizer, after setting the values the trainer owns in the
    engine's config: DeepSpeed's micro-batch size, accumulation steps (so that it steps once per training step),
    clipping (= max_grad_norm; DeepSpeed clips inside its step) and the full-weight gather on save; FSDP2's
    wrapped layer class (the model's own `_no_split_modules`: the prepared module is llmrl's wrapper)."""
    from accelerate.utils import DistributedType

    model = unwrap_peft(module.model)
    launch_config = None
    if acc.distributed_type == DistributedType.DEEPSPEED:
        micro, steps = micro_batches(cfg)
        ds = acc.state.deepspeed_plugin.deepspeed_config
        launch_config = copy.deepcopy(ds)  # restored after prepare: the next trainer's check sees the launch's values
        ds.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=steps,
                  train_batch_size=micro * steps * acc.num_processes, gradient_clipping=float(cfg.max_grad_norm))
        zero = ds.setdefault("zero_optimization", {})
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # the final save gathers the full weights
        hidden = model.config.get_text_config().hidden_size
        for key, value in (("reduce_bucket_size", hidden * hidden), ("stage3_prefetch_bucket_size",
                           int(0.9 * hidden * hidden)), ("stage3_param_persistence_threshold", 10 * hidden)):
            if zero.get(key) == "auto":  # accelerate would look for `config` on llmrl's wrapper
                zero[key] = value
        acc.gradient_accumulation_steps = steps
    elif acc.distributed_type == DistributedType.FSDP:
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

        plugin = acc.state.fsdp_plugin
        if plugin.auto_wrap_policy is transformer_auto_wrap_policy and plugin.transformer_cls_names_to_wrap is None:
            plugin.transformer_cls_names_to_wrap = list(getattr(model, "_no_split_modules", None) or [])
    policy, optimizer = acc.prepare(module, optimizer)
    if launch_config is not None:
        ds.clear()
        ds.update(launch_config)
        acc.state.deepspeed_plugin.set_deepspeed_weakref()  # what `accelerator` unset, as accelerate had it
    if name(acc) == "deepspeed-zero3":
        # ZeRO-3 gathers a weight for its module's forward only; the log-probs apply the output layer's weight
        # outside it (chunk by chunk), so it is declared used by the whole log-prob forward
        import deepspeed

        head = logits_head(module.model)
        for weight in (head.weight, head.bias):
            if weight is not None:
                deepspeed.zero.register_external_parameter(module, weight)
    return policy, optimizer


@contextlib.contextmanager
def whole_model_loading(acc):
    """Models loaded in this block are whole, also under ZeRO-3 after `prepare` (accelerate has transformers
    partition every model it loads): for a plain copy to save, or one process's check."""
    from accelerate.utils import DistributedType

    if acc.distributed_type != DistributedType.DEEPSPEED:
        yield
        return
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        acc.state.deepspeed_plugin.set_deepspeed_weakref()  # what accelerate had set


def activation_checkpointing(acc, cfg) -> bool:
    """Whether decoder-layer activations are recomputed in the backward pass (our flag or FSDP's own)."""
    from accelerate.utils import DistributedType

    fsdp = acc.distributed_type == DistributedType.FSDP and acc.state.fsdp_plugin.activation_checkpointing
    return bool(cfg.gradient_checkpointing or fsdp)


def enable_gradient_checkpointing(model) -> None:
    """transformers' gradient checkpointing on every decoder layer (non-reentrant: LoRA gradients flow without
    input gradients)."""
    base = unwrap_peft(model)
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers 5's name; the old one warns there
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@contextlib.contextmanager
def full_parameters(acc, policy):
    """A block in which every weight of the prepared `policy` is a full, plain tensor on every process, for code
    that reads weights directly (the samplers). Collective: all processes enter it together."""
    engine = name(acc)
    if engine == "fsdp2":
        from torch.distributed.fsdp import FSDPModule

        # The first module that runs an FSDP forward becomes FSDP2's root: sampling before the first training
        # forward would make a decoder layer the root and break the next one. Initialize the real root first
        # (torch has no public call for it).
        policy._get_fsdp_state()._lazy_init()
        units = [m for m in policy.modules() if isinstance(m, FSDPModule)]
        for handle in [m.unshard(async_op=True) for m in units]:  # all all-gathers in flight, then wait
            if handle is not None:
                handle.wait()
        try:
            yield
        finally:
            for m in units:
                m.reshard()
    elif engine == "deepspeed-zero3":
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(policy.parameters()), modifier_rank=None):
            yield
    else:
        yield


@contextlib.contextmanager
def accumulate(acc, policy, index: int, count: int):
    """Micro-batch `index` of `count` whose gradients add up to ONE optimizer step: gradients sync (and DeepSpeed
    steps) at the last one only."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.DEEPSPEED:
        # accelerate's accumulate counts micro-batches; DeepSpeed steps in `backward` when the count completes
        if count != acc.gradient_accumulation_steps or (index == 0 and acc.step % count != 0):
            raise RuntimeError(f"DeepSpeed was set up for {acc.gradient_accumulation_steps} micro-batches per "
                               f"optimizer step, this pass has {count} (micro-batch {index}, count at {acc.step})")
        with acc.accumulate(policy):
            yield
    elif index < count - 1:
        with acc.no_sync(policy):
            yield
    else:
        yield


def backward(acc, loss) -> None:
    """accelerate's backward of a micro-batch loss; the micro-batch losses already sum to the batch loss."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.DEEPSPEED:
        acc.backward(loss, scale_wrt_gas=False)  # DeepSpeed would divide by its gradient_accumulation_steps
    else:
        acc.backward(loss)


def full_state_dict(acc, policy) -> dict | None:
    """The full state dict of the wrapped model (keys as `policy.model.state_dict()`) on the main process, gathered
    from every process when weights are sharded (FSDP2, ZeRO-3: collective, all processes call it); None where
    the model's own state dict is already whole."""
    if not params_sharded(acc):
        return None
    state = acc.get_state_dict(policy)
    if not acc.is_main_process:
        return {}
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


def unsharded_copy(acc, model, state_dict: dict):
    """A plain copy of the peft or HF `model` holding `state_dict` (a `full_state_dict`), on the CPU: what
    merging a sharded model's adapter needs."""
    from transformers import AutoModelForCausalLM

    base = unwrap_peft(model)
    dtype = next(v for k, v in state_dict.items() if "lora_" not in k).dtype
    with whole_model_loading(acc):
        plain = AutoModelForCausalLM.from_config(copy.deepcopy(base.config), dtype=dtype)
    if hasattr(model, "peft_config"):
        from peft import get_peft_model

        configs = dict(model.peft_config)
        first = model.active_adapter
        plain = get_peft_model(plain, configs.pop(first), adapter_name=first)
        for adapter, config in configs.items():
            plain.add_adapter(adapter, config)
    plain.load_state_dict(state_dict, strict=True)
    return plain
