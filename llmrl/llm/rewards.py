"""Reward functions for LLM policy gradients, GSM8K answer extraction, and the scorer the trainer calls.

A reward function follows TRL's convention: `fn(prompts, completions, **columns) -> list[float | None]`, called
with keyword arguments. `prompts[i]` is whatever the dataset row held in its prompt column (a string or a list of
chat messages); `completions[i]` is the decoded completion, a string, or for a conversational prompt (chat
messages) the assistant message `[{"role": "assistant", "content": text}]`, as TRL gives it. Each extra dataset
column arrives as a keyword (e.g. `answer=[...]`) aligned with `completions`. None means "no opinion" on that
completion. Functions ignore columns they do not use (`**kwargs`).

A function that names them (or takes `**kwargs`) also gets, as TRL passes them, `completion_ids` (each
completion's token ids up to and including EOS, no padding) and `trainer_state` (a `transformers.TrainerState`
whose `global_step` is the number of steps done), and `model_prompts`: the prompt as the policy was given it
(for a question column, the chat with the system prompt), which a reward model needs to score the conversation. An `async def` function is awaited; the async functions of a
step run concurrently (a judge over HTTP), after the plain ones.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib
import importlib.util
import inspect
import math
import numbers
import os
import re
import sys
from fractions import Fraction
from typing import Any, Callable, Mapping, Sequence

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
    """Whether two normalized answers (extract_gsm8k_answer output) are the same number, compared exactly as
    rationals: "18.00" equals "18" and "1/2" equals "0.5", while "0.3333333" is not "1/3" and 2880001 is not
    2880000."""
    if pred is None:
        return False
    p, g = _as_fraction(pred), _as_fraction(gold)
    return p is not None and g is not None and p == g


def completion_text(completion: str | list) -> str:
    """A completion's text: the string itself, or the content of the last message of a conversational
    completion ([{"role": "assistant", "content": text}])."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], Mapping) \
            and isinstance(completion[-1].get("content"), str):
        return completion[-1]["content"]
    raise TypeError(f"a completion must be a str or a list of chat messages ending in one with a 'content' "
                    f"string, got {completion!r}")


def gsm8k_reward(prompts: list, completions: list, answer: list, **kwargs) -> list[float]:
    """1.0 where the completion's extracted answer equals the gold answer (exactly, as numbers), else 0.0.

    `answer[i]` is the full GSM8K answer ("...\\n#### 72") or a bare number ("72", 72, "1,234"). Completions are
    strings or conversational messages (completion_text).
    """
    if len(answer) != len(completions):
        raise ValueError(f"gsm8k_reward: {len(answer)} gold answers for {len(completions)} completions")
    rewards = []
    for i, (completion, gold_text) in enumerate(zip(completions, answer)):
        gold = extract_gsm8k_answer(str(gold_text))
        if gold is None or _as_fraction(gold) is None:
            raise ValueError(f"gsm8k_reward: gold answer {gold_text!r} of completion {i} has no number; "
                             f"the 'answer' column must hold GSM8K answers ('... #### N') or bare numbers")
        rewards.append(1.0 if answers_match(extract_gsm8k_answer(completion_text(completion)), gold) else 0.0)
    return rewards


def format_reward(prompts: list, completions: list, **kwargs) -> list[float]:
    """1.0 where the completion's last non-empty line contains "The answer is N." (N a number), else 0.0.

    Case-insensitive; "final answer" and a ':' after "is" are allowed; N may carry a sign, '$', commas, decimals or
    a '/den', and '%' may sit between N and the period, which must follow at once ("The answer is 5 apples." and
    "The answer is 5" get 0.0). Text around it on that line is allowed ("**The answer is 5.**").
    """
    rewards = []
    for completion in completions:
        lines = [line for line in completion_text(completion).splitlines() if line.strip()]
        rewards.append(1.0 if lines and _FORMAT_RE.search(lines[-1]) else 0.0)
    return rewards


REWARD_FUNCTIONS: dict[str, RewardFunc] = {"gsm8k": gsm8k_reward, "format": format_reward}
DEFAULT_REWARD_FUNCS = ("gsm8k", "format")
# The keywords the scorer passes besides the dataset columns: a column of one of these names cannot reach a function.
RESERVED_ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state", "model_prompts")


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _import_module(name: str):
    # A recipe runs with its own folder on sys.path, not the working directory; look there too, as `python -m`
    # would, so that `--reward_funcs mypkg.rewards:fn` finds the user's package.
    cwd = os.getcwd()
    added = "" not in sys.path and cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        return importlib.import_module(name)
    finally:
        if added:
            sys.path.remove(cwd)


