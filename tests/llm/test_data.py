import json
import os
import re

import datasets
import pytest
import torch

from llmrl.llm import arithmetic
from llmrl.llm.data import (GSM8K_SYSTEM_PROMPT, PromptSampler, bundled_dataset_dir, check_columns,
                            check_prompt_dataset, load_prompt_dataset, make_prompt, prompt_to_text, row_prompt)
from llmrl.llm.rewards import extract_gsm8k_answer, gsm8k_reward
from llmrl.utils import SetupError

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


def test_default_dataset_is_bundled_and_loads_from_any_directory(tmp_path, monkeypatch):
    from llmrl.llm.config import GRPOConfig

    monkeypatch.chdir(tmp_path)  # nothing of the clone is reachable by a relative path
    assert GRPOConfig().dataset == "arithmetic"
    train = load_prompt_dataset(GRPOConfig().dataset)
    test = load_prompt_dataset("arithmetic", split="test")
    assert (len(train), len(test)) == (2000, 200) and test.column_names == ["question", "answer"]
    assert train[0] == json.loads(open(os.path.join(REPO, "llmrl", "data", "arithmetic", "train.jsonl")).readline())
    assert os.path.samefile(bundled_dataset_dir("arithmetic"), os.path.join(REPO, "llmrl", "data", "arithmetic"))
    # a local directory of the same name is reached as ./arithmetic
    (tmp_path / "arithmetic").mkdir()
    write_jsonl(tmp_path / "arithmetic" / "train.jsonl", ROWS)
    assert len(load_prompt_dataset("arithmetic")) == 2000 and len(load_prompt_dataset("./arithmetic")) == 2
    with pytest.raises(ValueError, match="no bundled dataset 'gsm8k'; bundled: arithmetic"):
        bundled_dataset_dir("gsm8k")


