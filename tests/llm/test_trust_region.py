"""optimizer=trpo|npg in the LLM trainer (llmrl/llm/trust_region.py) on the tiny model, against independent
computations: the Fisher-vector product vs the explicit Hessian of the exact mean token KL (double backward through
the model's own forward, float64), CG vs a dense solve, the accepted step's KL and improvement measured by hand,
rejection leaving the parameters bit-for-bit unchanged, micro-batches == one batch, the recipe's CLI."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils import parameters_to_vector

from llmrl import objectives as O
from llmrl.llm import trust_region as TR
from llmrl.llm.config import GRPOConfig
from tests.llm.trpo_tiny import fixed_batch, trpo_trainer

F64 = torch.float64
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ONE_MODULE = r".*layers\.1\.self_attn\.o_proj"  # LoRA r=1 on one projection: 64 trainable weights


def _trainable(tr):
    names, params = zip(*[(n, p) for n, p in tr.model.named_parameters() if p.requires_grad])
    return list(names), list(params)


def _logits(tr, r, params=None):
    """Completion-position logits / T by hand: the HF forward over every prompt + completion, all positions."""
    ids = torch.cat([r.prompt_ids[r.group_index], r.completion_ids], 1)
    mask = torch.cat([r.prompt_mask[r.group_index], r.completion_mask], 1)
    kw = dict(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    out = tr.model(**kw) if params is None else functional_call(tr.model, params, args=(), kwargs=kw)
    P = r.prompt_ids.shape[1]
    return out.logits[:, P - 1:-1] / tr.cfg.temperature


def _mean_token_kl(tr, r, old_logits, params=None):
    """Exact mean over completion tokens of KL(pi_old || pi_theta) over the whole vocabulary."""
    old, new = torch.log_softmax(old_logits, -1), torch.log_softmax(_logits(tr, r, params), -1)
    kl = (old.exp() * (old - new)).sum(-1)
    m = r.completion_mask.to(kl.dtype)
    return (kl * m).sum() / m.sum()


def _dapo_surrogate(tr, r, old_logits, params=None):
    ids = r.completion_ids[..., None]
    new = torch.log_softmax(_logits(tr, r, params), -1).gather(-1, ids)[..., 0]
    old = torch.log_softmax(old_logits, -1).gather(-1, ids)[..., 0]
    m = r.completion_mask.to(new.dtype)
    return -((new - old).exp() * r.advantages[:, None] * m).sum() / m.sum()


def _explicit_kl_hessian(tr, r):
    """d^2/dtheta^2 of the exact mean token KL at theta_old, by double back-propagation through the model."""
    names, params = _trainable(tr)
    theta0 = parameters_to_vector(params).detach()
    with torch.no_grad():
        old_logits = _logits(tr, r)

    def kl(theta):
        ts = theta.split([p.numel() for p in params])
        return _mean_token_kl(tr, r, old_logits, {n: t.view_as(p) for n, t, p in zip(names, ts, params)})

    with sdpa_kernel(SDPBackend.MATH):  # the SDPA backend that can be differentiated twice
        return torch.autograd.functional.hessian(kl, theta0)


@pytest.fixture(scope="module")
def lora64(tmp_path_factory):
    """A float64 trainer with LoRA r=1 on one module, its fixed batch and the explicit Fisher."""
    tr = trpo_trainer(tmp_path_factory.mktemp("lora64"), dtype=F64, lora_targets=ONE_MODULE)
    r = fixed_batch(tr)
    return tr, r, _explicit_kl_hessian(tr, r)


@pytest.mark.parametrize("micro_batch_size", [16, 3])
def test_fisher_vector_product_is_the_hessian_of_the_mean_token_kl(lora64, micro_batch_size):
    """Micro-batches of 3 completions (the last one 1) accumulate to exactly the full batch's F v."""
    tr, r, H = lora64
    tr.cfg.micro_batch_size = micro_batch_size
    names, params = _trainable(tr)
    assert H.shape == (64, 64) and torch.linalg.eigvalsh(H).max() > 1e-3
    fvp = TR.fisher_vector_product(tr, r, names, params, r.completion_mask.sum().to(F64))
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(64, generator=g, dtype=F64)
        # (~1e-7, not float64's 1e-15: Llama's RMSNorm computes in float32 even in a float64 model)
        torch.testing.assert_close(fvp(v), H @ v, rtol=1e-5, atol=1e-8)


