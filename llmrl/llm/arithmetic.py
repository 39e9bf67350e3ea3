"""The project's own small dataset: seeded, templated add/subtract word problems in GSM8K format.

Each row is {"question": ..., "answer": "<one-line worked solution>\\n#### N"}, e.g.
    {"question": "Tom has 3 apples and buys 4 more. How many apples does Tom have now?",
     "answer": "Tom has 3 apples and buys 4 more: 3 + 4 = 7.\\n#### 7"}
Addition questions end with "now?", subtraction questions with "left?", and answers are never negative.

The files bundled with llmrl (llmrl/data/arithmetic, `load_prompt_dataset("arithmetic")`, GRPOConfig's default
dataset) were written from a clone's root by:

    python -m llmrl.llm.arithmetic --out llmrl/data/arithmetic --n_train 2000 --n_test 200 --digits 1 --seed 0
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Sequence

from llmrl.utils import parse_config

# Each template: (add question, add step, subtract question, subtract step), formatted with name, a, b.
TEMPLATES = [
    ("{name} has {a} apples and buys {b} more. How many apples does {name} have now?",
     "{name} has {a} apples and buys {b} more",
     "{name} has {a} apples and eats {b} of them. How many apples does {name} have left?",
     "{name} has {a} apples and eats {b}"),
    ("{name} has {a} coins and finds {b} more. How many coins does {name} have now?",
     "{name} has {a} coins and finds {b} more",
     "{name} has {a} coins and spends {b} of them. How many coins does {name} have left?",
     "{name} has {a} coins and spends {b}"),
    ("There are {a} books on {name}'s shelf. {name} puts {b} more books on it. How many books are on the shelf now?",
     "The shelf has {a} books and {name} adds {b}",
     "There are {a} books on {name}'s shelf. {name} takes {b} books away. How many books are left on the shelf?",
     "The shelf has {a} books and {name} takes {b} away"),
    ("{name} has {a} marbles and wins {b} more. How many marbles does {name} have now?",
     "{name} has {a} marbles and wins {b} more",
     "{name} has {a} marbles and loses {b} of them. How many marbles does {name} have left?",
     "{name} has {a} marbles and loses {b}"),
    ("{name} bakes {a} cookies and then bakes {b} more. How many cookies does {name} have now?",
     "{name} bakes {a} cookies and then {b} more",
     "{name} bakes {a} cookies and gives {b} to friends. How many cookies does {name} have left?",
     "{name} bakes {a} cookies and gives away {b}"),
    ("{name} has {a} pencils and gets {b} more at school. How many pencils does {name} have now?",
     "{name} has {a} pencils and gets {b} more",
     "{name} has {a} pencils and breaks {b} of them. How many pencils does {name} have left?",
     "{name} has {a} pencils and breaks {b}"),
    ("{name} collects {a} shells in the morning and {b} more in the afternoon. How many shells does {name} have "
     "now?",
     "{name} collects {a} shells and then {b} more",
     "{name} collects {a} shells and drops {b} of them. How many shells does {name} have left?",
     "{name} collects {a} shells and drops {b}"),
    ("{name} has {a} stickers and receives {b} more. How many stickers does {name} have now?",
     "{name} has {a} stickers and receives {b} more",
     "{name} has {a} stickers and uses {b} of them. How many stickers does {name} have left?",
     "{name} has {a} stickers and uses {b}"),
]
NAMES = ["Tom", "Anna", "Ravi", "Mei", "Lucas", "Sara", "Omar", "Lena", "Kofi", "Yuki", "Diego", "Emma"]
OPS = ("add", "subtract")


@dataclass
class ArithmeticConfig:
    out: str = field(default="llmrl/data/arithmetic",
                     metadata={"help": "Directory for train.jsonl and test.jsonl (default: the bundled copy, run "
                                       "from a clone's root)."})
    n_train: int = field(default=2000, metadata={"help": "Number of training problems."})
    n_test: int = field(default=200, metadata={"help": "Number of test problems (no question shared with train)."})
    digits: int = field(default=1, metadata={"help": "Digits of each operand (1: 2..9, 2: 10..99, ...)."})
    ops: list[str] = field(default_factory=lambda: list(OPS), metadata={"help": "Operations: add and/or subtract."})
    seed: int = field(default=0, metadata={"help": "Random seed; the same config gives the same files."})

    def __post_init__(self):
        if self.digits < 1:
            raise ValueError(f"ArithmeticConfig.digits must be >= 1, got {self.digits}")
        if not self.ops or set(self.ops) - set(OPS):
            raise ValueError(f"ArithmeticConfig.ops must be a non-empty subset of {OPS}, got {self.ops}")
        if self.n_train < 0 or self.n_test < 0:
            raise ValueError(f"ArithmeticConfig.n_train and n_test must be >= 0, got {self.n_train}, {self.n_test}")


def operand_range(digits: int) -> tuple[int, int]:
    """Smallest and largest operand with `digits` digits; one digit starts at 2 so every count reads as a plural."""
    return (2 if digits == 1 else 10 ** (digits - 1)), 10 ** digits - 1


def num_distinct_questions(digits: int, ops: Sequence[str]) -> int:
    """How many different questions the templates can produce (the most rows train + test can hold)."""
    lo, hi = operand_range(digits)
    n = hi - lo + 1
    pairs = {"add": n * n, "subtract": n * (n + 1) // 2}  # subtract needs a >= b
    return len(TEMPLATES) * len(NAMES) * sum(pairs[op] for op in set(ops))


def make_problem(template: int, name: str, op: str, a: int, b: int) -> dict:
    """One GSM8K-format row: the question and "<worked step>: a op b = c.\\n#### c"."""
    add_q, add_step, sub_q, sub_step = TEMPLATES[template]
    if op == "add":
        question, step, c, sign = add_q, add_step, a + b, "+"
    else:
        question, step, c, sign = sub_q, sub_step, a - b, "-"
    step = step.format(name=name, a=a, b=b)
    return {"question": question.format(name=name, a=a, b=b),
            "answer": f"{step[0].upper()}{step[1:]}: {a} {sign} {b} = {c}.\n#### {c}"}


def generate(n: int, digits: int = 1, ops: Sequence[str] = OPS, seed: int = 0) -> list[dict]:
    """n distinct problems (no repeated question), the same for the same arguments."""
    capacity = num_distinct_questions(digits, ops)
    if n > capacity:
        raise ValueError(f"generate: asked for {n} problems but digits={digits}, ops={list(ops)} allow only "
                         f"{capacity} distinct questions; ask for fewer or raise digits")
    rng = random.Random(seed)
    lo, hi = operand_range(digits)
    ops = sorted(set(ops))
    rows, seen = [], set()
    while len(rows) < n:
        op, template, name = rng.choice(ops), rng.randrange(len(TEMPLATES)), rng.choice(NAMES)
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if op == "subtract" and a < b:
            a, b = b, a
        row = make_problem(template, name, op, a, b)
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    return rows


def write_jsonl(rows: list[dict], path: str) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(ArithmeticConfig, argv)
    # One stream of distinct questions split in two, so train and test never share a question.
    rows = generate(cfg.n_train + cfg.n_test, cfg.digits, cfg.ops, cfg.seed)
    os.makedirs(cfg.out, exist_ok=True)
    write_jsonl(rows[:cfg.n_train], os.path.join(cfg.out, "train.jsonl"))
    write_jsonl(rows[cfg.n_train:], os.path.join(cfg.out, "test.jsonl"))
    print(f"wrote {cfg.n_train} train and {cfg.n_test} test problems to {cfg.out}")


if __name__ == "__main__":
    main()
