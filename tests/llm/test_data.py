import json
import os
import re

import datasets
import pytest

from llmrl.llm import arithmetic
from llmrl.llm.data import (GSM8K_SYSTEM_PROMPT, check_columns, load_prompt_dataset, make_prompt, prompt_to_text)
from llmrl.llm.rewards import extract_gsm8k_answer, gsm8k_reward

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROWS = [{"question": "1+1?", "answer": "#### 2"}, {"question": "2+3?", "answer": "#### 5"}]


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------- loading

def test_load_jsonl_file_and_directory(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "test.jsonl", ROWS[:1])
    ds = load_prompt_dataset(str(tmp_path / "train.jsonl"))
    assert ds.to_list() == ROWS
    assert load_prompt_dataset(str(tmp_path)).to_list() == ROWS  # split defaults to train
    assert load_prompt_dataset(str(tmp_path), split="test").to_list() == ROWS[:1]


def test_load_parquet_and_csv(tmp_path):
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "d.parquet"))
    assert load_prompt_dataset(str(tmp_path / "d.parquet")).to_list() == ROWS
    (tmp_path / "d.csv").write_text('question,answer\n1+1?,#### 2\n2+3?,#### 5\n')
    assert load_prompt_dataset(str(tmp_path / "d.csv")).to_list() == ROWS


def test_load_bundled_arithmetic():
    ds = load_prompt_dataset(os.path.join(REPO, "data", "arithmetic"), split="test")
    assert len(ds) == 200 and ds.column_names == ["question", "answer"]


def test_load_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"load_prompt_dataset: local path '.*nope\.jsonl' does not exist"):
        load_prompt_dataset(str(tmp_path / "nope.jsonl"))
    with pytest.raises(FileNotFoundError, match=r"local path 'missing\.parquet' does not exist"):
        load_prompt_dataset("missing.parquet")
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    with pytest.raises(FileNotFoundError, match=r"has no validation\.jsonl/.*\(files: train\.jsonl\)"):
        load_prompt_dataset(str(tmp_path), split="validation")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"has extension '\.txt'"):
        load_prompt_dataset(str(tmp_path / "notes.txt"))


def test_load_hub_name_defaults_and_error_prefix(monkeypatch):
    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        if name == "openai/gsm8k":
            return datasets.Dataset.from_list(ROWS)
        raise ConnectionError("Couldn't reach the hub")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert len(load_prompt_dataset("openai/gsm8k")) == 2
    assert len(load_prompt_dataset("openai/gsm8k", split="test", config_name="socratic")) == 2
    assert calls == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "socratic", "test")]
    with pytest.raises(RuntimeError) as e:
        load_prompt_dataset("someone/other")
    first, second = str(e.value).split("\n")
    assert first.startswith("load_prompt_dataset: 'someone/other' is not a local path and loading it from the "
                            "Hugging Face hub failed")
    assert second == "ConnectionError: Couldn't reach the hub"
    assert isinstance(e.value.__cause__, ConnectionError)


# ---------------------------------------------------------------- columns

def test_check_columns_passes_and_names_missing_column():
    ds = datasets.Dataset.from_list([{"question": "q", "foo": 1}])
    check_columns(ds, ["question"])
    with pytest.raises(ValueError, match=r"^dataset has no column 'answer' \(columns: question, foo\); the reward "
                                         r"function 'gsm8k_reward' needs it$"):
        check_columns(ds, ["question", "answer"], {"answer": "the reward function 'gsm8k_reward'"})
    with pytest.raises(ValueError, match=r"no column 'answer' .*; the trainer needs it"):
        check_columns(ds, ["answer"])


def test_check_columns_names_first_row_without_value():
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(20)]
    rows[17]["answer"] = None
    rows[18]["question"] = None
    ds = datasets.Dataset.from_list(rows)
    with pytest.raises(ValueError, match=r"^row 17 has no value for column 'answer'; fill it in or drop the row$"):
        check_columns(ds, ["question", "answer"])
    # a NaN float (what pandas writes for an empty cell) is missing too
    ds = datasets.Dataset.from_dict({"question": ["a", "b", "c"], "level": [1.0, float("nan"), None]})
    with pytest.raises(ValueError, match=r"^row 1 has no value for column 'level'"):
        check_columns(ds, ["question", "level"])


# ---------------------------------------------------------------- prompts

def test_make_prompt_forms():
    row = {"question": "What is 2+2?", "answer": "#### 4"}
    assert make_prompt(row) == [{"role": "user", "content": "What is 2+2?"}]
    assert make_prompt(row, system_prompt=GSM8K_SYSTEM_PROMPT) == [
        {"role": "system", "content": GSM8K_SYSTEM_PROMPT}, {"role": "user", "content": "What is 2+2?"}]
    assert make_prompt({"problem": "1+1?"}, prompt_column="problem") == [{"role": "user", "content": "1+1?"}]
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert make_prompt({"prompt": chat, "question": "ignored"}, system_prompt="also ignored") is chat
    assert "The answer is N." in GSM8K_SYSTEM_PROMPT