def test_cg_on_the_fisher_solves_the_natural_gradient_system(lora64):
    tr, r, H = lora64
    tr.cfg.micro_batch_size = 5
    names, params = _trainable(tr)
    loss, g, _, _ = TR._policy_gradient(tr, r, params, tr._loss_normalizers(r))
    # the gradient of TRPO's surrogate (dapo: token mean) by hand, through the plain HF forward
    with torch.no_grad():
        old_logits = _logits(tr, r)
    want = torch.autograd.grad(_dapo_surrogate(tr, r, old_logits), params)
    torch.testing.assert_close(g, torch.cat([x.reshape(-1) for x in want]), rtol=1e-5, atol=1e-7)
    assert loss == pytest.approx(-(r.advantages[:, None] * r.completion_mask).sum().item() / r.completion_mask.sum().item())
    damping = 1e-3  # small against F's largest eigenvalues (~0.6), so that the solve depends on F
    fvp = TR.fisher_vector_product(tr, r, names, params, r.completion_mask.sum().to(F64))
    x = O.conjugate_gradient(lambda v: fvp(v) + damping * v, -g, iters=64, tol=1e-30)
    want_x = torch.linalg.solve(H + damping * torch.eye(64, dtype=F64), -g)
    # F v agrees with H v to ~1e-7 (float32 RMSNorm), and (H + damping I) has condition number ~600
    assert float((x - want_x).norm() / want_x.norm()) < 1e-4


def test_full_finetuning_fvp_equals_double_backward_hessian_vector_products(tmp_path):
    """All weights trainable (the tied embedding / LM head too), on a smaller tiny model: F v against
    objectives.fisher_vector_product, the Pearlmutter H v of the exact mean token KL."""
    tr = trpo_trainer(tmp_path, lora=False, dtype=F64, model_kw=dict(layers=1, hidden=16), micro_batch_size=6)
    r = fixed_batch(tr)
    names, params = _trainable(tr)
    assert any("embed_tokens" in n for n in names)
    with torch.no_grad():
        old_logits = _logits(tr, r)
    with sdpa_kernel(SDPBackend.MATH):
        hvp = O.fisher_vector_product(lambda: _mean_token_kl(tr, r, old_logits), params, damping=0.0)
        fvp = TR.fisher_vector_product(tr, r, names, params, r.completion_mask.sum().to(F64))
        v = torch.randn(sum(p.numel() for p in params), generator=torch.Generator().manual_seed(0), dtype=F64)
        torch.testing.assert_close(fvp(v), hvp(v), rtol=1e-5, atol=1e-8)
    stats = tr.optimize(r)
    with torch.no_grad():
        kl = _mean_token_kl(tr, r, old_logits).item()
    assert stats["trust_region/rejected"] == 0.0 and 0 < kl <= tr.cfg.max_kl
    assert stats["trust_region/step_kl"] == pytest.approx(kl, rel=1e-6)


@pytest.mark.parametrize("optimizer", ["trpo", "npg"])
def test_step_stays_in_the_trust_region_and_improves_the_surrogate(tmp_path, optimizer):
    tr = trpo_trainer(tmp_path, optimizer=optimizer, max_kl=0.002, micro_batch_size=6, loss_type="dapo")
    r = fixed_batch(tr)
    names, params = _trainable(tr)
    with torch.no_grad():
        old_logits = _logits(tr, r)
        before = {n: p.clone() for n, p in zip(names, params)}
        loss_before = _dapo_surrogate(tr, r, old_logits)
    stats = tr.optimize(r)
    with torch.no_grad():  # measured by hand after the update
        kl = _mean_token_kl(tr, r, old_logits).item()
        loss_after = _dapo_surrogate(tr, r, old_logits).item()
    assert stats["trust_region/rejected"] == 0.0 and stats["skipped_updates"] == 0
    assert stats["trust_region/step_kl"] == pytest.approx(kl, rel=1e-4)
    assert stats["loss"] == pytest.approx(loss_before.item(), rel=1e-5)
    assert stats["trust_region/surrogate_improvement"] == pytest.approx(loss_before.item() - loss_after, rel=1e-3)
    assert loss_after < loss_before.item()
    assert 1 <= stats["trust_region/cg_iterations"] <= tr.cfg.cg_iters and stats["trust_region/cg_residual"] < 1
    assert any(not torch.equal(p, before[n]) for n, p in zip(names, params))
    if optimizer == "trpo":  # here the full step overshoots (npg's KL is ~0.00226): the search halves it
        assert kl <= tr.cfg.max_kl and stats["trust_region/step_frac"] == 0.5
    else:  # the full step, sized by the quadratic model of the KL
        assert stats["trust_region/step_frac"] == 1.0 and kl == pytest.approx(tr.cfg.max_kl, rel=0.2)