def _import_file(path: str):
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no file {path}")
    name = "llmrl_reward_file_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    if name not in sys.modules:  # imported once per process (the config and the trainer both resolve it)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickle look a module up by name
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def _by_name(spec: str) -> tuple[str, RewardFunc]:
    """(name, function) for a built-in name or an import path 'package.module:function' / 'file.py:function'."""
    if spec in REWARD_FUNCTIONS:
        return spec, REWARD_FUNCTIONS[spec]
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise ValueError(f"unknown reward function {spec!r}; give a built-in name ({', '.join(REWARD_FUNCTIONS)}) "
                         f"or an import path 'package.module:function' or 'path/to/file.py:function'")
    try:
        obj = _import_file(where) if where.endswith(".py") else _import_module(where)
    except Exception as e:
        raise ValueError(f"reward function {spec!r}: cannot import {where!r} ({_one_line(e)})") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"reward function {spec!r}: {where!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"reward function {spec!r} is {type(obj).__name__} {obj!r}, not a function")
    return attr.split(".")[-1], obj


def resolve_reward_functions(funcs=None, weights: Sequence[float] | None = None,
                             names: Sequence[str] | str | None = None) -> dict[str, RewardFunc]:
    """The run's reward functions as an ordered dict name -> function, and their weights checked: the one place
    both are resolved (GRPOConfig validates its names through it, GRPOTrainer and score_completions call it).

    `funcs` is what a caller passes (as to TRL's GRPOTrainer): one function, one name, a list mixing functions and
    names, or a dict name -> function or name. `names` is GRPOConfig.reward_funcs. Give at most one of the two;
    with neither, DEFAULT_REWARD_FUNCS. A name is a built-in (REWARD_FUNCTIONS) or an import path
    'package.module:function' or 'path/to/file.py:function' (named after the function). A function is named by
    its dict key, else its __name__. `weights`: one finite number per function.
    """
    if funcs is not None and names is not None:
        raise ValueError("reward functions are given twice, as GRPOConfig.reward_funcs and to the trainer; give "
                         "them in one place")
    spec = funcs if funcs is not None else names if names is not None else DEFAULT_REWARD_FUNCS
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = [(None, f) for f in ([spec] if isinstance(spec, str) or callable(spec) else spec)]
    if not items:
        raise ValueError(f"no reward function given; give at least one function or name (built-in: "
                         f"{', '.join(REWARD_FUNCTIONS)})")
    named: dict[str, RewardFunc] = {}
    for key, item in items:
        if isinstance(item, str):
            name, fn = _by_name(item)
        elif callable(item):
            name, fn = getattr(item, "__name__", type(item).__name__), item
        else:
            raise ValueError(f"reward function {item!r} is a {type(item).__name__}; give a function, a built-in "
                             f"name or an import path 'module:function'")
        name = name if key is None else str(key)
        if name in named:
            raise ValueError(f"two reward functions are named {name!r}; list each once (weights scale them) or "
                             f"pass a dict name -> function")
        named[name] = fn
    if weights is not None:
        if len(weights) != len(named):
            raise ValueError(f"reward_weights has {len(weights)} values for {len(named)} reward functions "
                             f"({', '.join(named)}); give one weight per function")
        for name, w in zip(named, weights):
            if not isinstance(w, numbers.Real) or not math.isfinite(w):
                raise ValueError(f"reward_weights: the weight of {name!r} is {w!r}; weights must be finite numbers")
    return named


def required_columns(reward_funcs: Mapping[str, RewardFunc]) -> dict[str, str]:
    """Dataset columns the reward functions need (keyword parameters without a default, other than the
    RESERVED_ARGUMENTS the scorer passes itself), each mapped to who needs it, for check_columns' message."""
    need = {}
    for name, fn in reward_funcs.items():
        for p in _parameters(fn):
            if p.name not in RESERVED_ARGUMENTS and p.default is p.empty and \
                    p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                need.setdefault(p.name, f"the reward function {name!r}")
    return need


def _parameters(fn) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a callable whose signature Python cannot read: columns only, as always
        return []


def _extras_for(fn, extras: dict) -> dict:
    """The extra keywords (completion_ids, trainer_state, model_prompts) a function takes: those it names, or all with **kwargs;
    a function that takes neither is called exactly as before they existed."""
    params = _parameters(fn)
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return extras
    return {k: v for k, v in extras.items() if k in {p.name for p in params}}


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


