"""--gradient_checkpointing: the same update as without it. transformers' checkpointing drops the KV cache in
training mode with gradients on, so the shared-prefix log-probs silently attended to no prompt (max |d logp| 0.34
on the tiny model): gradient passes must run each prompt + completion whole."""
import torch

from llmrl import objectives as O
from llmrl.llm.model import unwrap_peft
from llmrl.llm.trainer import RolloutBatch
from tests.llm.tiny import tiny_trainer


def _batch(tr, G=4, C=7):
    ids, mask = tr._tokenize_prompts(["What is 1 + 2?", "hi", "7 - 3 = ?"])
    g = torch.Generator().manual_seed(0)
    n = len(ids) * G
    comp = torch.randint(4, len(tr.tok), (n, C), generator=g)
    cmask = (torch.arange(C)[None] < torch.randint(1, C + 1, (n, 1), generator=g)).long()
    rewards = torch.randint(0, 3, (n,), generator=g).float()
    return RolloutBatch(ids, mask, comp, cmask, torch.arange(len(ids)).repeat_interleave(G), rewards,
                        O.group_advantages(rewards, G))


def _trained(tmp_path, checkpointing: bool):
    tr = tiny_trainer(tmp_path / str(checkpointing), per_device_batch_size=12, micro_batch_size=5, num_iterations=2,
                      gradient_checkpointing=checkpointing, shared_prefix=True)
    layers = unwrap_peft(tr.model).model.layers
    assert all(layer.gradient_checkpointing for layer in layers) == checkpointing
    batch = _batch(tr)
    with torch.no_grad():  # a no-grad pass (reference, old log-probs) keeps the shared prefix, in train mode too
        logp = torch.cat([tr._logp_of(tr.policy, batch, sl)[0] for sl in tr._micro_batches(len(batch))])
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters() if p.requires_grad}
    tr.optimize(batch)
    after = {n: p.detach().clone() for n, p in tr.model.named_parameters() if p.requires_grad}
    assert max((after[k] - before[k]).abs().max() for k in after) > 1e-3  # the update moved the weights
    return after, logp * batch.completion_mask


def test_gradient_checkpointing_gives_the_same_update(tmp_path):
    plain, logp_plain = _trained(tmp_path, False)
    ckpt, logp_ckpt = _trained(tmp_path, True)
    torch.testing.assert_close(logp_ckpt, logp_plain, atol=1e-6, rtol=1e-5)
    assert any("lora_B" in k for k in plain)
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], atol=1e-6, rtol=1e-5, msg=k)


def test_shared_prefix_under_checkpointing_needs_the_plain_gradient_pass(tmp_path):
    """What the trainer avoids: the shared-prefix path through a checkpointed model with gradients on is wrong."""
    from llmrl.llm.logprobs import completion_logprobs

    tr = tiny_trainer(tmp_path, per_device_batch_size=12, gradient_checkpointing=True)
    batch = _batch(tr)
    tr.model.train()
    args = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask, batch.group_index)
    wrong = completion_logprobs(tr.model, *args)[0]
    right = tr.policy(*args)[0]  # the prepared module: naive under checkpointing
    with torch.no_grad():
        exact = completion_logprobs(tr.model, *args)[0]
    m = batch.completion_mask.bool()
    torch.testing.assert_close(right[m], exact[m], atol=1e-6, rtol=1e-5)
    assert (wrong[m] - exact[m]).abs().max() > 1e-3
