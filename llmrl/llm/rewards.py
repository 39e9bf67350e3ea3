"""Reward functions for LLM policy gradients, GSM8K answer extraction, and the scorer the trainer calls.

A reward function follows TRL's convention: `fn(prompts, completions, **columns) -> list[float | None]`, called
with keyword arguments. `prompts[i]` is whatever the dataset row held (a string or a list of chat messages),
`completions[i]` the decoded completion, and each extra dataset column arrives as a keyword (e.g. `answer=[...]`)
aligned with `completions`. None means "no opinion" on that completion. Functions ignore columns they do not
use (`**kwargs`).
"""
from __future__ import annotations

import math
import numbers
import re
from fractions import Fraction
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

RewardFunc = Callable[..., list]

# A number as written in text: optional sign (ASCII '-' or unicode minus U+2212) and dollar sign in either order,
# comma thousands groups, decimals, and an optional '/den' fraction. The lookbehind keeps digits glued to a word
# or to another number ("x2", "H2O", "v1.5") from matching.
_NUM = (
    r"(?<![\w.])"
    r"(?:(?P<neg>[-\u2212])\$?|\$(?P<neg2>[-\u2212])?)?"
    r"(?P<num>[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
    r"(?:/(?P<den>[0-9]+)(?!\.?[0-9]))?"
)
# What may sit between a marker and its number: spaces, markdown bold, '$' and LaTeX wrappers.
_FILLER = r"(?:\s|\*|\\?\$|\\boxed\s*\{|\\text\s*\{|\\\(|\\\[|\{)*"

_NUMBER_RE = re.compile(_NUM)
_GOLD_RE = re.compile(r"####\s*" + _NUM)
_ANSWER_IS_RE = re.compile(r"\banswer\s*(?:is\b\s*:?|:|=)\s*" + _FILLER + _NUM, re.IGNORECASE)
_BOXED_RE = re.compile(r"\\boxed\s*\{" + _FILLER + _NUM)
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([0-9]+)\s*\}\s*\{\s*([0-9]+)\s*\}")
# format_reward: "The answer is N." with the period right after the number (an optional '%' between); the
# lookahead stops "7.5" from passing as "7" + ".".
_FORMAT_RE = re.compile(r"\bthe\s+(?:final\s+)?answer\s+is\s*:?\s*" + _NUM + r"%?\.(?![0-9])", re.IGNORECASE)

# Two answers are equal when |pred - gold| <= ANSWER_RTOL * max(1, |gold|) ("0.3333333" matches "1/3").
ANSWER_RTOL = 1e-6


def _normalize(match: re.Match) -> str:
    """The matched number as a canonical string: no '$' or commas, no trailing zeros, '-' only if nonzero."""
    num = match.group("num").replace(",", "")
    whole, _, frac = num.partition(".")
    frac = frac.rstrip("0")
    text = (whole.lstrip("0") or "0") + ("." + frac if frac else "")
    den = match.group("den")
    if den is not None:
        text += "/" + (den.lstrip("0") or "0")
    negative = match.group("neg") or match.group("neg2")
    is_zero = text.split("/")[0] == "0"
    return "-" + text if negative and not is_zero else text


def _last(pattern: re.Pattern, text: str) -> str | None:
    last = None
    for last in pattern.finditer(text):
        pass
    return None if last is None else _normalize(last)


