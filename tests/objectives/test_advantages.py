"""Group-relative advantages (GRPO, Dr. GRPO, RLOO) and whitening against explicit per-group computations."""
import math

import pytest
import torch

from llmrl.objectives import group_advantages, leave_one_out_advantages, whiten, zero_std_groups


def test_group_advantages_known_values():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=4)
    # mean 0.5, unbiased std sqrt(1/3): +-0.5 * sqrt(3) = +-0.866 (eps = 1e-4 shrinks it slightly)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, -1.0, 1.0]) * 0.5 / (math.sqrt(1 / 3) + 1e-4))
    assert abs(float(adv[0]) - 0.866) < 1e-3


def test_group_advantages_all_equal_group_is_zero_not_nan():
    adv = group_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.5]), group_size=3)
    assert torch.isfinite(adv).all()
    assert (adv[:3] == 0).all()
    # float32 mean of seven 0.3's misses 0.3 by an ulp; the advantage must still be exactly 0, for any scale/eps
    for scale in ("group", "batch", "none"):
        for eps in (1e-4, 0.0):
            adv = group_advantages(torch.full((14,), 0.3), group_size=7, scale=scale, eps=eps)
            assert (adv == 0).all(), (scale, eps, adv)
    assert (leave_one_out_advantages(torch.full((7,), 0.3), 7) == 0).all()


def _explicit(rewards, G, scale):
    out = []
    batch_std = torch.tensor(rewards).std()
    for i in range(0, len(rewards), G):
        grp = torch.tensor(rewards[i:i + G])
        c = grp - grp.mean()
        out.append(c / (grp.std() + 1e-4) if scale == "group" else c / (batch_std + 1e-4) if scale == "batch" else c)
    return torch.cat(out)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_scales_match_explicit(scale):
    rewards = torch.randn(12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(group_advantages(rewards, 4, scale=scale), _explicit(rewards.tolist(), 4, scale))


def test_group_advantages_bad_inputs():
    with pytest.raises(ValueError, match="group_size=5 must divide"):
        group_advantages(torch.zeros(12), 5)
    with pytest.raises(ValueError, match="scale must be one of"):
        group_advantages(torch.zeros(12), 4, scale="sequence")
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(3, 4), 4)
    with pytest.raises(ValueError, match="needs at least 2"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="must divide"):
        leave_one_out_advantages(torch.zeros(10), 4)
    with pytest.raises(ValueError, match="group_size >= 2"):
        leave_one_out_advantages(torch.zeros(4), 1)


def test_leave_one_out_advantages_match_explicit_means():
    r = torch.randn(15, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    G = 5
    expected = torch.tensor([float(r[i]) - float(torch.cat([r[(i // G) * G:i], r[i + 1:(i // G + 1) * G]]).mean())
                             for i in range(15)], dtype=torch.float64)
    torch.testing.assert_close(leave_one_out_advantages(r, G), expected)


def test_zero_std_groups():
    r = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.5])
    assert zero_std_groups(r, 2).tolist() == [True, True, False, True]
    assert zero_std_groups(r, 4).tolist() == [False, False]


def test_whiten_unmasked_and_masked():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 6, generator=g, dtype=torch.float64) * 4 + 7
    out = whiten(x, eps=0.0)
    torch.testing.assert_close(out.mean(), torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(out.var(unbiased=False), torch.tensor(1.0, dtype=torch.float64))
    mask = (torch.rand(3, 6, generator=g) < 0.6).double()
    mask[0, :2] = 1
    out = whiten(x, mask, eps=0.0)
    v = x[mask.bool()]
    torch.testing.assert_close(out[mask.bool()], (v - v.mean()) / v.std(unbiased=False))
    assert (out[~mask.bool()] == 0).all()
    # shift_mean=False keeps the original mean (TRL's whiten)
    out = whiten(x, mask, shift_mean=False, eps=0.0)
    torch.testing.assert_close(out[mask.bool()], (v - v.mean()) / v.std(unbiased=False) + v.mean())


def test_sequence_advantages_hand_values():
    from llmrl.objectives import sequence_advantages
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 0.0, 1.0])  # two groups of G = 4
    # Dr. GRPO: group means 0.5 and 1.25 removed
    torch.testing.assert_close(sequence_advantages(r, 4, "dr_grpo"),
                               torch.tensor([0.5, -0.5, -0.5, 0.5, 0.75, 0.75, -1.25, -0.25]))
    # RLOO: r_i minus the mean of the 3 others, e.g. 1 - (0 + 0 + 1)/3 = 2/3, 0 - (2 + 2 + 1)/3 = -5/3
    torch.testing.assert_close(sequence_advantages(r, 4, "rloo"),
                               torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 1.0, 1.0, -5 / 3, -1 / 3]))
    # REINFORCE: the batch mean 7/8 removed
    torch.testing.assert_close(sequence_advantages(r, 4, "reinforce"), r - 0.875)
    # GRPO: group std sqrt(1/3) and sqrt(11/12) (unbiased), eps 1e-4
    s1, s2 = math.sqrt(1 / 3) + 1e-4, math.sqrt(11 / 12) + 1e-4
    torch.testing.assert_close(sequence_advantages(r, 4, "grpo"),
                               torch.tensor([0.5 / s1, -0.5 / s1, -0.5 / s1, 0.5 / s1,
                                             0.75 / s2, 0.75 / s2, -1.25 / s2, -0.25 / s2]))
    with pytest.raises(ValueError, match="advantage estimator must be one of"):
        sequence_advantages(r, 4, "ppo")
