import json
import math
import os

import numpy as np
import pytest
import torch

from llmrl.llm.rewards import (REWARD_FUNCTIONS, answers_match, extract_gsm8k_answer, format_reward, gsm8k_reward,
                               resolve_reward_functions, score_completions)

GSM8K_TEST = "/work/shared/data/gsm8k/test.jsonl"

EXTRACTION_CASES = [
    # gold form
    ("#### 1,234", "1234"),
    ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18", "18"),
    ("#### -5", "-5"),
    ("#### 72\nThe answer is 5", "72"),  # the gold marker outranks "answer is"
    ("####  \n 3", "3"),
    ("#### 1 and later #### 2", "2"),  # last gold marker wins
    # "answer is"
    ("The answer is 42.", "42"),
    ("the answer is: $3.50", "3.5"),
    ("The final answer is: $1,234.50.", "1234.5"),
    ("THE ANSWER IS 7", "7"),
    ("So the answer is 12 apples.", "12"),
    ("The answer is **42**.", "42"),
    ("The answer is \\boxed{7}.", "7"),
    ("Answer: 9", "9"),
    ("answer = 11", "11"),
    ("The answer is 5. Actually 6", "5"),  # the marker outranks a later bare number
    ("The answer is 5. No wait, the answer is 6.", "6"),  # last marker wins
    ("the answer isn't 5, it's 6", "6"),  # "isn't" is not a marker: last number
    ("The answer is unclear, but 3 + 4 = 7", "7"),  # marker without a number: falls through
    ("The answer is -3.", "-3"),
    ("The answer is 1/2.", "1/2"),
    ("The answer is 50%.", "50"),
    # boxed
    ("\\boxed{12}", "12"),
    ("so $\\boxed{\\$12}$ in total", "12"),
    ("\\boxed{50\\%}", "50"),
    ("\\boxed{1{,}234}", "1234"),
    ("\\boxed{\\frac{3}{4}}", "3/4"),
    ("\\boxed{-2}", "-2"),
    ("\\boxed{3} then \\boxed{4} and 99", "4"),  # last box wins over a later bare number
    # last number and normalization
    ("1 then 2 then 3", "3"),
    ("-5", "-5"),
    ("\u22125 degrees", "-5"),  # unicode minus
    ("it costs -$5", "-5"),
    ("it costs $-5", "-5"),
    ("3.50", "3.5"),
    ("4.0", "4"),
    ("0.50", "0.5"),
    (".5", "0.5"),
    ("007", "7"),
    ("-0", "0"),
    ("-0.0", "0"),
    ("It weighs 12kg", "12"),
    ("a 50% discount", "50"),
    ("1,000,000 dollars", "1000000"),
    ("costs $12.00.", "12"),
    ("We get 18.", "18"),
    ("1/2", "1/2"),
    ("$\\frac{3}{4}$", "3/4"),
    ("Tom had 10-3=7", "7"),
    ("3 - 5", "5"),  # a spaced '-' is an operator, not a sign
    ("x2", None),  # digits glued after a letter are not a number
    ("H2O costs 3", "3"),
    ("v1.5 is 7", "7"),
    ("1,2345", "2345"),  # a comma group needs exactly three digits
    ("3,5", "5"),  # no decimal comma
    ("1e6", "1"),
    ("1/2.5", "2.5"),
    ("5/0", "5/0"),
    ("no number here", None),
    ("", None),
]


@pytest.mark.parametrize("text,expected", EXTRACTION_CASES)
def test_extract_gsm8k_answer(text, expected):
    assert extract_gsm8k_answer(text) == expected


def test_extract_rejects_non_string():
    with pytest.raises(TypeError, match="extract_gsm8k_answer: text must be a str"):
        extract_gsm8k_answer(42)


