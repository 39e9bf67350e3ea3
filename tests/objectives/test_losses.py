"""Losses and aggregation against their written formulas (explicit loops), and their gradients against hand-derived
ones: REINFORCE, PPO-clip (clip-higher, sequence-level ratio), KL-penalized PPO, GRPO, entropy, Huber."""
import math

import pytest
import torch

from llmrl.objectives import (AGGREGATIONS, aggregate, token_means, entropy, grpo_loss, huber_loss, kl_k3, kl_penalized_loss,
                              log_ratio, policy_gradient_loss, ppo_clip_loss, ppo_clip_objective, surrogate_loss)

F64 = torch.float64


def _batch(B=5, T=7, seed=0):
    """Per-token log-probs of a new and an old policy (ratios in about [0.5, 1.6]), advantages, ragged mask."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=F64) * 3 - 0.1
    logp = old + (torch.rand(B, T, generator=g, dtype=F64) - 0.5) * 1.1
    A = torch.randn(B, T, generator=g, dtype=F64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T)[None] < lengths[:, None]).to(F64)
    return logp, old, A, mask


def _aggregate_by_hand(l, m, mode, max_len=None):
    B, T = l.shape
    if mode == "token_mean":
        return sum(l[i, t] * m[i, t] for i in range(B) for t in range(T)) / m.sum()
    if mode == "seq_mean_token_mean":
        return sum(sum(l[i, t] * m[i, t] for t in range(T)) / m[i].sum() for i in range(B)) / B
    if mode == "seq_mean_token_sum_norm":
        return sum(l[i, t] * m[i, t] for i in range(B) for t in range(T)) / (B * (max_len or T))
    return sum(l[i, t] * m[i, t] for i in range(B) for t in range(T))


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_aggregate_matches_documented_formula(mode):
    l, _, _, m = _batch()
    torch.testing.assert_close(aggregate(l, m, mode), _aggregate_by_hand(l, m, mode))
    if mode == "seq_mean_token_sum_norm":
        torch.testing.assert_close(aggregate(l, m, mode, max_len=20), _aggregate_by_hand(l, m, mode, 20))


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_aggregate_micro_batches_sum_to_whole_batch(mode):
    # Micro-batches padded to their own lengths; totals over the whole batch make the sum of their losses exact.
    l, _, _, m = _batch(B=6, T=9, seed=1)
    l = l.clone().requires_grad_()
    whole = aggregate(l, m, mode)
    (g_whole,) = torch.autograd.grad(whole, l)
    totals = dict(num_tokens=m.sum(), num_seqs=l.shape[0], max_len=l.shape[1])
    parts = []
    for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):
        T_mb = int(m[rows].sum(-1).max())  # trim the padding, as a collator would
        parts.append(aggregate(l[rows, :T_mb], m[rows, :T_mb], mode, **totals))
    total = sum(parts)
    torch.testing.assert_close(total, whole)
    torch.testing.assert_close(torch.autograd.grad(total, l)[0], g_whole)


def test_aggregate_bad_inputs():
    l, _, _, m = _batch()
    with pytest.raises(ValueError, match="aggregation mode must be one of"):
        aggregate(l, m, "mean")
    with pytest.raises(ValueError, match="same shape"):
        aggregate(l, m[:, :-1])


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_policy_gradient_loss_value_and_gradient(mode):
    logp, _, A, m = _batch(seed=2)
    logp.requires_grad_()
    A_param = A.clone().requires_grad_()
    loss = policy_gradient_loss(logp, A_param, m, mode)
    torch.testing.assert_close(loss, aggregate(-A * logp, m, mode))
    loss.backward()
    # d loss / d logp = -A times the aggregation weight of each token; nothing flows into the advantages
    ones = logp.detach().clone().requires_grad_()
    (w,) = torch.autograd.grad(aggregate(ones, m, mode), ones)
    torch.testing.assert_close(logp.grad, -A * w)
    assert A_param.grad is None
    # one advantage per sequence is broadcast over its tokens
    A_seq = A[:, 0]
    torch.testing.assert_close(policy_gradient_loss(logp, A_seq, m, mode),
                               policy_gradient_loss(logp, A_seq[:, None].expand_as(logp), m, mode))


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_surrogate_loss_value_and_gradient_at_old_policy(mode):
    logp, old, A, m = _batch(seed=12)
    torch.testing.assert_close(surrogate_loss(logp, old, A, m, mode), aggregate(-(logp - old).exp() * A, m, mode))
    # at pi = pi_old the importance-sampled surrogate has the REINFORCE gradient
    at_old = old.clone().requires_grad_()
    (g,) = torch.autograd.grad(surrogate_loss(at_old, old, A, m, mode), at_old)
    at_old2 = old.clone().requires_grad_()
    (g_pg,) = torch.autograd.grad(policy_gradient_loss(at_old2, A, m, mode), at_old2)
    torch.testing.assert_close(g, g_pg)
    # away from it, d(-rho A)/d log pi = -rho A times the aggregation weight
    lp = logp.clone().requires_grad_()
    (g,) = torch.autograd.grad(surrogate_loss(lp, old, A[:, 0], m, mode), lp)
    ones = logp.clone().requires_grad_()
    (w,) = torch.autograd.grad(aggregate(ones, m, mode), ones)
    torch.testing.assert_close(g, -(logp - old).exp() * A[:, :1] * w)


def test_ppo_clip_at_ratio_one_is_minus_mean_advantage():
    _, old, A, m = _batch(seed=3)
    loss, stats = ppo_clip_loss(old.clone(), old, A, m)
    torch.testing.assert_close(loss, -(A * m).sum() / m.sum())
    assert float(stats["clip_frac"]) == 0 and float(stats["approx_kl"]) == 0
    torch.testing.assert_close(stats["ratio_mean"], torch.tensor(1.0, dtype=F64))


@pytest.mark.parametrize("clip_low,clip_high", [(0.2, None), (0.2, 0.28), (0.1, 0.3)])
def test_ppo_clip_value_and_zero_gradient_exactly_where_clipped(clip_low, clip_high):
    logp, old, A, m = _batch(B=40, T=10, seed=4)
    eh = clip_low if clip_high is None else clip_high
    ratio = (logp - old).exp()
    assert ((ratio - (1 - clip_low)).abs() > 1e-6).all() and ((ratio - (1 + eh)).abs() > 1e-6).all()
    logp.requires_grad_()
    per_token, stats = ppo_clip_objective(logp, old, A, m, clip_low, clip_high)
    expected = -torch.minimum(ratio * A, ratio.clamp(1 - clip_low, 1 + eh) * A)
    torch.testing.assert_close(per_token, expected)
    (grad,) = torch.autograd.grad(per_token.sum(), logp)
    clipped = ((A > 0) & (ratio > 1 + eh)) | ((A < 0) & (ratio < 1 - clip_low))
    assert clipped.any() and (~clipped).any()
    assert (grad[clipped] == 0).all()
    torch.testing.assert_close(grad[~clipped], (-A * ratio)[~clipped])  # d(-rho A)/d log pi = -rho A
    assert torch.equal(stats["clipped_high"], (A > 0) & (ratio > 1 + eh))
    assert torch.equal(stats["clipped_low"], (A < 0) & (ratio < 1 - clip_low))
    # the aggregated stats
    loss, s = ppo_clip_loss(logp, old, A, m, clip_low, clip_high)
    n = m.sum()
    torch.testing.assert_close(s["clip_frac"], (clipped.to(F64) * m).sum() / n)
    torch.testing.assert_close(s["approx_kl"], (kl_k3(old, logp.detach()) * m).sum() / n)


def test_clip_high_widens_only_the_upper_side():
    logp, old, A, m = _batch(B=40, T=10, seed=5)
    ratio = (logp - old).exp()
    sym, _ = ppo_clip_objective(logp, old, A, m, 0.2)
    wide, _ = ppo_clip_objective(logp, old, A, m, 0.2, clip_high=0.28)
    upper = (ratio > 1.2) & (A > 0)
    assert upper.any() and ((ratio < 0.8) & (A < 0)).any()
    torch.testing.assert_close(wide[~upper], sym[~upper])  # the lower bound is untouched
    torch.testing.assert_close(wide[upper], -(ratio.clamp(max=1.28) * A)[upper])
    assert (wide[upper & (ratio > 1.2 + 1e-9)] < sym[upper & (ratio > 1.2 + 1e-9)]).all()


def test_sequence_level_ratio_is_exp_mean_token_log_ratio():
    logp, old, A, m = _batch(seed=6)
    lr = log_ratio(logp, old, m, level="sequence")
    for i in range(logp.shape[0]):
        n = int(m[i].sum())
        torch.testing.assert_close(lr[i], ((logp[i, :n] - old[i, :n]).mean()).expand(logp.shape[1]))
    _, stats = ppo_clip_objective(logp, old, A[:, 0], m, ratio_level="sequence")
    torch.testing.assert_close(stats["ratio"], lr.exp())
    torch.testing.assert_close(log_ratio(logp, old, m), logp - old)
    with pytest.raises(ValueError, match="ratio_level must be"):
        log_ratio(logp, old, m, level="seq")
    with pytest.raises(ValueError, match="clip_low and clip_high must be >= 0"):
        ppo_clip_objective(logp, old, A, m, clip_low=-0.1)


def test_kl_penalized_loss_gradient_at_ratio_one_is_policy_gradient():
    _, old, A, m = _batch(seed=7)
    for beta in (0.0, 0.7):  # k3's gradient vanishes at ratio 1, so beta does not matter there
        logp = old.clone().requires_grad_()
        loss, stats = kl_penalized_loss(logp, old, A, m, beta=beta)
        (g,) = torch.autograd.grad(loss, logp)
        logp2 = old.clone().requires_grad_()
        (g_pg,) = torch.autograd.grad(policy_gradient_loss(logp2, A, m), logp2)
        torch.testing.assert_close(g, g_pg)
        torch.testing.assert_close(loss, -(A * m).sum() / m.sum())
        assert float(stats["kl"]) == 0


def test_kl_penalized_loss_with_exact_and_estimated_kl():
    # Small categorical policies: actions sampled from pi_old, exact per-step KL(pi_old || pi) from the logits.
    g = torch.Generator().manual_seed(8)
    B, T, K = 4, 6, 5
    old_logits = torch.randn(B, T, K, generator=g, dtype=F64)
    logits = (old_logits + 0.3 * torch.randn(B, T, K, generator=g, dtype=F64)).requires_grad_()
    actions = torch.multinomial(old_logits.softmax(-1).view(-1, K), 1, generator=g).view(B, T, 1)
    old_lp_all, lp_all = old_logits.log_softmax(-1), logits.log_softmax(-1)
    old_logp, logp = old_lp_all.gather(-1, actions)[..., 0], lp_all.gather(-1, actions)[..., 0]
    A = torch.randn(B, T, generator=g, dtype=F64)
    m = torch.ones(B, T, dtype=F64)
    m[1, 4:] = 0
    beta = 0.5
    exact_kl = (old_lp_all.exp() * (old_lp_all - lp_all)).sum(-1)
    loss, stats = kl_penalized_loss(logp, old_logp, A, m, beta, kl=exact_kl)
    expected = ((-(logp - old_logp).exp() * A + beta * exact_kl) * m).sum() / m.sum()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(torch.autograd.grad(loss, logits, retain_graph=True)[0],
                               torch.autograd.grad(expected, logits, retain_graph=True)[0])
    torch.testing.assert_close(stats["kl"], (exact_kl * m).sum() / m.sum())
    # without `kl`, k3 of the sampled actions estimates KL(pi_old || pi)
    loss_k3, _ = kl_penalized_loss(logp, old_logp, A, m, beta)
    log_r = logp - old_logp
    k3 = log_r.exp() - 1 - log_r
    torch.testing.assert_close(loss_k3, ((-log_r.exp() * A + beta * k3) * m).sum() / m.sum())


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_grpo_loss_is_ppo_clip_plus_beta_k3(mode):
    logp, old, A, m = _batch(seed=9)
    logp.requires_grad_()
    ref = old + 0.2 * torch.randn(old.shape, generator=torch.Generator().manual_seed(10), dtype=F64)
    beta = 0.04
    loss, stats = grpo_loss(logp, old, ref, A[:, 0], m, beta, clip_high=0.28, mode=mode)
    ratio = (logp - old).exp()
    Ab = A[:, :1].expand_as(logp)
    k3 = (ref - logp).exp() - (ref - logp) - 1
    per_token = -torch.minimum(ratio * Ab, ratio.clamp(0.8, 1.28) * Ab) + beta * k3
    torch.testing.assert_close(loss, _aggregate_by_hand(per_token, m, mode))
    torch.testing.assert_close(stats["kl"], k3)  # per token, reduced with token_means
    torch.testing.assert_close(token_means(stats, m)["kl"], (k3 * m).sum() / m.sum())
    torch.testing.assert_close(token_means(stats, m)["ratio_mean"], (ratio * m).sum() / m.sum())
    # the default penalty's gradient is sg(ratio) (log pi - log pi_ref) grad log pi (tests/objectives/test_kl_gradient)
    def by_hand(penalty):
        r = (logp - old).exp()
        clip = -torch.minimum(r * Ab, r.clamp(0.8, 1.28) * Ab)
        return torch.autograd.grad(_aggregate_by_hand(clip + beta * penalty(r), m, mode), logp)[0]

    g = torch.autograd.grad(loss, logp)[0]
    torch.testing.assert_close(g, by_hand(lambda r: 0.5 * r.detach() * (logp - ref) ** 2))
    # TRL parity: differentiate k3 itself
    trl, _ = grpo_loss(logp, old, ref, A[:, 0], m, beta, clip_high=0.28, mode=mode, kl_gradient="estimator")
    torch.testing.assert_close(torch.autograd.grad(trl, logp)[0],
                               by_hand(lambda r: (ref - logp).exp() - (ref - logp) - 1))
    # beta = 0 ignores the reference entirely (none is needed)
    no_ref, s0 = grpo_loss(logp, old, None, A[:, 0], m, 0.0, clip_high=0.28, mode=mode)
    junk_ref, s_junk = grpo_loss(logp, old, torch.full_like(ref, math.nan), A[:, 0], m, 0.0, clip_high=0.28,
                                 mode=mode)
    clip_only, _ = ppo_clip_loss(logp, old, A[:, 0], m, clip_high=0.28, mode=mode)
    torch.testing.assert_close(no_ref, clip_only)
    torch.testing.assert_close(junk_ref, clip_only)  # a NaN reference would poison 0 * k3
    assert "kl" not in s0 and "kl" not in s_junk
    with pytest.raises(ValueError, match="kl estimator"):
        grpo_loss(logp, old, ref, A[:, 0], m, beta, kl_estimator="k5")


def test_entropy_matches_direct_formula_and_mask():
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(3, 4, 6, generator=g, dtype=F64) * 2
    p = logits.exp() / logits.exp().sum(-1, keepdim=True)
    direct = -(p * p.log()).sum(-1)
    torch.testing.assert_close(entropy(logits), direct, rtol=0, atol=1e-12)
    mask = (torch.rand(3, 4, generator=g) < 0.5).to(F64)
    torch.testing.assert_close(entropy(logits, mask), direct * mask, rtol=0, atol=1e-12)
    torch.testing.assert_close(entropy(torch.zeros(6)), torch.tensor(math.log(6)))  # uniform: log A
    # masked-out actions (-inf logits) count as probability 0, with finite gradients
    masked = torch.tensor([0.3, -0.2, -math.inf, 1.0], dtype=F64, requires_grad=True)
    h = entropy(masked)
    q = torch.tensor([0.3, -0.2, 1.0], dtype=F64).softmax(-1)
    torch.testing.assert_close(h, -(q * q.log()).sum())
    h.backward()
    assert torch.isfinite(masked.grad).all()
    assert entropy(torch.zeros(2, 3, dtype=torch.bfloat16)).dtype == torch.float32  # half precision is upcast


def test_huber_loss_values_and_gradient():
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.25, 1.0, 2.5], dtype=F64, requires_grad=True)
    delta = 1.0
    expected = torch.tensor([2.5, 0.5, 0.125, 0.0, 0.03125, 0.5, 2.0], dtype=F64)
    torch.testing.assert_close(huber_loss(x, delta), expected)
    huber_loss(x, delta).sum().backward()
    torch.testing.assert_close(x.grad, x.detach().clamp(-delta, delta))  # the gradient is the TD error clipped
    y = torch.linspace(-5, 5, 101, dtype=F64, requires_grad=True)
    huber_loss(y, 2.0).sum().backward()
    torch.testing.assert_close(y.grad, y.detach().clamp(-2.0, 2.0))
    # agrees with torch's own definition
    torch.testing.assert_close(huber_loss(y.detach(), 2.0),
                               torch.nn.functional.huber_loss(y.detach(), torch.zeros_like(y), reduction="none",
                                                              delta=2.0))


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_no_mask_is_an_all_ones_mask(mode):
    l, old, A, _ = _batch(B=4, T=6, seed=5)
    ones = torch.ones_like(l)
    torch.testing.assert_close(aggregate(l, None, mode), aggregate(l, ones, mode))
    totals = dict(num_tokens=torch.tensor(50.0, dtype=F64), num_seqs=9, max_len=11)
    torch.testing.assert_close(aggregate(l, None, mode, **totals), aggregate(l, ones, mode, **totals))
    for level in ("token", "sequence"):
        per_token, stats = ppo_clip_objective(l, old, A, None, 0.2, ratio_level=level)
        torch.testing.assert_close(per_token, ppo_clip_objective(l, old, A, ones, 0.2, ratio_level=level)[0])
    assert set(stats) == {"ratio", "clipped_low", "clipped_high"}
    for fn in (lambda m: ppo_clip_loss(l, old, A, m, mode=mode)[0], lambda m: policy_gradient_loss(l, A, m, mode),
               lambda m: kl_penalized_loss(l, old, A, m, 0.5, mode=mode)[0]):
        torch.testing.assert_close(fn(None), fn(ones))
