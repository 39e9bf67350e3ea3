"""The sampler: prefill-once + cache expansion decodes the same tokens as HF generate; EOS handling; top-k/p; the
inverse-CDF draw is exact and never returns a token of probability 0; prompts are left-padded whatever the
tokenizer's padding_side."""
import pytest
import torch

from llmrl.llm.logprobs import completion_logprobs, completion_logprobs_naive
from llmrl.llm.sampling import (filtered_probs, finish, inverse_cdf, sample_completions, sample_token,
                                tokenize_prompts)
from tests.llm.tiny import tiny_model, tiny_tokenizer


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


# ------------------------------------------------------ the inverse-CDF draw never returns a token of probability 0
BELOW_ONE = 1 - 2 ** -24  # the largest float32 below 1 (torch.rand's largest value)


def _force_uniform(monkeypatch, value):
    """Make every torch.rand in the sampler return `value` (torch.rand does return exact zeros)."""
    monkeypatch.setattr(torch, "rand", lambda n, **kw: torch.full((n,), value, dtype=kw.get("dtype") or torch.float32))


@pytest.mark.parametrize("u", [0.0, BELOW_ONE])
def test_sample_token_with_forced_uniform_never_draws_a_removed_token(monkeypatch, u):
    _force_uniform(monkeypatch, u)
    assert sample_token(torch.tensor([[0.0, 5.0]]), top_k=1).tolist() == [1]  # the example: token 0 removed
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5, 2.5]])
    assert sample_token(logits, top_k=2).item() in (1, 4)
    assert sample_token(logits, top_p=0.5).item() in (1, 4)
    assert sample_token(torch.tensor([[0.0, 2.0, 1.0, -1e9]])).item() in (0, 1, 2)


def test_inverse_cdf_edges():
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.5, 0.25, 0.0]])
    draw = lambda u: inverse_cdf(probs, torch.tensor([u], dtype=torch.float64)).item()  # noqa: E731
    assert draw(0.0) == 1                                # not token 0 (probability 0)
    assert draw(0.25) == 3 and draw(0.75) == 4           # exactly on a CDF step: the next token of probability > 0
    assert draw(0.25 - 2 ** -26) == 1                   # the float32 just below the step
    assert draw(BELOW_ONE) == 4 and draw(1 - 2 ** -40) == 4  # rounds to 1.0 in fp32: still not token 5
    assert inverse_cdf(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([0.0])).item() == 2


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (3, 1.0), (0, 0.7), (4, 0.9)])
def test_inverse_cdf_is_exact_on_a_grid_of_uniforms(top_k, top_p):
    """Over u = k / K, k = 0..K-1, the fraction of u mapping to each token is its probability up to 1 / K (exactly,
    for probabilities that are multiples of 1 / K); tokens of probability 0 get none."""
    K = 2 ** 14
    u = torch.arange(K, dtype=torch.float32) / K
    dyadic = torch.tensor([0.0, 0.25, 0.0, 0.5, 0.125, 0.125, 0.0])
    counts = torch.bincount(inverse_cdf(dyadic.expand(K, -1), u), minlength=7)
    assert torch.equal(counts.float() / K, dyadic)
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(3)) * 2
    probs = filtered_probs(logits, 0.8, top_p, top_k)[0]
    counts = torch.bincount(inverse_cdf(probs.expand(K, -1), u), minlength=50)
    assert (counts[probs == 0] == 0).all()
    assert ((counts.float() / K - probs).abs() <= 1.0 / K + 1e-6).all()


@pytest.mark.parametrize("engine", ["auto", "hf"])
def test_every_sampling_path_draws_from_the_filtered_distribution_at_u_zero(monkeypatch, engine):
    """top_k=1 leaves only the argmax: with every uniform forced to 0, sampling is greedy decoding on both
    decoders (the old left search returned token 0 at u = 0)."""
    m, tok = tiny_model(3)
    ids, mask = tokenize_prompts(tok, ["What is 3 + 4?", "hi"], "cpu")
    greedy = sample_completions(m, ids, mask, 2, 8, [tok.eos_token_id], tok.pad_token_id, temperature=0.0,
                                engine=engine)
    _force_uniform(monkeypatch, 0.0)
    drawn = sample_completions(m, ids, mask, 2, 8, [tok.eos_token_id], tok.pad_token_id, top_k=1, engine=engine)
    assert torch.equal(drawn.ids, greedy.ids) and (greedy.ids != 0).any()