@pytest.mark.skipif(not os.path.exists(GSM8K_TEST), reason="GSM8K not present")
def test_extract_every_gsm8k_gold_answer():
    """Each gold answer's '#### N' extracts to N with commas dropped (an independent parse)."""
    with open(GSM8K_TEST) as f:
        rows = [json.loads(line) for line in f]
    for row in rows:
        raw = row["answer"].split("####")[-1].strip().replace(",", "")
        assert answers_match(extract_gsm8k_answer(row["answer"]), raw), row["answer"]


def test_answers_match_is_exact():
    assert answers_match("1/2", "0.5") and answers_match("3.5", "3.50") and answers_match("18.00", "18")
    assert answers_match("2/4", "1/2") and answers_match("-0.25", "-1/4")
    # equal means equal: no tolerance, relative or absolute
    assert not answers_match("0.3333333", "1/3")
    assert not answers_match("0.333", "1/3")
    assert not answers_match("1000000.5", "1000000.5000001")
    assert not answers_match("2880001", "2880000")
    assert not answers_match("0.0000001", "0")
    assert not answers_match("7", "8")
    assert not answers_match(None, "8")
    assert not answers_match("5/0", "5")


def test_gsm8k_reward_off_by_one_in_a_million_scores_zero():
    """The issue's case: 2880001 was within the old 1e-6 relative tolerance of 2,880,000."""
    completions = ["The answer is 2880001.", "The answer is 2,880,000.", "The answer is 2880000.0."]
    assert gsm8k_reward(["q"] * 3, completions, answer=["#### 2,880,000"] * 3) == [0.0, 1.0, 1.0]


def test_gsm8k_reward_values():
    completions = ["so the answer is 18.", "The answer is $1,234.00", "I think 17", "no idea",
                   "\\boxed{0.5}", "The answer is 72."]
    answer = ["Janet makes 9 * 2 = 18.\n#### 18", "#### 1,234", "18", "#### 3", "1/2", 72]
    assert gsm8k_reward(["q"] * 6, completions, answer=answer, unused=[0] * 6) == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]


def test_gsm8k_reward_errors():
    with pytest.raises(ValueError, match=r"gsm8k_reward: gold answer 'n/a' of completion 1 has no number"):
        gsm8k_reward(["q", "q"], ["1", "2"], answer=["1", "n/a"])
    with pytest.raises(ValueError, match="gsm8k_reward: 1 gold answers for 2 completions"):
        gsm8k_reward(["q", "q"], ["1", "2"], answer=["1"])


@pytest.mark.parametrize("completion,expected", [
    ("3 + 4 = 7.\nThe answer is 7.", 1.0),
    ("3 + 4 = 7.\nThe answer is 7.\n\n  \n", 1.0),  # trailing blank lines are skipped
    ("The final answer is: $1,234.50.", 1.0),
    ("**The answer is 7.**", 1.0),
    ("the answer is -3.", 1.0),
    ("The answer is 50%.", 1.0),
    ("The answer is 1/2.", 1.0),
    ("The answer is 7", 0.0),  # no period
    ("The answer is 7.5", 0.0),  # the decimal point is not the final period
    ("The answer is 7.5.", 1.0),
    ("The answer is 1,234", 0.0),
    ("The answer is 7 apples.", 0.0),  # the period must follow N
    ("The answer is seven.", 0.0),
    ("The answer is 7.\nThanks!", 0.0),  # not on the last non-empty line
    ("Answer: 7.", 0.0),
    ("", 0.0),
])
def test_format_reward(completion, expected):
    assert format_reward(["q"], [completion]) == [expected]


def test_registry():
    assert REWARD_FUNCTIONS["gsm8k"] is gsm8k_reward and REWARD_FUNCTIONS["format"] is format_reward
    funcs = resolve_reward_functions(["gsm8k", "format"])
    assert list(funcs) == ["gsm8k", "format"] and funcs["format"] is format_reward
    assert resolve_reward_functions() == funcs  # the default
    with pytest.raises(ValueError, match=r"^unknown reward function 'length'; give a built-in name \(gsm8k, format\) "
                                         r"or an import path"):
        resolve_reward_functions(["gsm8k", "length"])
    with pytest.raises(ValueError, match="two reward functions are named 'gsm8k'; list each once"):
        resolve_reward_functions(["gsm8k", "gsm8k"])
    with pytest.raises(ValueError, match="no reward function given"):
        resolve_reward_functions([])


