"""Mistakes a newcomer makes get one-line answers, at once (issue 19.6): a local model path that does not exist,
a hub id or hub dataset while the hub is unreachable."""
import time

import pytest

from llmrl.llm.data import load_prompt_dataset
from llmrl.llm.model import load_policy, resolve_model

UNREACHABLE = "http://127.0.0.1:9"  # nothing listens on the discard port: the connection is refused at once


def test_missing_local_model_directory_says_so():
    for path in ("runs/nothing/final", "./missing", "/no/such/dir", "runs/x/"):
        with pytest.raises(FileNotFoundError) as e:
            resolve_model(path)
        assert "does not exist" in str(e.value) and "\n" not in str(e.value)


def test_hub_model_without_network_fails_fast_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing to fall back on
    t = time.time()
    with pytest.raises(ConnectionError) as e:
        load_policy("someorg/some-model", None)
    assert time.time() - t < 10
    msg = str(e.value)
    assert "not reachable" in msg and "local directory" in msg and "\n" not in msg


def test_hub_model_in_offline_mode_and_not_cached_is_one_line(monkeypatch, tmp_path):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ConnectionError) as e:
        load_policy("someorg/some-model", None)
    msg = str(e.value)
    assert "HF_HUB_OFFLINE is set" in msg and "not in the local hub cache" in msg and "\n" not in msg


@pytest.mark.parametrize("offline", [False, True])
def test_hub_reward_model_without_network_is_one_line(monkeypatch, tmp_path, offline):
    from huggingface_hub import constants
    from llmrl.llm.reward_model import load_reward_model
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    t = time.time()
    with pytest.raises(ConnectionError) as e:
        load_reward_model("someorg/some-reward-model", None)
    assert time.time() - t < 10 and "\n" not in str(e.value)
    assert ("HF_HUB_OFFLINE is set" if offline else "not reachable") in str(e.value)


def test_hub_dataset_without_network_fails_fast_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    t = time.time()
    with pytest.raises(ConnectionError) as e:
        load_prompt_dataset("someorg/some-dataset")
    assert time.time() - t < 10
    assert "not reachable" in str(e.value) and "local .jsonl" in str(e.value) and "\n" not in str(e.value)


def test_auto_dtype_follows_the_cpu_flags():
    """dtype=auto: bf16 only where the CPU multiplies bf16 in hardware (oneDNN also says yes where it emulates)."""
    from llmrl.llm.model import cpu_has_fast_bf16
    assert cpu_has_fast_bf16("flags : fpu sse avx2 avx512f avx512bw avx512_bf16 avx512_vnni")
    assert cpu_has_fast_bf16("flags : fpu amx_bf16 amx_tile")
    assert cpu_has_fast_bf16("Features : fp asimd sve bf16 i8mm")  # Arm
    assert not cpu_has_fast_bf16("flags : fpu sse sse2 avx avx2 fma")  # AVX2 only: bf16 is emulated
    assert not cpu_has_fast_bf16("flags : fpu avx512f avx512bw avx512vl")


def test_evaluation_on_the_training_file_is_refused():
    from llmrl.llm.config import GRPOConfig
    with pytest.raises(ValueError, match="would read the training file data.jsonl.*--eval_dataset"):
        GRPOConfig(dataset="data.jsonl", eval_examples=10)
    GRPOConfig(dataset="data.jsonl", eval_examples=10, eval_dataset="test.jsonl")  # fine
    GRPOConfig(dataset="arithmetic", eval_examples=10)  # a directory or bundled name has a test split
