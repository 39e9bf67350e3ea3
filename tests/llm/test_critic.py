"""PPO with a value model (advantage=gae) and REINFORCE++ in the trainer, on tiny models: the critic's V(s_t) is the
scalar head's score of the prefix prompt + y_<t; advantages and returns equal hand loops over the trainer's own
rewards, KL and values; the policy and the critic each get exactly the gradient of their own loss; the value loss
is clipped as written; a reward model drives PPO through the public API; resume equals an uninterrupted run; the
settings that contradict each other are refused in one line."""
import json
import os

import pytest
import torch

from llmrl import objectives as O
from llmrl.llm.config import GRPOConfig
from llmrl.llm.critic import Critic, completion_values
from llmrl.llm.logprobs import completion_logprobs_naive
from llmrl.llm.reward_model import score_parts
from llmrl.llm.trainer import TIMING_METRICS
from tests.llm.test_reward_model import own_score
from tests.llm.tiny import dies_after, tiny_dataset, tiny_model, tiny_reward_model, tiny_trainer
from tests.objectives.test_token_advantages import _gae_by_hand, _whiten_by_hand


def _rollout(tr):
    return tr.rollout([tr.train_dataset[i] for i in tr.sampler.next()])


def _randomize_critic_adapter(tr, seed=5):
    """A critic adapter that changes the values (peft initializes lora_B at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in tr.critic.model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _prompt_tokens(r, i):
    gi = int(r.group_index[i])
    return r.prompt_ids[gi][r.prompt_mask[gi].bool()].tolist()


def _lengths(r):
    return r.completion_mask.sum(-1).tolist()


# ---------------------------------------------------------------------------------------------- the critic
def test_values_are_the_scalar_heads_score_of_each_prefix(tmp_path):
    """V(s_t) = the critic model's own score of the unpadded sequence prompt + y_<t (transformers' forward on one
    sequence), for the first, a middle and the last token of every completion."""
    tr = tiny_trainer(tmp_path, advantage="gae", micro_batch_size=3)
    _randomize_critic_adapter(tr)
    r = _rollout(tr)
    values = tr.critic.values(r)
    assert values.shape == r.completion_ids.shape and values.std() > 1e-3
    for i, L in enumerate(_lengths(r)):
        for t in sorted({0, L // 2, L - 1}):
            seq = _prompt_tokens(r, i) + r.completion_ids[i, :t].tolist()
            assert values[i, t].item() == pytest.approx(own_score(tr.critic.model, seq), abs=1e-5)


def test_critic_from_the_policy_is_a_copy_of_the_policy_as_it_starts(tmp_path):
    """Default critic: the policy's backbone with its trained adapter folded in (and not the reference adapter the
    trainer adds beside it), its own fresh LoRA adapter and a new head; only the critic's adapter and head train."""
    tr = tiny_trainer(tmp_path, advantage="gae", beta=0.1)
    assert tr.reference.adapter_copy  # the policy holds a second adapter that must not leak into the critic
    ids = torch.tensor([[5, 9, 17, 30, 41, 8]])
    with torch.no_grad():
        want = tr.model.get_base_model().get_decoder()(input_ids=ids).last_hidden_state
        got = score_parts(tr.critic.model)[0](input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    trainable = [n for n, p in tr.critic.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "score" in n for n in trainable)
    assert any("score" in n for n in trainable)
    policy_params = {id(p) for p in tr.model.parameters()}
    assert not policy_params & {id(p) for p in tr.critic.model.parameters()}


@pytest.mark.parametrize("estimator", ["gae", "reinforce_plus_plus", "reinforce_plus_plus_baseline"])
def test_token_advantages_in_the_trainer_equal_hand_loops(tmp_path, estimator):
    """The rollout's advantages (and the critic's returns) from the trainer's own pieces by hand: scores, k1 KL of
    the policy against the reference, the critic's values; rewards placed on the last token, returns and GAE by
    loops, whitening over every completion token."""
    gamma, lam, beta, G = 0.9, 0.8, 0.2, 4
    tr = tiny_trainer(tmp_path, advantage=estimator, beta=beta, gamma=gamma, lam=lam)
    if tr.critic is not None:
        _randomize_critic_adapter(tr)
    # a policy away from its reference, so that the KL term is not zero
    with torch.no_grad():
        for n, p in tr.model.named_parameters():
            if ".reference." in n and "lora_B" in n:
                p.mul_(-1.0)
    r = _rollout(tr)
    with torch.no_grad():
        logp, _ = completion_logprobs_naive(tr.model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                            r.completion_mask, r.group_index)
    kl = (logp - r.ref_logp).double()
    scores = r.info["raw_rewards"].double().tolist()
    if estimator == "reinforce_plus_plus_baseline":
        scores = [s - sum(scores[i // G * G:i // G * G + G]) / G for i, s in enumerate(scores)]
    lengths, (N, C) = _lengths(r), r.completion_ids.shape
    rewards = torch.zeros(N, C, dtype=torch.float64)
    for i, L in enumerate(lengths):
        for t in range(L):
            rewards[i, t] = -beta * kl[i, t] + (scores[i] if t == L - 1 else 0.0)
    assert abs(float(kl[r.completion_mask.bool()].abs().max())) > 1e-3
    if estimator == "gae":
        values = tr.critic.values(r).double()
        torch.testing.assert_close(r.values.double(), values)
        raw = _gae_by_hand(rewards, values, lengths, gamma, lam)
        torch.testing.assert_close(r.returns.double(), (raw + values) * r.completion_mask, atol=1e-4, rtol=1e-4)
    else:
        assert r.returns is None and r.values is None
        raw = torch.zeros(N, C, dtype=torch.float64)
        for i, L in enumerate(lengths):
            for t in range(L):
                raw[i, t] = sum(gamma ** (k - t) * rewards[i, k] for k in range(t, L))
    torch.testing.assert_close(r.advantages.double(), _whiten_by_hand(raw, r.completion_mask), atol=1e-4, rtol=1e-4)
    # the logged sequence reward is the score minus beta * the summed KL (kl_shaped_rewards)
    torch.testing.assert_close(r.rewards.double(), r.info["raw_rewards"].double() - beta * kl.mul(r.completion_mask)
                               .sum(-1), atol=1e-4, rtol=1e-4)


def _grab(tr_opt, watch: dict):
    """Record, at each step of optimizer `tr_opt`, the gradient of every watched parameter set (None: no grad)."""
    seen = []
    inner = tr_opt.step

    def step(*a, **k):
        seen.append({name: [None if p.grad is None else p.grad.clone() for p in ps] for name, ps in watch.items()})
        return inner(*a, **k)
    tr_opt.step = step
    return seen


def test_policy_and_critic_each_receive_only_their_own_gradient(tmp_path):
    """At the policy's optimizer step the critic holds no gradient and the policy's is that of the clipped
    surrogate on the rollout's advantages; at the critic's step the policy holds none and the critic's is that of
    vf_coef * value_loss on the returns (both by hand, on the whole batch at once)."""
    tr = tiny_trainer(tmp_path, advantage="gae", beta=0.1, max_grad_norm=0, micro_batch_size=3, vf_coef=0.5)
    _randomize_critic_adapter(tr)
    r = _rollout(tr)
    policy = [p for p in tr.model.parameters() if p.requires_grad]
    critic = [p for p in tr.critic.model.parameters() if p.requires_grad]
    lp, _ = completion_logprobs_naive(tr.model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                      r.group_index)
    loss, _ = O.grpo_loss(lp, lp.detach(), r.ref_logp, r.advantages, r.completion_mask, 0.0, mode="token_mean")
    want_policy = torch.autograd.grad(loss, policy)
    v = completion_values(tr.critic.model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                          r.group_index)
    vloss = 0.5 * O.value_loss(v, r.returns, r.values, tr.cfg.cliprange_value, r.completion_mask)
    want_critic = torch.autograd.grad(vloss, critic)
    at_policy = _grab(tr.opt, {"policy": policy, "critic": critic})
    at_critic = _grab(tr.critic.opt, {"policy": policy, "critic": critic})
    stats = tr.optimize(r)
    assert len(at_policy) == len(at_critic) == 1 and stats["critic/skipped_updates"] == 0
    assert all(g is None for g in at_policy[0]["critic"]) and all(g is None for g in at_critic[0]["policy"])
    for got, want in ((at_policy[0]["policy"], want_policy), (at_critic[0]["critic"], want_critic)):
        assert max(w.abs().max() for w in want) > 1e-4
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_value_loss_is_clipped_around_the_values_at_sampling(tmp_path):
    """critic/value_loss against the PPO2 formula written out token by token, with old values set so that some
    tokens take the clipped branch and some the plain one."""
    c = 0.2
    tr = tiny_trainer(tmp_path, advantage="gae", cliprange_value=c)
    r = _rollout(tr)
    v = tr.critic.values(r)
    g = torch.Generator().manual_seed(3)
    r.values = v + torch.randn(v.shape, generator=g) * 0.5   # V_old: some within c of V, some beyond
    r.returns = torch.randn(v.shape, generator=g)
    total, n, clipped = 0.0, 0, 0
    for i, L in enumerate(_lengths(r)):
        for t in range(L):
            vv, vo, R = v[i, t].item(), r.values[i, t].item(), r.returns[i, t].item()
            v_clip = min(max(vv, vo - c), vo + c)
            total += 0.5 * max((vv - R) ** 2, (v_clip - R) ** 2)
            clipped += (v_clip - R) ** 2 > (vv - R) ** 2
            n += 1
    assert 0 < clipped < n
    stats = tr.critic.update(r)
    assert stats["critic/value_loss"] == pytest.approx(total / n, rel=1e-5)


def test_trpo_with_a_critic_updates_both(tmp_path):
    tr = tiny_trainer(tmp_path, advantage="gae", optimizer="trpo", beta=0.1)
    before = [p.detach().clone() for p in tr.critic.model.parameters() if p.requires_grad]
    policy = [p.detach().clone() for p in tr.model.parameters() if p.requires_grad]
    metrics, _ = tr.step()
    assert "critic/value_loss" in metrics and "trust_region/step_kl" in metrics
    assert any(not torch.equal(a, p) for a, p in zip(before, [p for p in tr.critic.model.parameters()
                                                              if p.requires_grad]))
    assert any(not torch.equal(a, p) for a, p in zip(policy, [p for p in tr.model.parameters() if p.requires_grad]))


# ---------------------------------------------------------------------------------------------- public API
def test_ppo_with_a_reward_model_and_a_critic_started_from_it(tmp_path):
    """GRPOConfig(reward_model=RM, advantage='gae', critic_model=RM): the rewards are the reward model's scores;
    the critic starts as the reward model (its head included), so V(s_0) is its score of the prompt alone; with
    beta = 0, gamma = lam = 1 the advantage is the whitened score - V(s_t)."""
    from llmrl.llm.reward_model import RewardModelScorer
    from llmrl.llm.trainer import GRPOTrainer
    rm, rtok = tiny_reward_model(seed=3)
    rm.save_pretrained(tmp_path / "rm")
    rtok.save_pretrained(tmp_path / "rm")
    policy, tok = tiny_model()
    tr = GRPOTrainer(GRPOConfig(output_dir=str(tmp_path / "run"), reward_model=str(tmp_path / "rm"), advantage="gae",
                                critic_model=str(tmp_path / "rm"), lam=1.0, per_device_batch_size=8,
                                num_generations=4, max_new_tokens=6, report_to="none", dtype="float32"),
                     model=policy, tokenizer=tok, train_dataset=tiny_dataset())
    metrics, r = tr.step()
    prompts = [r.info["prompts"][i // 4] for i in range(len(r))]
    scores = torch.tensor(RewardModelScorer(str(tmp_path / "rm"))([None] * len(r), r.info["texts"],
                                                                   model_prompts=prompts))
    assert scores.std() > 0
    torch.testing.assert_close(r.rewards, scores, atol=1e-5, rtol=1e-5)
    for i in range(len(r)):
        assert r.values[i, 0].item() == pytest.approx(own_score(rm, _prompt_tokens(r, i)), abs=1e-4)
    raw = (scores[:, None] - r.values) * r.completion_mask
    torch.testing.assert_close(r.advantages.double(), _whiten_by_hand(raw.double(), r.completion_mask),
                               atol=1e-4, rtol=1e-4)
    assert metrics["rewards/reward_model"] == pytest.approx(scores.mean().item(), abs=1e-5)


def test_resume_with_a_critic_equals_an_uninterrupted_run(tmp_path):
    """Killed after step 3's update (checkpoint at 2), resumed from 'latest': the policy, the critic (adapter,
    head, optimizer, schedule) and the metrics come out as in a run that never stopped."""
    def trainer(out, **kw):
        return tiny_trainer(out, advantage="gae", beta=0.1, max_steps=4, save_steps=2, num_iterations=2,
                            micro_batch_size=3, critic_learning_rate=3e-2, lr_scheduler="linear", **kw)

    a = trainer(tmp_path / "a")
    a.train()
    b = trainer(tmp_path / "b")
    dies_after(b, 3)
    with pytest.raises(KeyboardInterrupt):
        b.train()
    b = trainer(tmp_path / "b", resume="latest", overwrite_output_dir=False)
    b.train()
    for model_a, model_b in ((a.model, b.model), (a.critic.model, b.critic.model)):
        wa = {k: v for k, v in model_a.named_parameters() if v.requires_grad}
        wb = {k: v for k, v in model_b.named_parameters() if v.requires_grad}
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    def metrics(run):
        return [{k: v for k, v in json.loads(x).items() if k not in TIMING_METRICS}
                for x in open(tmp_path / run / "metrics.jsonl")]
    assert metrics("a") == metrics("b") and [m["step"] for m in metrics("a")] == [1, 2, 3, 4]
    assert {"critic/value_loss", "critic/values_mean", "critic/grad_norm"} <= set(metrics("a")[0])
    rows = [json.loads(x) for x in open(tmp_path / "a" / "completions.jsonl")]
    assert len(rows) == 4 * 8 and all(isinstance(row["advantage"], float) for row in rows)
    # a checkpoint with a critic does not load into a run without one (and the other way round)
    from llmrl.llm import checkpoint as ckpt
    plain = tiny_trainer(tmp_path / "c", beta=0.1)
    with pytest.raises(ValueError, match="written with a critic"):
        ckpt.load_checkpoint(plain, ckpt.find_checkpoint(str(tmp_path / "a"), "latest"))


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("kw, words", [
    (dict(advantage="gae", kl_in="loss"), "kl_in=loss contradicts it"),
    (dict(advantage="reinforce_plus_plus", kl_in="loss", beta=0.1), "kl_in=loss contradicts it"),
    (dict(critic_model="some/rm"), "critic_model is set but advantage=grpo trains no critic"),
    (dict(critic_learning_rate=1e-5, advantage="rloo"), "critic_learning_rate is set but advantage=rloo"),
    (dict(optimizer="trpo", entropy_coef=0.01), "entropy bonus needs optimizer=adamw"),
    (dict(advantage="reinforce_plus_plus_baseline", num_generations=1, per_device_batch_size=4),
     "num_generations must be >= 2"),
    (dict(advantage="gae", gamma=1.5), "gamma must be in [0, 1]"),
    (dict(advantage="gae", vf_coef=0.0), "vf_coef must be > 0"),
    (dict(entropy_coef=-0.1), "entropy_coef must be >= 0"),
])
def test_contradictory_settings_are_refused_in_one_line(kw, words):
    with pytest.raises(ValueError) as e:
        GRPOConfig(**kw)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_token_estimators_put_the_kl_in_the_reward_and_need_no_groups():
    cfg = GRPOConfig(advantage="gae", num_generations=1, per_device_batch_size=4)
    assert cfg.kl_in == "reward" and cfg.kl_estimator == "k1" and cfg.critic_learning_rate == cfg.learning_rate
    assert GRPOConfig(advantage="reinforce_plus_plus", num_generations=1, per_device_batch_size=4).kl_in == "reward"
    assert GRPOConfig().kl_in == "loss"


@pytest.mark.parametrize("engine", ["fsdp2", "deepspeed-zero2"])
def test_critic_refuses_a_partitioning_engine_when_the_trainer_is_built(tmp_path, monkeypatch, engine):
    from llmrl.llm import engines
    tr = tiny_trainer(tmp_path)
    monkeypatch.setattr(engines, "name", lambda acc: engine)
    with pytest.raises(ValueError, match=f"advantage=gae: the critic .* which {engine}"):
        engines.check(tr.acc, GRPOConfig(advantage="gae"))


def test_critic_model_with_another_tokenizer_is_refused(tmp_path):
    rm, rtok = tiny_reward_model()
    rtok.add_tokens(["<extra>"])
    rm.save_pretrained(tmp_path / "rm")
    rtok.save_pretrained(tmp_path / "rm")
    with pytest.raises(ValueError, match="has another tokenizer than the policy"):
        tiny_trainer(tmp_path / "run", advantage="gae", critic_model=str(tmp_path / "rm"))
    assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")
