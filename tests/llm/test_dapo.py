"""DAPO's sampling controls (issue 17.3): soft overlong punishment, dynamic sampling, truncated-completion masking."""
import pytest
import torch

from llmrl import objectives as O
from tests.llm.tiny import tiny_trainer


def test_overlong_penalty_hand_values():
    # L_max = 10, L_cache = 4: free up to 6 tokens, then -1/4 per token, -1 at 10 and beyond
    lengths = torch.tensor([0, 6, 7, 8, 10, 12])
    torch.testing.assert_close(O.overlong_penalty(lengths, 10, 4),
                               torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))
    with pytest.raises(ValueError, match="overlong buffer"):
        O.overlong_penalty(lengths, 10, 11)


def _flat_on_some_prompts(prompts, completions, answer, **kw):
    """Constant reward for questions starting 'What is 0' (no learning signal), else a dense one."""
    return [1.0 if p.startswith("What is 0") else 0.01 * len(c) + c.count("1") for p, c in zip(prompts, completions)]


def test_dynamic_sampling_admits_no_zero_variance_group(tmp_path):
    tr = tiny_trainer(tmp_path, reward_funcs=[_flat_on_some_prompts], dynamic_sampling=True, max_new_tokens=8,
                      per_device_batch_size=16, num_generations=4)
    seen = 0
    for _ in range(3):
        pos = tr.sampler.pos
        rows = [tr.train_dataset[i] for i in tr.sampler.next()]
        flat = sum(r["question"].startswith("What is 0") for r in rows)
        batch = tr.rollout(rows)
        assert len(batch) == 16 and len(batch.prompt_ids) == 4
        assert not O.zero_std_groups(batch.rewards, 4).any()
        assert not any(p[-1]["content"].startswith("What is 0") for p in batch.info["prompts"])
        rounds = batch.info["dynamic_sampling_rounds"]
        assert tr.sampler.pos == pos + 4 * (1 + rounds)  # each extra round took the next prompts
        seen += flat
    assert seen > 0  # the test did have groups to drop


def test_dynamic_sampling_fills_up_after_its_last_round(tmp_path):
    def constant(prompts, completions, answer, **kw):
        return [1.0] * len(completions)
    tr = tiny_trainer(tmp_path, reward_funcs=[constant], dynamic_sampling=True, dynamic_sampling_max_rounds=2)
    metrics, batch = tr.step()
    assert len(batch) == 8 and batch.info["dynamic_sampling_rounds"] == 2
    assert metrics["dynamic_sampling/filled_groups"] == 2 and metrics["dynamic_sampling/dropped_groups"] == 6


def test_truncated_completions_are_masked_out_of_the_loss(tmp_path):
    tr = tiny_trainer(tmp_path, mask_truncated_completions=True, max_new_tokens=3)
    rows = [tr.train_dataset[i] for i in tr.sampler.next()]
    batch = tr.rollout(rows)
    truncated = batch.info["truncated"]
    assert truncated.any()
    assert (batch.loss_mask[truncated] == 0).all()
    assert torch.equal(batch.loss_mask[~truncated], batch.completion_mask[~truncated])


def test_overlong_penalty_enters_the_reward(tmp_path):
    tr = tiny_trainer(tmp_path, overlong_buffer=4, overlong_penalty_factor=0.5, max_new_tokens=8)
    batch = tr.rollout([tr.train_dataset[i] for i in tr.sampler.next()])
    lengths = batch.completion_mask.sum(-1)
    want = batch.info["raw_rewards"] + 0.5 * O.overlong_penalty(lengths, 8, 4)
    torch.testing.assert_close(batch.rewards, want)
    assert (lengths > 4).any()  # some completions were penalized
