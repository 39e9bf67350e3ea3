"""The entropy bonus (c2 = entropy_coef): the trainer's update with the bonus is the gradient of the objectives' loss
computed by autograd from the model's own logits (the chunked path's entropy backward itself is checked against
autograd in test_logprobs.py)."""
import pytest
import torch

from llmrl import objectives as O
from tests.llm.test_trainer import _capture_grads
from tests.llm.tiny import own_logits, tiny_trainer


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
    grads = _capture_grads(tr)
    tr.optimize(r)
    torch.testing.assert_close(grads[0], by_hand[0.3], atol=2e-5, rtol=1e-3)