def extract_gsm8k_answer(text: str) -> str | None:
    """The final numeric answer of a GSM8K-style text as a normalized number string, or None if it has no number.

    Rules in priority order; within a rule the LAST occurrence wins (a model that corrects itself):
      1. the gold form "#### N";
      2. "answer is N" / "answer: N" / "answer = N", case-insensitive ("The final answer is: $1,234.50." ->
         "1234.5"); markdown bold, '$' and \\boxed{ may sit between the marker and N;
      3. "\\boxed{N}" (also "\\boxed{\\$N}", "\\boxed{N\\%}");
      4. otherwise the last number in the text.
    A marker with no number after it ("the answer is unclear") is skipped and the next rule applies, so
    "The answer is 5. Actually 6" gives "5" (rule 2 beats rule 4).
    Normalization: '$', thousands commas and a sentence's final '.' dropped; units and '%' after the number
    ignored; '-' or unicode minus kept ("-0" -> "0"); decimals lose trailing zeros ("3.50" -> "3.5", "4.0" -> "4",
    ".5" -> "0.5"); leading zeros dropped. Fractions stay fractions, unreduced: "1/2" and LaTeX \\frac{1}{2} give
    "1/2" (gsm8k_reward compares values, so "1/2" equals "0.5").
    Edge cases: digits glued after a letter or inside a version-like "v1.5" are not numbers ("x2", "H2O"), while
    digits followed by letters are ("12kg" -> "12"); "3 - 5" is 3 and 5 but "-5" is -5; a comma group must have
    exactly three digits ("1,2345" is 1 and 2345; "3,5" is 3 and 5, no decimal comma); "1e6" gives "1".
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_gsm8k_answer: text must be a str, got {type(text).__name__}")
    text = _LATEX_FRAC_RE.sub(r"\1/\2", text.replace("{,}", ","))
    for pattern in (_GOLD_RE, _ANSWER_IS_RE, _BOXED_RE, _NUMBER_RE):
        answer = _last(pattern, text)
        if answer is not None:
            return answer
    return None


def _as_fraction(answer: str) -> Fraction | None:
    try:
        return Fraction(answer)
    except ZeroDivisionError:  # "5/0" is a number-shaped string with no value
        return None


def answers_match(pred: str | None, gold: str) -> bool:
    """Whether two normalized answers (extract_gsm8k_answer output) are equal within ANSWER_RTOL."""
    if pred is None:
        return False
    p, g = _as_fraction(pred), _as_fraction(gold)
    return p is not None and g is not None and abs(p - g) <= ANSWER_RTOL * max(1, abs(g))


def gsm8k_reward(prompts: list, completions: list[str], answer: list, **kwargs) -> list[float]:
    """1.0 where the completion's extracted answer equals the gold answer numerically, else 0.0.

    `answer[i]` is the full GSM8K answer ("...\\n#### 72") or a bare number ("72", 72, "1,234").
    """
    if len(answer) != len(completions):
        raise ValueError(f"gsm8k_reward: {len(answer)} gold answers for {len(completions)} completions")
    rewards = []
    for i, (completion, gold_text) in enumerate(zip(completions, answer)):
        gold = extract_gsm8k_answer(str(gold_text))
        if gold is None or _as_fraction(gold) is None:
            raise ValueError(f"gsm8k_reward: gold answer {gold_text!r} of completion {i} has no number; "
                             f"the 'answer' column must hold GSM8K answers ('... #### N') or bare numbers")
        rewards.append(1.0 if answers_match(extract_gsm8k_answer(completion), gold) else 0.0)
    return rewards


def format_reward(prompts: list, completions: list[str], **kwargs) -> list[float]:
    """1.0 where the completion's last non-empty line contains "The answer is N." (N a number), else 0.0.

    Case-insensitive; "final answer" and a ':' after "is" are allowed; N may carry a sign, '$', commas, decimals or
    a '/den', and '%' may sit between N and the period, which must follow at once ("The answer is 5 apples." and
    "The answer is 5" get 0.0). Text around it on that line is allowed ("**The answer is 5.**").
    """
    rewards = []
    for completion in completions:
        lines = [line for line in completion.splitlines() if line.strip()]
        rewards.append(1.0 if lines and _FORMAT_RE.search(lines[-1]) else 0.0)
    return rewards


REWARD_FUNCTIONS: dict[str, RewardFunc] = {"gsm8k": gsm8k_reward, "format": format_reward}


def get_reward_functions(names: Sequence[str]) -> dict[str, RewardFunc]:
    """The registered reward functions for `names` (e.g. ["gsm8k", "format"]) as an ordered dict name -> fn."""
    if isinstance(names, str) or not names:
        raise ValueError(f"get_reward_functions: give a non-empty list of names from {sorted(REWARD_FUNCTIONS)}, "
                         f"got {names!r}")
    funcs = {}
    for name in names:
        if name not in REWARD_FUNCTIONS:
            raise ValueError(f"unknown reward function {name!r}; known: {', '.join(sorted(REWARD_FUNCTIONS))}")
        if name in funcs:
            raise ValueError(f"reward function {name!r} is listed twice; list each once and weight it instead")
        funcs[name] = REWARD_FUNCTIONS[name]
    return funcs


def _named(reward_funcs: Mapping[str, RewardFunc] | Sequence[RewardFunc]) -> dict[str, RewardFunc]:
    if isinstance(reward_funcs, Mapping):
        return dict(reward_funcs)
    named = {}
    for fn in reward_funcs:
        name = getattr(fn, "__name__", type(fn).__name__)
        if name in named:
            raise ValueError(f"two reward functions are named {name!r}; pass a dict name -> function instead")
        named[name] = fn
    return named


def _check_rewards(name: str, rewards, n: int) -> list[float]:
    """The rewards one function returned as floats (NaN for None), or a one-line error naming the function."""
    if isinstance(rewards, (Tensor, np.ndarray)) and rewards.ndim == 1:
        rewards = rewards.tolist()
    if not isinstance(rewards, (list, tuple)):
        raise ValueError(f"reward function {name!r} returned {type(rewards).__name__}; it must return a list of "
                         f"{n} rewards (numbers, or None for no opinion), one per completion")
    if len(rewards) != n:
        raise ValueError(f"reward function {name!r} returned {len(rewards)} rewards for {n} completions")
    values = []
    for i, r in enumerate(rewards):
        if r is None:
            values.append(math.nan)
            continue
        if isinstance(r, Tensor) and r.numel() == 1:
            r = r.item()
        if not isinstance(r, numbers.Real):
            raise ValueError(f"reward function {name!r} returned {r!r} ({type(r).__name__}) for completion {i}; "
                             f"rewards must be numbers, or None for no opinion")
        if not math.isfinite(r):
            raise ValueError(f"reward function {name!r} returned {r} for completion {i}; rewards must be finite "
                             f"(return None for no opinion)")
        values.append(float(r))
    return values


def score_completions(reward_funcs: Mapping[str, RewardFunc] | Sequence[RewardFunc],
                      weights: Sequence[float] | None, prompts: list, completions: list[str],
                      columns: Mapping[str, list] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted total reward r_i = sum_f w_f r_f(i) over the functions with an opinion on completion i; (N,).

    Returns (total (N,) float32, per_func name -> (N,) float32 with NaN where the function returned None).
    Functions are named by their dict key, else their __name__. A function returning a number counts as an
    opinion even if its weight is 0; a completion on which no function has an opinion is an error.
    """
    named = _named(reward_funcs)
    if not named:
        raise ValueError("score_completions: reward_funcs is empty; give at least one reward function")
    weights = [1.0] * len(named) if weights is None else [float(w) for w in weights]
    if len(weights) != len(named):
        raise ValueError(f"score_completions: {len(weights)} weights for {len(named)} reward functions "
                         f"({', '.join(named)}); give one weight per function")
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"score_completions: {len(prompts)} prompts for {n} completions; repeat each prompt once "
                         f"per completion")
    columns = dict(columns or {})
    for key, values in columns.items():
        if key in ("prompts", "completions"):
            raise ValueError(f"score_completions: column {key!r} clashes with the reward function argument of the "
                             f"same name; rename the column")
        if len(values) != n:
            raise ValueError(f"score_completions: column {key!r} has {len(values)} values for {n} completions")
    per_func = {}
    for name, fn in named.items():
        try:
            rewards = fn(prompts=prompts, completions=completions, **columns)
        except Exception as e:
            raise RuntimeError(f"reward function {name!r} raised {type(e).__name__}: {e}") from e
        per_func[name] = torch.tensor(_check_rewards(name, rewards, n), dtype=torch.float64)
    stacked = torch.stack(list(per_func.values())) if n else torch.zeros(len(named), 0, dtype=torch.float64)
    has_opinion = ~torch.isnan(stacked)
    silent = (~has_opinion.any(dim=0)).nonzero().flatten()
    if len(silent):
        raise ValueError(f"no reward function has an opinion on completion {silent[0].item()} (all of "
                         f"{', '.join(named)} returned None); make at least one return a number for it")
    w = torch.tensor(weights, dtype=torch.float64).unsqueeze(1)
    total = torch.where(has_opinion, w * stacked, torch.zeros_like(stacked)).sum(dim=0)
    return total.float(), {name: r.float() for name, r in per_func.items()}