# ------------------------------------------------------ prompts are left-padded whatever the tokenizer says
PROMPTS = ["What is 3 + 4?", "hi", [{"role": "user", "content": "Name a color."}]]


def test_tokenize_prompts_left_pads_without_touching_the_tokenizer():
    tok = tiny_tokenizer()
    left, left_mask = tokenize_prompts(tok, ["What is 3 + 4?", "hi"], "cpu")
    tok.padding_side = "right"
    ids, mask = tokenize_prompts(tok, ["What is 3 + 4?", "hi"], "cpu")
    assert tok.padding_side == "right"
    assert torch.equal(ids, left) and torch.equal(mask, left_mask) and mask[1, 0] == 0 and mask[:, -1].all()


def test_right_padding_tokenizer_gives_what_each_prompt_gives_alone():
    """Greedy completions (both decoders, and the trainer's evaluation) and log-probs (shared-prefix and naive) of a
    batch tokenized with a right-padding tokenizer equal those of each prompt tokenized and decoded on its own."""
    from llmrl.llm.evaluation import greedy_eval

    m, tok = tiny_model(3)
    tok.padding_side = "right"
    eos, pad = [tok.eos_token_id], tok.pad_token_id
    for prompts in (PROMPTS[:2], PROMPTS[2:] + PROMPTS[1:2]):
        ids, mask = tokenize_prompts(tok, prompts, "cpu")
        for engine in ("auto", "hf"):
            batch = sample_completions(m, ids, mask, 1, 10, eos, pad, temperature=0.0, engine=engine)
            for i, p in enumerate(prompts):
                one = sample_completions(m, *tokenize_prompts(tok, [p], "cpu"), 1, 10, eos, pad, temperature=0.0,
                                         engine=engine)
                C = one.ids.shape[1]
                assert torch.equal(batch.ids[i, :C] * batch.mask[i, :C], one.ids[0] * one.mask[0])
        comp = batch.ids
        for fn in (completion_logprobs, completion_logprobs_naive):
            lp, _ = fn(m, ids, mask, comp, batch.mask, torch.arange(len(prompts)))
            for i, p in enumerate(prompts):
                one, _ = fn(m, *tokenize_prompts(tok, [p], "cpu"), comp[i:i + 1], batch.mask[i:i + 1],
                            torch.zeros(1, dtype=torch.long))
                assert torch.allclose(lp[i] * batch.mask[i], one[0] * batch.mask[i], atol=1e-5)
    rows = [{"question": q, "answer": "#### 7"} for q in ("What is 3 + 4?", "hi", "7")]
    together = greedy_eval(m, tok, rows, "gsm8k", max_new_tokens=8, batch_size=3)["samples"]
    alone = [greedy_eval(m, tok, [r], "gsm8k", max_new_tokens=8, batch_size=1)["samples"][0] for r in rows]
    assert [s["completion"] for s in together] == [s["completion"] for s in alone]


def test_right_padded_prompt_tensors_are_refused():
    m, tok = tiny_model(0)
    enc = tok(["What is 3 + 4?", "hi"], return_tensors="pt", padding=True, padding_side="right")
    with pytest.raises(ValueError, match="prompt_mask row 1 is not a left-padded, non-empty prompt"):
        sample_completions(m, enc.input_ids, enc.attention_mask, 2, 4, [tok.eos_token_id], tok.pad_token_id)
    comp, cmask = torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)
    for fn in (completion_logprobs, completion_logprobs_naive):
        with pytest.raises(ValueError, match="prompt_mask row 1"):
            fn(m, enc.input_ids, enc.attention_mask, comp, cmask, torch.arange(2))
