"""Bradley-Terry loss and pairwise accuracy against hand values (math.log / math.exp, float64) and hand-derived
gradients; the margin and the reductions; stability where log(sigmoid(x)) overflows."""
import math

import pytest
import torch

from llmrl.objectives import bradley_terry_loss, pairwise_accuracy

F64 = torch.float64


def _bt(rc, rr, m=0.0):
    """-log(1 / (1 + exp(-(rc - rr - m)))) = log(1 + exp(-(rc - rr - m))), written out."""
    return math.log(1.0 + math.exp(-(rc - rr - m)))


def test_values_match_hand_computation():
    rc, rr = [2.0, 0.0, -1.0, 0.5], [1.0, 0.0, 1.0, 3.0]
    c, r = torch.tensor(rc, dtype=F64), torch.tensor(rr, dtype=F64)
    per_pair = [_bt(a, b) for a, b in zip(rc, rr)]
    assert per_pair[1] == pytest.approx(math.log(2))  # equal rewards: P = 1/2
    torch.testing.assert_close(bradley_terry_loss(c, r, mode="none"), torch.tensor(per_pair, dtype=F64))
    torch.testing.assert_close(bradley_terry_loss(c, r), torch.tensor(sum(per_pair) / 4, dtype=F64))
    torch.testing.assert_close(bradley_terry_loss(c, r, mode="sum"), torch.tensor(sum(per_pair), dtype=F64))


@pytest.mark.parametrize("margin", [0.7, [0.0, 1.0, 2.5]])
def test_margin_shifts_the_difference(margin):
    rc, rr = [2.0, 0.3, -1.0], [1.0, 0.0, 1.0]
    ms = margin if isinstance(margin, list) else [margin] * 3
    m = torch.tensor(margin, dtype=F64) if isinstance(margin, list) else margin
    got = bradley_terry_loss(torch.tensor(rc, dtype=F64), torch.tensor(rr, dtype=F64), margin=m, mode="none")
    torch.testing.assert_close(got, torch.tensor([_bt(a, b, k) for a, b, k in zip(rc, rr, ms)], dtype=F64))


def test_gradients_match_hand_derivation():
    """d/d r_c of log(1 + exp(-(d - m))) = -1 / (1 + exp(d - m)) = -sigmoid(-(d - m)); d/d r_r is its negative."""
    rc, rr, m = [2.0, 0.0, -1.0], [1.0, 0.5, 1.0], [0.5, 0.0, 1.0]
    c = torch.tensor(rc, dtype=F64, requires_grad=True)
    r = torch.tensor(rr, dtype=F64, requires_grad=True)
    bradley_terry_loss(c, r, torch.tensor(m, dtype=F64)).backward()
    hand = [-1.0 / (1.0 + math.exp(a - b - k)) / 3 for a, b, k in zip(rc, rr, m)]  # "mean" divides by B = 3
    torch.testing.assert_close(c.grad, torch.tensor(hand, dtype=F64))
    torch.testing.assert_close(r.grad, -torch.tensor(hand, dtype=F64))


def test_stable_where_log_of_sigmoid_is_not():
    """A badly wrong pair (r_c - r_r = -200) costs 200 with gradient -1; log(sigmoid(-200)) in float32 is -inf."""
    c = torch.tensor([-100.0], requires_grad=True)
    r = torch.tensor([100.0])
    assert torch.isinf(torch.log(torch.sigmoid(c - r))).all()
    loss = bradley_terry_loss(c, r)
    loss.backward()
    assert loss.item() == pytest.approx(200.0)
    assert c.grad.item() == pytest.approx(-1.0)


def test_pairwise_accuracy_counts_ties_as_half():
    c = torch.tensor([1.0, 2.0, 0.0, 5.0])
    r = torch.tensor([0.0, 3.0, 0.0, 4.0])
    assert pairwise_accuracy(c, r).item() == pytest.approx((1 + 0 + 0.5 + 1) / 4)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="mode must be one of"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(3), mode="token_mean")
    with pytest.raises(ValueError, match="same shape"):
        pairwise_accuracy(torch.zeros(3), torch.zeros(2))