def const(value):
    def fn(prompts, completions, **kwargs):
        return [value] * len(completions)
    fn.__name__ = f"const_{value}"
    return fn


def test_score_weights_and_per_func():
    completions = ["The answer is 7.", "7", "The answer is 8."]
    total, per = score_completions(["gsm8k", "format"], [1.0, 0.2], ["q"] * 3, completions,
                                   {"answer": ["#### 7"] * 3})
    assert total.dtype == torch.float32 and total.shape == (3,)
    # gsm8k: 1, 1, 0; format: 1, 0, 1 -> 1 + 0.2, 1 + 0, 0 + 0.2
    torch.testing.assert_close(total, torch.tensor([1.2, 1.0, 0.2]))
    torch.testing.assert_close(per["gsm8k"], torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(per["format"], torch.tensor([1.0, 0.0, 1.0]))


def test_score_default_weights_list_of_functions():
    total, per = score_completions([const(2), const(0.5)], None, ["a", "b"], ["x", "y"])
    torch.testing.assert_close(total, torch.tensor([2.5, 2.5]))
    assert list(per) == ["const_2", "const_0.5"]


def test_score_accepts_tuples_arrays_tensors_and_kwargs_columns():
    def uses_column(prompts, completions, level, **kwargs):
        return np.array(level, dtype=np.float32) * 2

    def as_tensor(prompts, completions, **kwargs):
        return torch.tensor([1.0, 3.0])

    def as_tuple(prompts, completions, **kwargs):
        return (True, np.int64(4))

    total, _ = score_completions([uses_column, as_tensor, as_tuple], [1, 1, 1], ["a", "b"], ["x", "y"],
                                 {"level": [1, 2]})
    torch.testing.assert_close(total, torch.tensor([2 + 1 + 1.0, 4 + 3 + 4.0]))


def test_score_none_is_no_opinion():
    def picky(prompts, completions, **kwargs):
        return [None if c == "skip" else 10.0 for c in completions]

    total, per = score_completions({"picky": picky, "one": const(1)}, [0.5, 2.0], ["p"] * 3,
                                   ["a", "skip", "b"])
    torch.testing.assert_close(total, torch.tensor([0.5 * 10 + 2, 2.0, 0.5 * 10 + 2]))
    assert math.isnan(per["picky"][1].item()) and per["picky"][0].item() == 10.0


def test_score_no_opinion_on_a_completion_is_an_error():
    def only_first(prompts, completions, **kwargs):
        return [1.0] + [None] * (len(completions) - 1)

    def never(prompts, completions, **kwargs):
        return [None] * len(completions)

    with pytest.raises(ValueError, match=r"no reward function has an opinion on completion 1 \(all of only_first, "
                                         r"never returned None\)"):
        score_completions([only_first, never], None, ["p"] * 3, ["a", "b", "c"])


def test_score_function_raised_is_chained():
    def gsm8k_reward_broken(prompts, completions, **kwargs):
        raise ValueError("bad gold")

    with pytest.raises(RuntimeError, match="reward function 'gsm8k_reward_broken' raised ValueError: bad gold") as e:
        score_completions([gsm8k_reward_broken], None, ["p"], ["a"])
    assert isinstance(e.value.__cause__, ValueError)
    # a registered name is used in the message, and a missing column shows as the function's TypeError
    with pytest.raises(RuntimeError, match="reward function 'gsm8k' raised TypeError: .*answer"):
        score_completions("gsm8k", None, ["p"], ["a"])


@pytest.mark.parametrize("returned,message", [
    ([1.0, 2.0, 3.0], r"reward function 'bad' returned 3 rewards for 2 completions"),
    (1.0, r"reward function 'bad' returned float; it must return a list of 2 rewards"),
    ("10", r"reward function 'bad' returned str"),
    ({"a": 1}, r"reward function 'bad' returned dict"),
    ([1.0, float("nan")], r"reward function 'bad' returned nan for completion 1; rewards must be finite"),
    ([float("inf"), 1.0], r"reward function 'bad' returned inf for completion 0"),
    ([1.0, "1"], r"reward function 'bad' returned '1' \(str\) for completion 1; rewards must be numbers"),
    ([1.0, [1.0]], r"reward function 'bad' returned \[1.0\] \(list\) for completion 1"),
])
def test_score_bad_returns_name_the_function(returned, message):
    def bad(prompts, completions, **kwargs):
        return returned

    with pytest.raises(ValueError, match=message):
        score_completions([bad], None, ["p", "p"], ["a", "b"])


def test_score_argument_errors():
    with pytest.raises(ValueError, match=r"reward_weights has 1 values for 2 reward functions \(const_1, const_2\)"):
        score_completions([const(1), const(2)], [1.0], ["p"], ["a"])
    with pytest.raises(ValueError, match="two reward functions are named 'const_1'"):
        score_completions([const(1), const(1)], None, ["p"], ["a"])
    with pytest.raises(ValueError, match="score_completions: 2 prompts for 1 completions"):
        score_completions([const(1)], None, ["p", "q"], ["a"])
    with pytest.raises(ValueError, match="score_completions: column 'answer' has 1 values for 2 completions"):
        score_completions([const(1)], None, ["p", "q"], ["a", "b"], {"answer": ["1"]})
    with pytest.raises(ValueError, match="column 'completions' clashes"):
        score_completions([const(1)], None, ["p"], ["a"], {"completions": ["x"]})
    with pytest.raises(ValueError, match="no reward function given"):
        score_completions([], None, ["p"], ["a"])


def test_score_chat_prompts_pass_through():
    seen = []

    def record(prompts, completions, **kwargs):
        seen.append(prompts)
        return [0.0] * len(completions)

    chat = [[{"role": "user", "content": "2+2?"}]]
    score_completions([record], None, chat, ["4"])
    assert seen == [chat]


# ---------------------------------------------------------------- reward functions as users write them

def test_resolve_mixes_names_callables_and_dicts():
    brevity = const(3)
    assert resolve_reward_functions(brevity) == {"const_3": brevity}  # one callable, as TRL takes it
    assert resolve_reward_functions("format") == {"format": format_reward}  # one name
    mixed = resolve_reward_functions(["gsm8k", brevity])
    assert list(mixed) == ["gsm8k", "const_3"] and mixed["gsm8k"] is gsm8k_reward
    assert resolve_reward_functions({"short": brevity, "fmt": "format"}) == {"short": brevity, "fmt": format_reward}
    assert list(resolve_reward_functions([brevity, format_reward], weights=[1, 0.5])) == ["const_3", "format_reward"]
    with pytest.raises(ValueError, match=r"^reward_weights has 3 values for 2 reward functions \(gsm8k, const_3\)"):
        resolve_reward_functions(["gsm8k", brevity], weights=[1, 2, 3])
    with pytest.raises(ValueError, match=r"reward_weights: the weight of 'const_3' is nan; weights must be finite"):
        resolve_reward_functions(["gsm8k", brevity], weights=[1, float("nan")])
    with pytest.raises(ValueError, match="given twice"):
        resolve_reward_functions([brevity], names=["gsm8k"])
    with pytest.raises(ValueError, match=r"reward function 3 is a int; give a function, a built-in name"):
        resolve_reward_functions(["gsm8k", 3])


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_import_paths_module_and_file(tmp_path, monkeypatch):
    _write(tmp_path / "mypkg" / "__init__.py", "")
    _write(tmp_path / "mypkg" / "rewards.py",
           "def brevity(prompts, completions, **kw):\n    return [-len(c) for c in completions]\n"
           "class Judge:\n    @staticmethod\n    def score(prompts, completions, **kw):\n"
           "        return [1.0] * len(completions)\n"
           "NOT_A_FUNCTION = 3\n")
    _write(tmp_path / "elsewhere" / "my_rewards.py",
           "def has_seven(prompts, completions, **kw):\n    return [float('7' in c) for c in completions]\n")
    monkeypatch.chdir(tmp_path)  # a recipe's sys.path holds its own folder, not the working directory
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    funcs = resolve_reward_functions(["mypkg.rewards:brevity", "elsewhere/my_rewards.py:has_seven",
                                      "mypkg.rewards:Judge.score", "format"])
    assert list(funcs) == ["brevity", "has_seven", "score", "format"]
    total, per = score_completions(funcs, [1, 1, 1, 0], ["q", "q"], ["a7", "bbb"])
    assert per["brevity"].tolist() == [-2, -3] and per["has_seven"].tolist() == [1, 0]
    torch.testing.assert_close(total, torch.tensor([-2 + 1 + 1.0, -3 + 0 + 1.0]))
    # the same file resolves to the same function (imported once)
    again = resolve_reward_functions(str(tmp_path / "elsewhere" / "my_rewards.py") + ":has_seven")
    assert again["has_seven"] is funcs["has_seven"]


@pytest.mark.parametrize("spec, message", [
    ("nosuchpkg_xyz.rewards:fn", r"reward function 'nosuchpkg_xyz.rewards:fn': cannot import 'nosuchpkg_xyz.rewards' "
                                 r"\(ModuleNotFoundError: No module named 'nosuchpkg_xyz'\)"),
    ("missing_file.py:fn", r"reward function 'missing_file.py:fn': cannot import 'missing_file.py' "
                           r"\(FileNotFoundError: no file .*missing_file.py\)"),
    ("broken.py:fn", r"reward function 'broken.py:fn': cannot import 'broken.py' \(SyntaxError: "),
    ("raises.py:fn", r"reward function 'raises.py:fn': cannot import 'raises.py' \(ZeroDivisionError: "),
    ("good.py:nope", r"reward function 'good.py:nope': 'good.py' has no attribute 'nope'"),
    ("good.py:VALUE", r"reward function 'good.py:VALUE' is int 3, not a function"),
    ("good.py:", r"unknown reward function 'good.py:'"),
    ("lenght", r"unknown reward function 'lenght'"),
])
def test_import_path_errors_are_one_line(tmp_path, monkeypatch, spec, message):
    _write(tmp_path / "broken.py", "def fn(:\n")
    _write(tmp_path / "raises.py", "1 / 0\n")
    _write(tmp_path / "good.py", "VALUE = 3\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message) as e:
        resolve_reward_functions([spec])
    assert "\n" not in str(e.value)


def test_async_reward_functions_run_concurrently():
    """Each async function waits until all three are running at once: run one after another, the first would
    wait forever (here: time out after 10 s and fail); run together, all pass at once."""
    import asyncio

    started, running = [], {"n": 0}

    def judge(value):
        async def fn(prompts, completions, **kwargs):
            running["n"] += 1
            started.append(value)
            if running["n"] == 3:
                everyone.set()
            await asyncio.wait_for(everyone.wait(), timeout=10)
            return [value] * len(completions)
        fn.__name__ = f"judge_{value}"
        return fn

    everyone = asyncio.Event()
    total, per = score_completions([judge(1), const(10), judge(2), judge(4)], [1, 1, 1, 0.5], ["p", "p"], ["a", "b"])
    torch.testing.assert_close(total, torch.tensor([10 + 1 + 2 + 2.0] * 2))
    assert list(per) == ["judge_1", "const_10", "judge_2", "judge_4"] and sorted(started) == [1, 2, 4]


def test_async_reward_inside_a_running_event_loop_and_its_errors():
    import asyncio

    async def slow_one(prompts, completions, **kwargs):
        await asyncio.sleep(0)
        return [1.0] * len(completions)

    async def broken(prompts, completions, **kwargs):
        await asyncio.sleep(0)
        raise ConnectionError("judge unreachable")

    async def caller():  # as in a notebook, where an event loop already runs
        return score_completions([slow_one], None, ["p"], ["a"])

    total, _ = asyncio.run(caller())
    assert total.tolist() == [1.0]
    with pytest.raises(RuntimeError, match="reward function 'broken' raised ConnectionError: judge unreachable"):
        score_completions([slow_one, broken], None, ["p"], ["a"])

    async def one_value(prompts, completions, **kwargs):
        return [1.0]

    with pytest.raises(ValueError, match="reward function 'one_value' returned 1 rewards for 2 completions"):
        score_completions([one_value], None, ["p", "p"], ["a", "b"])


def test_completion_ids_and_trainer_state_reach_functions_that_take_them():
    seen = {}

    def by_name(prompts, completions, answer, completion_ids, trainer_state):  # no **kwargs: only what it names
        seen["by_name"] = (completion_ids, trainer_state)
        return [float(len(ids)) for ids in completion_ids]

    def by_kwargs(prompts, completions, **kwargs):
        seen["by_kwargs"] = sorted(kwargs)
        return [kwargs["trainer_state"]["step"]] * len(completions)

    def strict(prompts, completions, answer):  # today's contract: columns only, no **kwargs
        seen["strict"] = answer
        return [1.0] * len(completions)

    ids = [[5, 6, 7], [8]]
    state = {"step": 3}
    total, per = score_completions([by_name, by_kwargs, strict], None, ["p", "p"], ["x", "y"], {"answer": ["1", "2"]},
                                   completion_ids=ids, trainer_state=state)
    assert seen["by_name"] == (ids, state) and seen["by_kwargs"] == ["answer", "completion_ids", "trainer_state"]
    assert seen["strict"] == ["1", "2"]
    assert per["by_name"].tolist() == [3.0, 1.0] and per["by_kwargs"].tolist() == [3.0, 3.0]
    with pytest.raises(ValueError, match="column 'trainer_state' clashes"):
        score_completions([strict], None, ["p"], ["x"], {"answer": ["1"], "trainer_state": [1]})
    with pytest.raises(ValueError, match="score_completions: 1 completion_ids for 2 completions"):
        score_completions([strict], None, ["p", "p"], ["x", "y"], {"answer": ["1", "2"]}, completion_ids=[[1]])


def test_required_columns_skip_what_the_scorer_passes():
    from llmrl.llm.rewards import required_columns

    def uses(prompts, completions, answer, completion_ids, trainer_state, level=0, **kwargs):
        return [0.0] * len(completions)

    assert required_columns({"uses": uses, "gsm8k": gsm8k_reward}) == {"answer": "the reward function 'uses'"}


def test_conversational_prompts_give_assistant_message_completions():
    seen = []

    def record(prompts, completions, **kwargs):
        seen.append(completions)
        return [0.0] * len(completions)

    chat = [{"role": "user", "content": "2+2?"}]
    score_completions([record], None, [chat, chat], ["The answer is 4.", "5"])
    assert seen[-1] == [[{"role": "assistant", "content": "The answer is 4."}], [{"role": "assistant", "content": "5"}]]
    score_completions([record], None, ["2+2?"], ["4"])
    assert seen[-1] == ["4"]
    # the built-in rewards read either form
    total, per = score_completions(["gsm8k", "format"], None, [chat, chat], ["The answer is 4.", "5"],
                                   {"answer": ["#### 4", "#### 4"]})
    assert per["gsm8k"].tolist() == [1.0, 0.0] and per["format"].tolist() == [1.0, 0.0]
    with pytest.raises(TypeError, match="a completion must be a str or a list of chat messages"):
        format_reward(["q"], [{"content": "x"}])