def test_step_that_cannot_improve_is_rejected_and_leaves_the_parameters(tmp_path, monkeypatch):
    # advantages all 0: the surrogate is flat, g = 0, there is no direction to search
    tr = trpo_trainer(tmp_path / "flat")
    r = fixed_batch(tr, advantages=torch.zeros(16))
    names, params = _trainable(tr)
    before = [p.detach().clone() for p in params]
    stats = tr.optimize(r)
    assert stats["trust_region/rejected"] == 1.0 and stats["grad_norm"] == 0.0 and stats["skipped_updates"] == 0
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    # a rigged measurement (every candidate's KL above max_kl): each of the backtrack_iters candidates is refused
    tr = trpo_trainer(tmp_path / "rigged", backtrack_iters=3)
    r = fixed_batch(tr)
    names, params = _trainable(tr)
    before = [p.detach().clone() for p in params]
    calls = []
    honest = TR.surrogate_and_kl

    def rigged(*a):
        calls.append(1)
        loss, kl = honest(*a)
        return loss, kl + 1.0
    monkeypatch.setattr(TR, "surrogate_and_kl", rigged)
    stats = tr.optimize(r)
    assert stats["trust_region/rejected"] == 1.0 and stats["trust_region/step_frac"] == 0.0 and len(calls) == 3
    assert stats["trust_region/expected_improvement"] > 0
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(p.requires_grad and p.is_leaf for p in params)


def test_nonfinite_gradient_skips_the_update(tmp_path):
    tr = trpo_trainer(tmp_path)
    r = fixed_batch(tr, advantages=torch.full((16,), float("nan")))
    params = _trainable(tr)[1]
    before = [p.detach().clone() for p in params]
    stats = tr.optimize(r)
    assert stats["skipped_updates"] == 1 and stats["trust_region/rejected"] == 1.0
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_kl_to_the_reference_in_the_reward_is_reported_for_the_controller(tmp_path):
    tr = trpo_trainer(tmp_path, beta=0.05, kl_in="reward", cg_iters=2)
    r = fixed_batch(tr)
    r.ref_logp = torch.randn(r.completion_ids.shape, generator=torch.Generator().manual_seed(3)) - 4
    logp = TR._policy_gradient(tr, r, _trainable(tr)[1], tr._loss_normalizers(r))[2][0]
    stats = tr.optimize(r)
    m = r.completion_mask.float()
    assert stats["kl"] == pytest.approx(((logp - r.ref_logp) * m).sum().item() / m.sum().item(), rel=1e-5)


@pytest.mark.parametrize("engine", ["fsdp2", "deepspeed-zero2", "deepspeed-zero3"])
def test_sharding_engines_are_refused_when_the_trainer_is_built(tmp_path, monkeypatch, engine):
    from llmrl.llm import engines
    tr = trpo_trainer(tmp_path)
    monkeypatch.setattr(engines, "name", lambda acc: engine)
    with pytest.raises(ValueError, match=f"optimizer=trpo needs whole parameters.*but {engine} partitions them"):
        engines.check(tr.acc, tr.cfg)


@pytest.mark.parametrize("kw, words", [
    (dict(optimizer="sgd"), "optimizer must be one of"),
    (dict(optimizer="trpo", num_iterations=2), "num_iterations=1"),
    (dict(optimizer="npg", beta=0.04), "kl_in=reward"),
    (dict(optimizer="trpo", ratio_level="sequence"), "ratio_level=token"),
    (dict(optimizer="trpo", lora_dropout=0.05), "lora_dropout=0"),
    (dict(max_kl=0), "max_kl must be > 0"),
    (dict(cg_iters=0), "cg_iters must be >= 1"),
    (dict(backtrack_coef=1.0), "backtrack_coef must be in (0, 1)"),
    (dict(accept_ratio=1.0), "accept_ratio must be in [0, 1)"),
])
def test_trust_region_settings_are_checked(kw, words):
    with pytest.raises(ValueError) as e:
        GRPOConfig(**kw)
    assert words in str(e.value) and "\n" not in str(e.value)
    GRPOConfig(optimizer="trpo", beta=0.04, kl_in="reward")  # a KL to the reference in the rewards is fine


