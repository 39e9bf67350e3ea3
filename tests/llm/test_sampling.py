"""The sampler: prefill-once + cache expansion decodes the same tokens as HF generate; EOS handling; top-k/p."""
import torch

from llmrl.llm.sampling import finish, sample_completions, sample_token
from tests.llm.tiny import tiny_model


def test_greedy_matches_hf_generate_with_left_padding():
    m, tok = tiny_model(3)
    enc = tok(["What is 3 + 4?", "hi", "abc"], return_tensors="pt", padding=True)
    ours = sample_completions(m, enc.input_ids, enc.attention_mask, 2, 12, [tok.eos_token_id], tok.pad_token_id,
                              temperature=0.0)
    ref = m.generate(input_ids=enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=12, do_sample=False,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[:, enc.input_ids.shape[1]:]
    ref = ref.repeat_interleave(2, 0)
    C = min(ref.shape[1], ours.ids.shape[1])
    assert torch.equal(ours.ids[:, :C] * ours.mask[:, :C], ref[:, :C] * ours.mask[:, :C])
    assert ours.ids.shape == (6, ours.ids.shape[1])


def test_sampling_is_seeded_and_groups_differ():
    m, tok = tiny_model(0)
    enc = tok(["hello", "hi there"], return_tensors="pt", padding=True)
    run = lambda s: sample_completions(m, enc.input_ids, enc.attention_mask, 4, 10, [tok.eos_token_id],  # noqa
                                       tok.pad_token_id, generator=torch.Generator().manual_seed(s)).ids
    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(x.tolist()) for x in a[:4]}) > 1  # G samples of one prompt are not copies


def test_finish_masks_after_first_eos():
    eos, pad = torch.tensor([9]), 0
    tokens = torch.tensor([[5, 9, 7, 9], [5, 6, 7, 8], [9, 1, 1, 1]])
    c = finish(tokens, eos, pad)
    assert c.mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert c.ids.tolist() == [[5, 9, 0, 0], [5, 6, 7, 8], [9, 0, 0, 0]]
    assert c.truncated.tolist() == [False, True, False]


def test_top_k_and_top_p_restrict_support():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    k2 = sample_token(logits, top_k=2, generator=g)
    assert set(k2.tolist()) == {0, 1}
    p = sample_token(logits, top_p=0.79, generator=g)  # 0.5 + 0.3 reaches 0.79: tokens 0, 1 only
    assert set(p.tolist()) == {0, 1}
    frac0 = (p == 0).float().mean().item()
    assert abs(frac0 - 0.5 / 0.8) < 0.03  # renormalized within the nucleus
    full = sample_token(logits, generator=g)
    assert abs((full == 3).float().mean().item() - 0.05) < 0.015
    assert sample_token(logits[:1], temperature=0.0).item() == 0
