import json
import math
import os

import numpy as np
import pytest
import torch

from llmrl.llm.rewards import (REWARD_FUNCTIONS, answers_match, extract_gsm8k_answer, format_reward,
                               get_reward_functions, gsm8k_reward, score_completions)

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


def test_answers_match():
    assert answers_match("1/2", "0.5")
    assert answers_match("3.5", "3.50")
    assert answers_match("0.3333333", "1/3")  # within ANSWER_RTOL
    assert not answers_match("0.333", "1/3")
    assert answers_match("1000000.5", "1000000.5000001")
    assert not answers_match("7", "8")
    assert not answers_match(None, "8")
    assert not answers_match("5/0", "5")


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
    funcs = get_reward_functions(["gsm8k", "format"])
    assert list(funcs) == ["gsm8k", "format"] and funcs["format"] is format_reward
    with pytest.raises(ValueError, match="unknown reward function 'length'; known: format, gsm8k"):
        get_reward_functions(["gsm8k", "length"])
    with pytest.raises(ValueError, match="listed twice"):
        get_reward_functions(["gsm8k", "gsm8k"])
    with pytest.raises(ValueError, match="non-empty list"):
        get_reward_functions([])


def const(value):
    def fn(prompts, completions, **kwargs):
        return [value] * len(completions)
    fn.__name__ = f"const_{value}"
    return fn


def test_score_weights_and_per_func():
    completions = ["The answer is 7.", "7", "The answer is 8."]
    total, per = score_completions(get_reward_functions(["gsm8k", "format"]), [1.0, 0.2], ["q"] * 3, completions,
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
        score_completions(get_reward_functions(["gsm8k"]), None, ["p"], ["a"])


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
    with pytest.raises(ValueError, match=r"score_completions: 1 weights for 2 reward functions \(const_1, const_2\)"):
        score_completions([const(1), const(2)], [1.0], ["p"], ["a"])
    with pytest.raises(ValueError, match="two reward functions are named 'const_1'"):
        score_completions([const(1), const(1)], None, ["p"], ["a"])
    with pytest.raises(ValueError, match="score_completions: 2 prompts for 1 completions"):
        score_completions([const(1)], None, ["p", "q"], ["a"])
    with pytest.raises(ValueError, match="score_completions: column 'answer' has 1 values for 2 completions"):
        score_completions([const(1)], None, ["p", "q"], ["a", "b"], {"answer": ["1"]})
    with pytest.raises(ValueError, match="column 'completions' clashes"):
        score_completions([const(1)], None, ["p"], ["a"], {"completions": ["x"]})
    with pytest.raises(ValueError, match="reward_funcs is empty"):
        score_completions([], None, ["p"], ["a"])


def test_score_chat_prompts_pass_through():
    seen = []

    def record(prompts, completions, **kwargs):
        seen.append(prompts)
        return [0.0] * len(completions)

    chat = [[{"role": "user", "content": "2+2?"}]]
    score_completions([record], None, chat, ["4"])
    assert seen == [chat]