def _raised(name: str, e: Exception) -> RuntimeError:
    return RuntimeError(f"reward function {name!r} raised {type(e).__name__}: {e}")


def _await_concurrently(pending: dict[str, Any]) -> dict[str, Any]:
    """Await the async reward functions' results together on a fresh event loop (on a worker thread where this
    thread already runs one, as in a notebook), so their waits (HTTP calls to a judge) overlap."""
    async def one(name, awaitable):
        try:
            return await awaitable
        except Exception as e:
            raise _raised(name, e) from e

    async def together():
        return await asyncio.gather(*(one(name, a) for name, a in pending.items()))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return dict(zip(pending, asyncio.run(together())))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return dict(zip(pending, pool.submit(asyncio.run, together()).result()))


def score_completions(reward_funcs, weights: Sequence[float] | None, prompts: list, completions: list[str],
                      columns: Mapping[str, list] | None = None, completion_ids: list[list[int]] | None = None,
                      trainer_state: Any = None, model_prompts: list | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted total reward r_i = sum_f w_f r_f(i) over the functions with an opinion on completion i; (N,).

    `reward_funcs` is anything resolve_reward_functions takes (a dict name -> function, functions, names).
    `prompts[i]` is the dataset's prompt of completion i; where it is chat messages, the functions get each
    completion text as the assistant message [{"role": "assistant", "content": text}] (TRL's conversational
    format). `completion_ids`, `trainer_state` and `model_prompts` reach the functions that take them (see the
    module docstring).
    Plain functions run in order, then the async ones together.

    Returns (total (N,) float32, per_func name -> (N,) float32 with NaN where the function returned None).
    A function returning a number counts as an opinion even if its weight is 0; a completion on which no
    function has an opinion is an error.
    """
    named = resolve_reward_functions(reward_funcs, weights)
    weights = [1.0] * len(named) if weights is None else [float(w) for w in weights]
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"score_completions: {len(prompts)} prompts for {n} completions; repeat each prompt once "
                         f"per completion")
    columns = dict(columns or {})
    for key, values in columns.items():
        if key in RESERVED_ARGUMENTS:
            raise ValueError(f"score_completions: column {key!r} clashes with the reward function argument of the "
                             f"same name; rename the column")
        if len(values) != n:
            raise ValueError(f"score_completions: column {key!r} has {len(values)} values for {n} completions")
    if completion_ids is not None and len(completion_ids) != n:
        raise ValueError(f"score_completions: {len(completion_ids)} completion_ids for {n} completions")
    if model_prompts is not None and len(model_prompts) != n:
        raise ValueError(f"score_completions: {len(model_prompts)} model_prompts for {n} completions")
    extras = {k: v for k, v in (("completion_ids", completion_ids), ("trainer_state", trainer_state),
                                ("model_prompts", model_prompts)) if v is not None}
    completions = [[{"role": "assistant", "content": c}] if isinstance(p, list) and isinstance(c, str) else c
                   for p, c in zip(prompts, completions)]
    outputs, pending = {}, {}
    try:
        for name, fn in named.items():
            try:
                out = fn(prompts=prompts, completions=completions, **columns, **_extras_for(fn, extras))
            except Exception as e:
                raise _raised(name, e) from e
            (pending if inspect.isawaitable(out) else outputs)[name] = out
    except BaseException:
        for awaitable in pending.values():  # never awaited: close them so Python does not warn about it
            if inspect.iscoroutine(awaitable):
                awaitable.close()
        raise
    outputs.update(_await_concurrently(pending) if pending else {})
    per_func = {name: torch.tensor(_check_rewards(name, outputs[name], n), dtype=torch.float64) for name in named}
    stacked = torch.stack(list(per_func.values())) if n else torch.zeros(len(named), 0, dtype=torch.float64)
    has_opinion = ~torch.isnan(stacked)
    silent = (~has_opinion.any(dim=0)).nonzero().flatten()
    if len(silent):
        raise ValueError(f"no reward function has an opinion on completion {silent[0].item()} (all of "
                         f"{', '.join(named)} returned None); make at least one return a number for it")
    w = torch.tensor(weights, dtype=torch.float64).unsqueeze(1)
    total = torch.where(has_opinion, w * stacked, torch.zeros_like(stacked)).sum(dim=0)
    return total.float(), {name: r.float() for name, r in per_func.items()}