@pytest.mark.parametrize("kw, words", [
    (dict(optimizer="npg", learning_rate=1e-3, max_grad_norm=0.5),
     "optimizer=npg does not use learning_rate (0.001), max_grad_norm (0.5); drop them"),
    (dict(optimizer="trpo", lr_scheduler_type="cosine"), "optimizer=trpo does not use lr_scheduler ('cosine')"),
    (dict(optimizer="trpo", warmup_ratio=0.1), "does not use warmup_ratio (0.1)"),
    (dict(optimizer="trpo", warmup_steps=5, weight_decay=0.1, adam_beta1=0.8, adam_beta2=0.99),
     "does not use warmup_steps (5), weight_decay (0.1), adam_beta1 (0.8), adam_beta2 (0.99)"),
    (dict(optimizer="trpo", epsilon=0.3), "optimizer=trpo does not use clip_low (0.3)"),
    (dict(optimizer="npg", backtrack_iters=3), "optimizer=npg does not use backtrack_iters (3); drop it"),
    (dict(optimizer="trpo", advantage="gae", critic_learning_rate=1e-5, learning_rate=1e-3, clip_high=0.3),
     "optimizer=trpo does not use learning_rate (0.001), clip_high (0.3)"),
    (dict(max_kl=0.02, cg_iters=5), "optimizer=adamw does not use max_kl (0.02), cg_iters (5)"),
    (dict(cg_damping=0.2, backtrack_coef=0.8, accept_ratio=0.2),
     "optimizer=adamw does not use cg_damping (0.2), backtrack_coef (0.8), accept_ratio (0.2)"),
])
def test_a_setting_the_optimizer_does_not_use_is_refused(kw, words):
    with pytest.raises(ValueError) as e:
        GRPOConfig(**kw)
    assert words in str(e.value) and "\n" not in str(e.value)
    # the critic (advantage=gae) trains with AdamW under the policy's schedule and clipping, also under trpo
    GRPOConfig(optimizer="trpo", advantage="gae", learning_rate=1e-3, lr_scheduler="linear", max_grad_norm=0.5)
    GRPOConfig(optimizer="trpo", max_kl=0.02, cg_iters=5, backtrack_iters=3)
    GRPOConfig(optimizer="npg", max_kl=0.02, cg_damping=0.2)


def test_recipe_trains_with_optimizer_trpo(tmp_path):
    from tests.llm.tiny import save_tiny, tiny_dataset
    model_dir = save_tiny(tmp_path / "model")
    data = str(tmp_path / "data.jsonl")
    tiny_dataset(24).to_json(data)
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "tests", "llm", "run_tiny.py"), model_dir, data, "--output_dir",
           str(out), "--max_steps", "2", "--optimizer", "trpo", "--cg_iters", "3", "--lora_r", "2",
           "--max_new_tokens", "5", "--save_steps", "0", "--max_kl", "0.02"]
    res = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert [row["step"] for row in rows] == [1, 2] and all(math.isfinite(row["loss"]) for row in rows)
    assert json.load(open(out / "config.json"))["optimizer"] == "trpo"
    assert os.path.isfile(out / "final" / "adapter_model.safetensors")


def test_two_processes_equal_one(tmp_path):
    """DDP over gloo (torchrun): the gradient, every F v and the line search's loss and KL are reduced across
    processes, so 2 processes holding 2 prompts each take the step 1 process takes on all 4 (grpo normalizes per
    sequence, dapo by the token count of all processes)."""
    cases = ["trpo:dapo", "npg:grpo"]
    for n in (1, 2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port",
               str(27500 + (os.getpid() % 1000) + n), os.path.join(ROOT, "tests", "llm", "trpo_ddp_check.py"),
               str(tmp_path), *cases]
        res = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"),
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    for case in cases:
        name = case.replace(":", "_")
        one = torch.load(tmp_path / f"{name}_1_0.pt")
        r0, r1 = torch.load(tmp_path / f"{name}_2_0.pt"), torch.load(tmp_path / f"{name}_2_1.pt")
        assert one["stats"]["trust_region/rejected"] == 0.0, case
        assert r0["stats"] == r1["stats"], case
        for k, v in one["stats"].items():
            assert r0["stats"][k] == pytest.approx(v, rel=1e-4, abs=1e-7), (case, k)
        for k, w in one["weights"].items():
            assert torch.equal(r0["weights"][k], r1["weights"][k]), (case, k)
            torch.testing.assert_close(r0["weights"][k], w, atol=1e-6, rtol=1e-5, msg=f"{case} {k}")