def test_make_prompt_errors():
    with pytest.raises(ValueError, match=r"make_prompt: row has no column 'question' \(columns: problem\); set "
                                         r"prompt_column"):
        make_prompt({"problem": "x"})
    with pytest.raises(ValueError, match="make_prompt: column 'question' holds int 3"):
        make_prompt({"question": 3})
    with pytest.raises(ValueError, match="make_prompt: message 1 of the 'prompt' column"):
        make_prompt({"prompt": [{"role": "user", "content": "a"}, {"text": "b"}]})


def tiny_tokenizer(chat_template=None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    tokenizer.chat_template = chat_template
    return tokenizer


TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_prompt_to_text():
    tokenizer = tiny_tokenizer(TEMPLATE)
    messages = make_prompt({"question": "What is 2+2?"}, system_prompt="Think.")
    assert prompt_to_text(messages, tokenizer) == "<|system|>Think.\n<|user|>What is 2+2?\n<|assistant|>"
    assert prompt_to_text("Q: 2+2? A:", tokenizer) == "Q: 2+2? A:"
    assert prompt_to_text("plain", tiny_tokenizer()) == "plain"
    with pytest.raises(ValueError, match="prompt_to_text: the prompt is a list of chat messages but tokenizer .* has "
                                         "no chat_template"):
        prompt_to_text(messages, tiny_tokenizer())
    with pytest.raises(TypeError, match="prompt_to_text: prompt must be a str or a list"):
        prompt_to_text({"role": "user"}, tokenizer)


# ---------------------------------------------------------------- arithmetic dataset

def recompute(question: str) -> int:
    """The answer from the question alone: its two numbers, added ("now?") or subtracted ("left")."""
    a, b = map(int, re.findall(r"\d+", question))
    is_sub, is_add = bool(re.search(r"\bleft\b", question)), bool(re.search(r"\bnow\b", question))
    assert is_sub != is_add, question
    return a - b if is_sub else a + b


def test_arithmetic_answers_are_correct_and_gsm8k_format():
    rows = arithmetic.generate(300, digits=1, seed=3)
    for row in rows:
        expected = recompute(row["question"])
        solution, gold = row["answer"].split("\n#### ")
        assert int(gold) == expected >= 0
        assert solution.endswith(f"= {expected}.") and "\n" not in solution
        assert extract_gsm8k_answer(row["answer"]) == str(expected)
        assert all(2 <= int(n) <= 9 for n in re.findall(r"\d+", row["question"]))
    assert gsm8k_reward([r["question"] for r in rows], [f"The answer is {recompute(r['question'])}." for r in rows],
                        answer=[r["answer"] for r in rows]) == [1.0] * len(rows)


def test_arithmetic_example_row():
    assert arithmetic.make_problem(0, "Tom", "add", 3, 4) == {
        "question": "Tom has 3 apples and buys 4 more. How many apples does Tom have now?",
        "answer": "Tom has 3 apples and buys 4 more: 3 + 4 = 7.\n#### 7"}
    assert arithmetic.make_problem(0, "Tom", "subtract", 9, 9)["answer"].endswith("9 - 9 = 0.\n#### 0")


def test_arithmetic_deterministic_distinct_and_options():
    assert arithmetic.generate(50, seed=1) == arithmetic.generate(50, seed=1)
    assert arithmetic.generate(50, seed=1) != arithmetic.generate(50, seed=2)
    rows = arithmetic.generate(500, digits=2, ops=["subtract"], seed=0)
    assert len({r["question"] for r in rows}) == 500
    for row in rows:
        assert all(10 <= int(n) <= 99 for n in re.findall(r"\d+", row["question"]))
        assert " - " in row["answer"] and recompute(row["question"]) >= 0
    # one digit: 8 operands -> 64 sums + 36 ordered differences per (template, name)
    assert arithmetic.num_distinct_questions(1, ["add", "subtract"]) == 8 * 12 * 100
    assert len(arithmetic.generate(8 * 12 * 36, ops=["subtract"])) == 8 * 12 * 36  # every question, each once
    with pytest.raises(ValueError, match="generate: asked for 3457 problems but .* allow only 3456"):
        arithmetic.generate(3457, ops=["subtract"])


def test_arithmetic_config_validation():
    with pytest.raises(ValueError, match="ArithmeticConfig.ops must be a non-empty subset"):
        arithmetic.ArithmeticConfig(ops=["multiply"])
    with pytest.raises(ValueError, match="ArithmeticConfig.digits must be >= 1"):
        arithmetic.ArithmeticConfig(digits=0)


def test_arithmetic_cli_no_overlap_and_bundled_files_match(tmp_path):
    arithmetic.main(["--out", str(tmp_path), "--n_train", "2000", "--n_test", "200", "--digits", "1", "--seed", "0"])
    train = [json.loads(line) for line in open(tmp_path / "train.jsonl")]
    test = [json.loads(line) for line in open(tmp_path / "test.jsonl")]
    assert len(train) == 2000 and len(test) == 200
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    for split in ("train", "test"):  # data/README.md's command reproduces the bundled files
        bundled = open(os.path.join(REPO, "data", "arithmetic", f"{split}.jsonl")).read()
        assert (tmp_path / f"{split}.jsonl").read_text() == bundled
