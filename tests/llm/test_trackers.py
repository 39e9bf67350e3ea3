"""Trackers and sharing: wandb in offline mode writes a run with the logged history and a completions Table;
TensorBoard's text view gets a markdown table of completions; a tracker whose package is missing is refused;
push_to_hub fails fast with one line when the hub cannot be used (checked before training), uploads the final
adapter or merged model with its model card otherwise; the model card's loading code loads the adapter."""
import importlib.util
import json
import os
import re
import struct
import time

import pytest
import torch

from llmrl.llm import hub
from llmrl.llm.config import GRPOConfig
from tests.llm.tiny import save_tiny, tiny_dataset, tiny_trainer


def _wandb_records(path):
    """The protobuf records of a wandb run file (.wandb: a 7-byte header, then leveldb-log records in 32 KiB
    blocks, each chunk with a 7-byte header: crc32c, length, type 1 FULL / 2 FIRST / 3 MIDDLE / 4 LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", "not a wandb run file"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # the rest of a block is padding
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            yield record
            parts = b""
        elif kind == 0:
            break


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason="wandb is not installed (pip install 'llmrl[wandb]')")
def test_wandb_offline_writes_the_run_history_and_a_completions_table(tmp_path, monkeypatch):
    import wandb
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    (tmp_path / "wb").mkdir()
    run_dir = tmp_path / "run"
    try:
        tiny_trainer(run_dir, report_to=["wandb"], max_steps=2).train()
    finally:
        wandb.teardown()
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    history, run_info = {}, None
    for record in _wandb_records(next(runs[0].glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                     for item in record.history.item}
            history.setdefault(record.history.step.num, {}).update(items)
        elif kind == "run":
            run_info = record.run
    assert run_info.project == "llmrl" and run_info.display_name == "run"
    logged = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    for row in logged:
        assert history[row["step"]]["reward"] == pytest.approx(row["reward"])
        assert history[row["step"]]["loss"] == pytest.approx(row["loss"])
        assert history[row["step"]]["completions/_type"] == "table-file"
    table = json.load(open(runs[0] / "files" / history[1]["completions/path"]))
    first = [json.loads(line) for line in open(run_dir / "completions.jsonl")][0]
    assert table["columns"] == ["step", "prompt", "completion", "reward", "advantage"]
    assert len(table["data"]) == 8 and table["data"][0][2] == first["completion"]


def test_tensorboard_text_view_gets_a_markdown_table_of_completions(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tiny_trainer(tmp_path, report_to=["tensorboard"], max_steps=2).train()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    events = acc.Tensors("completions/text_summary")
    assert [e.step for e in events] == [1, 2]
    text = events[0].tensor_proto.string_val[0].decode()
    lines = text.split("\n")
    assert lines[0] == "| prompt | completion | reward | advantage |" and len(lines) == 2 + 8
    first = [json.loads(line) for line in open(tmp_path / "completions.jsonl")][0]
    cells = re.split(r"(?<!\\)\|", lines[2])[1:-1]
    completion = first["completion"].replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")
    assert cells[0].strip() == first["prompt"][-1]["content"] and cells[1].strip() == completion.strip()
    assert float(cells[2]) == pytest.approx(first["reward"], abs=1e-3)


def test_a_tracker_whose_package_is_missing_is_refused(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match=r"report_to 'wandb' needs the wandb package: .*llmrl\[wandb\]") as e:
        GRPOConfig(report_to=["tensorboard", "wandb"])
    assert "\n" not in str(e.value)
    from llmrl.llm.reward_trainer import RewardConfig
    with pytest.raises(ValueError, match=r"RewardConfig: report_to 'wandb' needs the wandb package"):
        RewardConfig(report_to="wandb")
    GRPOConfig(report_to=["tensorboard"])
    GRPOConfig(report_to=["none"])


@pytest.fixture
def no_wandb_login(tmp_path, monkeypatch):
    """A machine where wandb has no credentials: an empty HOME (no .netrc, no settings file), no WANDB_API_KEY,
    online mode; wandb's process-wide settings and session credentials start and end empty."""
    import wandb
    from wandb.sdk.lib import wbauth
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DISABLED", "NETRC", "WANDB_CONFIG_DIR",
                 "WANDB_IDENTITY_TOKEN_FILE", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_SILENT", "true")  # no look-up of the account behind a key (needs the network)
    monkeypatch.chdir(tmp_path)
    wandb.teardown()
    wbauth.unauthenticate_session(update_settings=False)
    yield
    wandb.teardown()
    wbauth.unauthenticate_session(update_settings=False)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason="wandb is not installed (pip install 'llmrl[wandb]')")
def test_wandb_without_a_login_is_refused_before_the_model_loads(tmp_path, no_wandb_login, monkeypatch):
    from llmrl.llm.reward_trainer import RewardConfig, RewardTrainer
    from llmrl.llm.trainer import GRPOTrainer
    from llmrl.llm.tracking import check_wandb_login
    from llmrl.utils import SetupError

    missing = str(tmp_path / "no_such_model")  # loading it would fail: the refusal has to come first
    for make in (lambda: GRPOTrainer(GRPOConfig(model=missing, report_to=["wandb"], output_dir=str(tmp_path / "g"))),
                 lambda: RewardTrainer(RewardConfig(model=missing, report_to="wandb", output_dir=str(tmp_path / "r")))):
        with pytest.raises(SetupError, match=r"wandb login.*WANDB_API_KEY.*WANDB_MODE=offline") as e:
            make()
        assert "\n" not in str(e.value)
    check_wandb_login(["tensorboard"])  # no wandb, nothing to check
    import wandb
    for mode in ("offline", "disabled"):  # wandb needs no credentials in these modes
        monkeypatch.setenv("WANDB_MODE", mode)
        wandb.teardown()  # wandb reads its settings once per process
        check_wandb_login(["wandb"])
    monkeypatch.delenv("WANDB_MODE")
    wandb.teardown()
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    check_wandb_login(["wandb"])


