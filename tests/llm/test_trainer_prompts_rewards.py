"""The trainer with TRL-format datasets (a `prompt` column of text or of chat messages, a model without a chat
template) and with reward functions as users write them (async, import paths, completion_ids, trainer_state,
one callable, names and callables mixed), on the tiny model."""
import copy

import datasets
import pytest
import torch

from llmrl import objectives as O
from llmrl.llm.config import GRPOConfig
from llmrl.llm.trainer import GRPOTrainer
from tests.llm.tiny import length_reward, tiny_dataset, tiny_model, tiny_trainer

TEXT_ROWS = [{"prompt": f"Q: {i}+1=", "answer": str(i + 1)} for i in range(4)]
CHAT_ROWS = [{"prompt": [{"role": "user", "content": f"{i}+1?"}], "answer": str(i + 1)} for i in range(4)]


def without_chat_template(tok):
    tok = copy.deepcopy(tok)
    tok.chat_template = None
    return tok


def make_trainer(tmp_path, rows, reward_funcs, chat_template=True, **kw):
    model, tok = tiny_model()
    cfg = GRPOConfig(output_dir=str(tmp_path), per_device_batch_size=4, num_generations=2, max_new_tokens=6,
                     report_to=["none"], dtype="float32", overwrite_output_dir=True, **kw)
    return GRPOTrainer(cfg, model=model, tokenizer=tok if chat_template else without_chat_template(tok),
                       reward_funcs=reward_funcs, train_dataset=datasets.Dataset.from_list(rows))


def recorder(seen):
    def record(prompts, completions, **kwargs):
        seen.update(prompts=prompts, completions=completions, **kwargs)
        return [float(len(str(c))) for c in completions]
    return record


def unpadded(ids, mask):
    return [row[m.bool()].tolist() for row, m in zip(ids, mask)]


# ----------------------------------------------------------------------------- prompts

@pytest.mark.parametrize("prompt_column", [None, "prompt"])
def test_text_prompt_column_is_raw_text_for_a_model_without_chat_template(tmp_path, prompt_column):
    seen = {}
    tr = make_trainer(tmp_path, TEXT_ROWS, [recorder(seen)], chat_template=False, prompt_column=prompt_column)
    r = tr.rollout(TEXT_ROWS[:2])
    # the model saw exactly the text's own tokens: no chat template, no system prompt
    assert unpadded(r.prompt_ids, r.prompt_mask) == [tr.tok(row["prompt"]).input_ids for row in TEXT_ROWS[:2]]
    assert seen["prompts"] == ["Q: 0+1=", "Q: 0+1=", "Q: 1+1=", "Q: 1+1="]
    assert seen["completions"] == r.info["texts"] and all(isinstance(c, str) for c in seen["completions"])
    assert seen["answer"] == ["1", "1", "2", "2"] and "prompt" not in seen
    res = tr.evaluate(datasets.Dataset.from_list(TEXT_ROWS), 2, reward="gsm8k")  # greedy evaluation too
    assert res["n"] == 2 and [s["prompt"] for s in res["samples"]] == ["Q: 0+1=", "Q: 1+1="]


def test_chat_prompt_column_goes_through_the_template_and_completions_are_assistant_messages(tmp_path):
    seen = {}
    tr = make_trainer(tmp_path, CHAT_ROWS, [recorder(seen)])
    r = tr.rollout(CHAT_ROWS[:2])
    want = [tr.tok(tr.tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False).input_ids for row in CHAT_ROWS[:2]]
    assert unpadded(r.prompt_ids, r.prompt_mask) == want
    assert seen["prompts"][0] == CHAT_ROWS[0]["prompt"]
    assert seen["completions"] == [[{"role": "assistant", "content": t}] for t in r.info["texts"]]
    # the built-in rewards read the messages
    tr = make_trainer(tmp_path, CHAT_ROWS, ["gsm8k", "format"])
    _, r = tr.step()
    assert set(r.info["per_func"]) == {"gsm8k", "format"}


def test_question_column_is_a_user_turn_after_the_gsm8k_system_prompt(tmp_path):
    from llmrl.llm.data import GSM8K_SYSTEM_PROMPT

    rows = [{"prompt": "unused", "question": f"{i}+1?", "answer": str(i + 1)} for i in range(4)]
    seen = {}
    tr = make_trainer(tmp_path, rows, [recorder(seen)], prompt_column="question")
    r = tr.rollout(rows[:1])
    chat = [{"role": "system", "content": GSM8K_SYSTEM_PROMPT}, {"role": "user", "content": "0+1?"}]
    want = tr.tok(tr.tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
                  add_special_tokens=False).input_ids
    assert unpadded(r.prompt_ids, r.prompt_mask) == [want]
    assert seen["prompts"] == ["0+1?", "0+1?"] and seen["completions"] == r.info["texts"]


def test_prompt_wins_over_question_and_says_so(tmp_path):
    rows = [{"prompt": f"Q: {i}+1=", "question": f"{i}+1?", "answer": str(i + 1)} for i in range(4)]
    with pytest.warns(UserWarning, match="the prompts come from 'prompt'"):
        tr = make_trainer(tmp_path, rows, [length_reward])
    r = tr.rollout(rows[:1])
    assert unpadded(r.prompt_ids, r.prompt_mask) == [tr.tok("Q: 0+1=").input_ids]


