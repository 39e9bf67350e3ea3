"""The entropy bonus (c2 = entropy_coef): the chunked log-prob path's entropy has the gradient autograd gives through
the full logits, and the trainer's update with the bonus is the gradient of the objectives' loss computed from the
model's own logits."""
import pytest
import torch

from llmrl import objectives as O
from llmrl.llm.logprobs import LogitsHead, chunked_token_logprobs
from tests.llm.tiny import own_logits, tiny_trainer


@pytest.mark.parametrize("bias, scale, softcap", [(False, 1.0, None), (True, 0.25, None), (True, 3.0, 1.5)])
@pytest.mark.parametrize("uses", ["entropy", "both"])
def test_chunked_entropy_gradient_against_autograd(bias, scale, softcap, uses):
    """Gradients (hidden, weight, bias) of w1 . log pi + w2 . H through the hand-written backward, against autograd
    through softcap(scale * (W h + b)) / T written out in full, with the entropy alone or beside the log-probs."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 16, generator=g, requires_grad=True)
    W = torch.randn(50, 16, generator=g, requires_grad=True)
    b = torch.randn(50, generator=g, requires_grad=True) if bias else None
    y = torch.randint(0, 50, (3, 5), generator=g)
    lp, ent = chunked_token_logprobs(h, LogitsHead(W, b, scale, softcap), y, temperature=0.8, chunk=4)
    z = scale * (h @ W.T + (b if bias else 0))
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    z = z / 0.8
    ref = torch.log_softmax(z, -1).gather(-1, y[..., None])[..., 0]
    ref_ent = O.entropy(z)
    w1, w2 = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    inputs = (h, W) + ((b,) if bias else ())
    f = (lambda a, e: (e * w2).sum()) if uses == "entropy" else (lambda a, e: (a * w1 + e * w2).sum())
    ours, want = torch.autograd.grad(f(lp, ent), inputs), torch.autograd.grad(f(ref, ref_ent), inputs)
    for a, r in zip(ours, want):
        assert r.abs().max() > 1e-2
        torch.testing.assert_close(a, r, atol=2e-5, rtol=1e-4)


def _grads_at_step(tr):
    grads = []
    inner = tr.opt.step

    def step(*a, **k):
        grads.append(torch.cat([p.grad.flatten().clone() for p in tr.model.parameters() if p.requires_grad]))
        return inner(*a, **k)
    tr.opt.step = step
    return grads


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_trainer_gradient_with_the_entropy_bonus_equals_autograd_on_the_models_own_logits(tmp_path, loss_type):
    tr = tiny_trainer(tmp_path, entropy_coef=0.3, loss_type=loss_type, max_grad_norm=0, micro_batch_size=3,
                      beta=0.1)
    r = tr.rollout([tr.train_dataset[i] for i in tr.sampler.next()])
    model = tr.model
    model.zero_grad()
    z = own_logits(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.group_index) / tr.cfg.temperature
    logp = torch.log_softmax(z, -1).gather(-1, r.completion_ids[..., None])[..., 0]
    mode = O.LOSS_TYPES[loss_type].mode
    by_hand = {}
    for coef in (0.3, 0.0):
        loss, _ = O.grpo_loss(logp, logp.detach(), r.ref_logp, r.advantages, r.completion_mask, 0.1, mode=mode,
                              max_len=tr.cfg.max_new_tokens, entropy=O.entropy(z), entropy_coef=coef)
        by_hand[coef] = torch.cat([x.flatten() for x in torch.autograd.grad(
            loss, [p for p in model.parameters() if p.requires_grad], retain_graph=True)])
    assert (by_hand[0.3] - by_hand[0.0]).abs().max() > 1e-3  # the bonus changes the gradient
    grads = _grads_at_step(tr)
    tr.optimize(r)
    torch.testing.assert_close(grads[0], by_hand[0.3], atol=2e-5, rtol=1e-3)