# ----------------------------------------------------------------------------- the hub
@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """A hub that refuses connections at once (a closed local port), a token, offline mode off."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.mark.parametrize("env, words", [
    ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
    ({"HF_TOKEN": None}, "no Hugging Face token"),
    ({}, r"the Hugging Face hub \(http://127.0.0.1:9\) is not reachable"),
])
def test_hub_problems_are_one_line_errors_in_seconds(no_hub, monkeypatch, tmp_path, env, words):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    for key, value in env.items():
        monkeypatch.delenv(key) if value is None else monkeypatch.setenv(key, value)
    t = time.perf_counter()
    with pytest.raises(RuntimeError, match=f"^push_to_hub: {words}.*--push_to_hub") as e:
        hub.check_hub_access(None, str(tmp_path / "run"))
    assert time.perf_counter() - t < 10 and "\n" not in str(e.value)


def test_push_to_hub_is_checked_before_training_writes_anything(no_hub, tmp_path):
    tr = tiny_trainer(tmp_path / "run", push_to_hub=True)
    with pytest.raises(RuntimeError, match="not reachable"):
        tr.train()
    assert not (tmp_path / "run").exists() and tr.step_count == 0


@pytest.mark.parametrize("merged", [False, True])
def test_push_uploads_the_final_adapter_or_merged_model_with_its_card(tmp_path, monkeypatch, merged):
    """The hub calls stand in for the network; what is checked is which folder goes where, with what in it."""
    from huggingface_hub import HfApi
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub.socket, "create_connection", lambda *a, **k: open(os.devnull))
    monkeypatch.setattr(HfApi, "whoami", lambda self, token=None: {"name": "alice"})
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **k: calls.append(("create", repo_id, k)) or
                        f"https://hub/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **k: calls.append(
        ("upload", k["repo_id"], sorted(os.listdir(k["folder_path"])), k["folder_path"])))
    tr = tiny_trainer(tmp_path / "myrun", push_to_hub=True, hub_private_repo=True, max_steps=1)
    tr.train()
    tr.save_final(merged=merged)
    assert tr.hub_repo_id == "alice/myrun"
    assert calls[0] == ("create", "alice/myrun", {"private": True, "exist_ok": True})
    kind, repo, files, folder = calls[1]
    assert kind == "upload" and repo == "alice/myrun" and "README.md" in files
    if merged:
        assert folder.endswith("final-merged") and "model.safetensors" in files
        assert 'AutoModelForCausalLM.from_pretrained("alice/myrun")' in open(os.path.join(folder, "README.md")).read()
    else:
        assert folder.endswith("final") and "adapter_model.safetensors" in files
        assert 'PeftModel.from_pretrained(base, "alice/myrun")' in open(os.path.join(folder, "README.md")).read()


def test_model_card_says_what_was_trained_and_its_code_loads_the_adapter(tmp_path):
    """The card's base model, data, rewards, config, final metrics, eval results and llmrl version; its Python
    block, run as written, loads the adapter and gives the trained policy's logits."""
    import llmrl
    from llmrl.llm.evaluation import save_eval_results
    from llmrl.llm.trainer import GRPOTrainer
    model_dir = save_tiny(tmp_path / "model")
    from tests.llm.tiny import length_reward
    cfg = GRPOConfig(model=model_dir, output_dir=str(tmp_path / "run"), max_steps=2, per_device_batch_size=8,
                     num_generations=4, max_new_tokens=6, report_to=["none"], dtype="float32", lora_r=4,
                     learning_rate=1e-2, save_steps=0)
    tr = GRPOTrainer(cfg, reward_funcs=[length_reward], train_dataset=tiny_dataset())
    tr.train()
    save_eval_results(cfg.output_dir, "after", {"accuracy": 0.625, "pass@2": 0.75, "n": 8}, {"dataset": "d",
                                                                                               "split": "test"})
    out = tr.save_final()
    card = open(os.path.join(out, "README.md")).read()
    last = json.loads(open(tmp_path / "run" / "metrics.jsonl").readlines()[-1])
    assert card.startswith("---\n") and "library_name: peft" in card
    assert f"llmrl {llmrl.__version__}" in card and f"`{model_dir}`" in card and "`arithmetic`" in card
    assert "- Rewards: length_reward" in card
    assert "| after | 0.625 | 0.75 | 8 | d/test |" in card
    assert f"## Final metrics (step 2)" in card and f"| reward | {last['reward']:.4g} |" in card
    assert json.loads(card.split("```json\n")[1].split("```")[0])["lora_r"] == 4
    code = card.split("```python\n")[1].split("```")[0]
    scope = {}
    exec(code, scope)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(scope["model"](ids).logits, tr.model(ids).logits)


def test_model_card_of_a_fully_fine_tuned_model_loads_it_without_peft(tmp_path):
    tr = tiny_trainer(tmp_path, lora=False, max_steps=1, learning_rate=1e-3)
    tr.train()
    card = open(os.path.join(tr.save_final(), "README.md")).read()
    assert "A fully fine-tuned model" in card and "library_name: transformers" in card and "peft" not in \
        card.split("## How to load")[1].split("## Training")[0]
    scope = {}
    exec(card.split("```python\n")[1].split("```")[0], scope)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(scope["model"](ids).logits, tr.model(ids).logits)