@pytest.mark.parametrize("rows, kw, chat_template, message", [
    ([{"text": "1+1?", "answer": "2"}] * 4, {}, True, r"^dataset has no column 'question' \(columns: text, answer\)"),
    ([{"question": "1+1?", "answer": "2"}] * 4, {}, False,
     r"^column 'question' gives chat prompts .* no chat_template"),
    (CHAT_ROWS, {}, False, r"^column 'prompt' gives chat prompts"),
    (TEXT_ROWS, {"system_prompt": "Think."}, True, r"^row 0: system_prompt is set, but column 'prompt' holds whole"),
    ([{"prompt": 5, "answer": "2"}] * 4, {}, True, r"^row 0: column 'prompt' holds int 5"),
    ([{"prompt": "Q:"}] * 4, {}, True, r"^dataset has no column 'answer' .*the reward function 'length_reward'"),
])
def test_a_dataset_that_cannot_work_is_refused_at_construction(tmp_path, rows, kw, chat_template, message):
    with pytest.raises(ValueError, match=message) as e:
        make_trainer(tmp_path, rows, [length_reward], chat_template=chat_template, **kw)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- reward functions

def test_async_and_import_path_rewards_reach_the_loss(tmp_path):
    import asyncio

    (tmp_path / "my_rewards.py").write_text(
        "def digits(prompts, completions, **kwargs):\n"
        "    return [float(sum(ch.isdigit() for ch in c)) for c in completions]\n")

    async def judge(prompts, completions, **kwargs):
        await asyncio.sleep(0.01)
        return [len(c) / 10 for c in completions]

    tr = tiny_trainer(tmp_path / "run", reward_funcs=[judge, f"{tmp_path}/my_rewards.py:digits"])
    before = {k: v.detach().clone() for k, v in tr.model.named_parameters() if v.requires_grad}
    _, r = tr.step()
    texts = r.info["texts"]
    want_judge = torch.tensor([len(c) / 10 for c in texts])
    want_digits = torch.tensor([float(sum(ch.isdigit() for ch in c)) for c in texts])
    torch.testing.assert_close(r.info["per_func"]["judge"], want_judge)
    torch.testing.assert_close(r.info["per_func"]["digits"], want_digits)
    torch.testing.assert_close(r.rewards, want_judge + want_digits)
    torch.testing.assert_close(r.advantages, O.group_advantages(want_judge + want_digits, 4))
    assert r.advantages.abs().sum() > 0
    assert any(not torch.equal(v, before[k]) for k, v in tr.model.named_parameters() if v.requires_grad)


def test_completion_ids_and_trainer_state_as_trl_passes_them(tmp_path):
    calls = []

    def uses_ids(prompts, completions, completion_ids, trainer_state, **kwargs):
        calls.append((completion_ids, trainer_state.global_step, trainer_state.max_steps))
        return [float(len(ids)) for ids in completion_ids]

    tr = tiny_trainer(tmp_path, reward_funcs=[uses_ids, length_reward], max_steps=3)
    _, r1 = tr.step()
    _, r2 = tr.step()
    assert [c[1:] for c in calls] == [(0, 3), (1, 3)]  # steps done before each step's rewards
    for (ids, _, _), r in zip(calls, (r1, r2)):
        assert ids == unpadded(r.completion_ids, r.completion_mask)  # up to and including EOS, no padding
        assert tr.tok.batch_decode(ids, skip_special_tokens=True) == r.info["texts"]
        assert r.info["per_func"]["uses_ids"].tolist() == r.completion_mask.sum(-1).tolist()


def test_one_callable_names_and_mixes(tmp_path):
    tr = tiny_trainer(tmp_path, reward_funcs=length_reward)  # not in a list, as TRL takes it
    assert list(tr.reward_funcs) == ["length_reward"]
    tr = tiny_trainer(tmp_path, reward_funcs=["format", length_reward])
    _, r = tr.step()
    assert list(r.info["per_func"]) == ["format", "length_reward"]
    torch.testing.assert_close(r.rewards, r.info["per_func"]["format"] + r.info["per_func"]["length_reward"])


def test_weights_are_checked_against_the_functions_the_trainer_gets(tmp_path):
    # weights for a callable the trainer is given (the config's default names are not the run's functions)
    tr = tiny_trainer(tmp_path, reward_funcs=[length_reward], reward_weights=[2.0])
    _, r = tr.step()
    torch.testing.assert_close(r.rewards, 2.0 * r.info["per_func"]["length_reward"])
    with pytest.raises(ValueError, match=r"reward_weights has 2 values for 1 reward functions \(length_reward\)"):
        tiny_trainer(tmp_path, reward_funcs=[length_reward], reward_weights=[1.0, 2.0])
    model, tok = tiny_model()
    cfg = GRPOConfig(reward_funcs=["gsm8k"], output_dir=str(tmp_path), report_to=["none"])
    with pytest.raises(ValueError, match="reward functions are given twice, as GRPOConfig.reward_funcs and to the "
                                         "trainer; give them in one place"):
        GRPOTrainer(cfg, model=model, tokenizer=tok, reward_funcs=[length_reward], train_dataset=tiny_dataset())


def test_config_resolves_reward_names_at_once(tmp_path):
    (tmp_path / "r.py").write_text("def brevity(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    GRPOConfig(reward_funcs=["gsm8k", f"{tmp_path}/r.py:brevity"], reward_weights=[1, 0.5])
    with pytest.raises(ValueError, match=r"^GRPOConfig: reward function 'nosuch_mod_q:fn': cannot import"):
        GRPOConfig(reward_funcs=["nosuch_mod_q:fn"])
    with pytest.raises(ValueError, match=r"^GRPOConfig: reward_weights has 1 values for 2 reward functions"):
        GRPOConfig(reward_funcs=["gsm8k", "format"], reward_weights=[1])