def test_bundled_data_is_in_the_built_wheel(tmp_path):
    """An installed (non-editable) llmrl carries its data: build the wheel from a copy of the package and look."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(os.path.join(REPO, "llmrl"), src / "llmrl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("llmrl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"llmrl/data/arithmetic/train.jsonl", "llmrl/data/arithmetic/test.jsonl"} <= names


def test_load_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset: local path '.*nope\.jsonl' does not exist"):
        load_prompt_dataset(str(tmp_path / "nope.jsonl"))
    with pytest.raises(FileNotFoundError, match=r"local path 'missing\.parquet' does not exist; pass an existing file "
                                                r"or directory, a bundled dataset \(arithmetic\) or a hub dataset name$"):
        load_prompt_dataset("missing.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no train\.jsonl/.*\(it holds no \.jsonl/\.json/\.parquet/\.csv "
                                                r"file; pass a directory that does, or a file path\)$"):
        load_prompt_dataset(str(tmp_path / "empty"))
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    with pytest.raises(FileNotFoundError, match=r"^dataset: .*has no validation\.jsonl/.*\(its splits: train; pass "
                                                r"--dataset_split one of them, or a file path\)$"):
        load_prompt_dataset(str(tmp_path), split="validation")
    with pytest.raises(FileNotFoundError, match=r"^eval_dataset: .*pass --eval_split one of them"):  # named by caller
        load_prompt_dataset(str(tmp_path), split="validation", setting="eval_dataset", split_setting="eval_split")
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
    from llmrl.llm import hub
    monkeypatch.setattr(hub, "hub_unreachable", lambda timeout=5.0: None)  # as if the hub answered
    assert len(load_prompt_dataset("openai/gsm8k")) == 2
    assert len(load_prompt_dataset("openai/gsm8k", split="test", config_name="socratic")) == 2
    assert calls == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "socratic", "test")]
    with pytest.raises(SetupError) as e:  # a user's error: one line from every recipe
        load_prompt_dataset("someone/other")
    assert "\n" not in str(e.value)
    assert str(e.value).startswith("dataset: 'someone/other' is not a local path or bundled dataset "
                                   "(arithmetic) and loading it from the Hugging Face hub failed: ConnectionError: "
                                   "Couldn't reach the hub; pass a local")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(SetupError, match=r"hub failed \(HF_HUB_OFFLINE is set\): ConnectionError"):
        load_prompt_dataset("someone/other")
    assert isinstance(e.value.__cause__, ConnectionError)


@pytest.mark.parametrize("name, text, message", [
    ("empty.jsonl", "", r"empty\.jsonl is empty$"),
    ("blank.jsonl", "\n  \n", r"blank\.jsonl is empty$"),
    ("bad.jsonl", '{"question": "a", "answer": "1"}\n\n{"question": "b", "answer": 2\n{"question": "c"}\n',
     r"bad\.jsonl line 3 is not valid JSON \(Expecting ',' delimiter at column 30\)$"),
    ("list.jsonl", '{"question": "a"}\n["b"]\n', r"list\.jsonl line 2 holds a JSON list, not an object"),
    ("rows.json", "[]", r"rows\.json has no rows$"),
    ("header.csv", "question,answer\n", r"header\.csv (has no rows|cannot be read)"),
])
def test_unreadable_or_empty_files_are_one_line_errors(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=r"^dataset: .*" + message) as e:
        load_prompt_dataset(str(tmp_path / name))
    assert "\n" not in str(e.value) and str(tmp_path / name) in str(e.value)


def test_empty_split_file_in_a_directory_is_refused(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    (tmp_path / "test.jsonl").write_text("")
    assert len(load_prompt_dataset(str(tmp_path))) == 2
    with pytest.raises(ValueError, match=r"test\.jsonl is empty"):
        load_prompt_dataset(str(tmp_path), split="test")


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
    gsm8k_chat = [{"role": "system", "content": GSM8K_SYSTEM_PROMPT}, {"role": "user", "content": "What is 2+2?"}]
    assert make_prompt(row) == gsm8k_chat  # the default: question text after the GSM8K system prompt
    assert make_prompt(row, system_prompt="") == [{"role": "user", "content": "What is 2+2?"}]
    assert make_prompt(row, system_prompt="Think.")[0] == {"role": "system", "content": "Think."}
    assert make_prompt({"problem": "1+1?"}, prompt_column="problem", system_prompt="") == [
        {"role": "user", "content": "1+1?"}]
    # TRL's standard format: a 'prompt' column of text is used as is, of messages as they are
    assert make_prompt({"prompt": "Q: 1+1?\nA:", "answer": "2"}) == "Q: 1+1?\nA:"
    assert make_prompt({"prompt": "Q: 1+1?\nA:"}, prompt_column="prompt") == "Q: 1+1?\nA:"
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert make_prompt({"prompt": chat}) is chat
    assert make_prompt({"messages": chat}, prompt_column="messages") is chat
    # with both 'prompt' and 'question', 'prompt' unless prompt_column says otherwise
    both = {"prompt": "Q: 2+2?\nA:", "question": "What is 2+2?"}
    assert make_prompt(both) == "Q: 2+2?\nA:" and make_prompt(both, prompt_column="question") == gsm8k_chat
    # what reward functions get: the prompt as the dataset holds it
    assert row_prompt(row) == "What is 2+2?" and row_prompt({"prompt": chat}) is chat
    assert row_prompt(both) == both["prompt"]
    assert "The answer is N." in GSM8K_SYSTEM_PROMPT


def test_make_prompt_errors():
    with pytest.raises(ValueError, match=r"^row has no column 'question' \(columns: problem\); set prompt_column"):
        make_prompt({"problem": "x"})
    with pytest.raises(ValueError, match="column 'question' holds int 3; it must hold text or chat messages"):
        make_prompt({"question": 3})
    with pytest.raises(ValueError, match="message 1 of column 'prompt' is {'text': 'b'}"):
        make_prompt({"prompt": [{"role": "user", "content": "a"}, {"text": "b"}]})
    with pytest.raises(ValueError, match="system_prompt is set, but column 'prompt' holds whole prompts"):
        make_prompt({"prompt": "Q:"}, system_prompt="Think.")
    assert make_prompt({"prompt": "Q:"}, system_prompt="") == "Q:"  # '' asks for nothing: nothing is dropped


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
        bundled = open(os.path.join(REPO, "llmrl", "data", "arithmetic", f"{split}.jsonl")).read()
        assert (tmp_path / f"{split}.jsonl").read_text() == bundled



# ---------------------------------------------------------------- the dataset check at construction

def chat_tokenizer():
    from tests.llm.tiny import tiny_tokenizer as tiny
    return tiny()


def plain_tokenizer():
    """The tiny tokenizer without a chat template, as a base model has."""
    import copy
    tok = copy.deepcopy(chat_tokenizer())
    tok.chat_template = None
    return tok


CHAT = [{"role": "user", "content": "1+1?"}]


@pytest.mark.parametrize("rows, tokenizer, kw", [
    ([{"question": "1+1?", "answer": "2"}], chat_tokenizer, {}),
    ([{"prompt": "Q: 1+1? A:", "answer": "2"}], plain_tokenizer, {}),
    ([{"prompt": "Q: 1+1? A:", "answer": "2"}], chat_tokenizer, {"system_prompt": ""}),
    ([{"prompt": CHAT, "answer": "2"}], chat_tokenizer, {}),
    ([{"problem": "1+1?", "answer": "2"}], chat_tokenizer, {"prompt_column": "problem"}),
    ([{"prompt": "Q:", "question": "1+1?", "answer": "2"}], chat_tokenizer, {"prompt_column": "question"}),
])
def test_check_prompt_dataset_accepts(rows, tokenizer, kw):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_prompt_dataset(datasets.Dataset.from_list(rows), tokenizer(), needed_by={"answer": "gsm8k"}, **kw)


@pytest.mark.parametrize("rows, tokenizer, kw, message", [
    ([{"text": "1+1?"}], chat_tokenizer, {},
     r"^dataset has no column 'question' \(columns: text\); set prompt_column to the column holding the prompt "
     r"\(by default 'prompt', TRL's, else 'question'\)$"),
    ([{"question": "1+1?"}], chat_tokenizer, {"prompt_column": "problem"}, r"^dataset has no column 'problem'"),
    ([{"question": "1+1?"}], chat_tokenizer, {"needed_by": {"answer": "the reward function 'gsm8k'"}},
     r"^dataset has no column 'answer' .*the reward function 'gsm8k' needs it$"),
    ([{"question": 7}], chat_tokenizer, {},
     r"^row 0: column 'question' holds int 7; it must hold text or chat messages$"),
    ([{"question": "a"}, {"question": None}], chat_tokenizer, {}, r"^row 1 has no value for column 'question'"),
    ([{"prompt": [{"role": "user", "content": "a"}, {"text": "b"}]}], chat_tokenizer, {},
     r"^row 0: message 1 of column 'prompt' is \{'role': None, 'content': None, 'text': 'b'\}; each message must "
     r"be a dict with 'role' and 'content'$"),
    ([{"question": "1+1?"}], plain_tokenizer, {},
     r"^column 'question' gives chat prompts \(chat messages, or text put in a user turn\) but the tokenizer has "
     r"no chat_template; .*give a 'prompt' column of plain text"),
    ([{"prompt": CHAT}], plain_tokenizer, {}, r"^column 'prompt' gives chat prompts"),
    ([{"prompt": "Q: 1+1? A:"}], chat_tokenizer, {"system_prompt": "Think."},
     r"^row 0: system_prompt is set, but column 'prompt' holds whole prompts"),
    ([{"prompt": CHAT}], chat_tokenizer, {"system_prompt": "Think."}, r"system_prompt is set"),
    ([{"question": "1+1?", "completion_ids": [1]}], chat_tokenizer, {},
     r"^dataset column 'completion_ids' has the name of an argument the reward functions get from the trainer"),
    ([], chat_tokenizer, {}, r"^dataset has no rows"),
])
def test_check_prompt_dataset_refuses_with_one_line(rows, tokenizer, kw, message):
    dataset = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({"question": []})
    with pytest.raises(ValueError, match=message) as e:
        check_prompt_dataset(dataset, tokenizer(), **kw)
    assert "\n" not in str(e.value)


def test_check_prompt_dataset_says_which_of_prompt_and_question_it_uses():
    both = datasets.Dataset.from_list([{"prompt": "Q: 1+1? A:", "question": "1+1?"}])
    with pytest.warns(UserWarning, match="both 'prompt' and 'question' columns: the prompts come from 'prompt' "
                                         r"\(TRL's convention\); set prompt_column='question' to use the other"):
        check_prompt_dataset(both, chat_tokenizer())


# ---------------------------------------------------------------- the prompt order

def test_prompt_sampler_order_and_state_are_unchanged():
    """The order a checkpoint's {"epoch", "pos"} restores: torch.randperm seeded with seed * 100003 + epoch, each
    process taking its B prompts of every global batch, the incomplete tail of an epoch dropped."""
    size, B, N, seed = 10, 2, 2, 3
    samplers = [PromptSampler(size, B, N, rank, seed) for rank in range(N)]
    perm = lambda epoch: torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
    got = [[s.next() for s in samplers] for _ in range(3)]
    assert got[0] == [perm(0)[0:2], perm(0)[2:4]] and got[1] == [perm(0)[4:6], perm(0)[6:8]]
    assert got[2] == [perm(1)[0:2], perm(1)[2:4]]  # 8 + 4 > 10: a new epoch
    assert samplers[0].state_dict() == {"epoch": 1, "pos": 4}
    resumed = PromptSampler(size, B, N, 0, seed)
    resumed.load_state_dict({"epoch": 1, "pos": 4})
    assert resumed.next() == perm(1)[4:6]
    with pytest.raises(ValueError, match="dataset has 3 rows, fewer than one step's 4 prompts"):
        PromptSampler(3, B, N, 0, seed)
