"""The quickstart task: two-digit addition in the R1-Zero format, generated on the fly.

A problem is `What is 47 + 85?` with the answer `132`. A worked trace adds the columns from the
units up, carrying as a person does on paper, then states the sum:

    ` 7+5=12, 4+8+1=13 </think> <answer> 132 </answer>`

(the prompt ends in `Assistant: <think>`, so the response is what follows it). Every step is a
one-digit sum, and the answer is the column digits read back.

The SFT traces come from a *sloppy teacher* who forgets each carry with probability `carry_slip`
(0.7 in the quickstart), the final one (the sum's leading digit) included: its trace stays
consistent (`7+5=12, 4+8=12`, so the sum reads `122`, or `22` if the leading 1 is forgotten too)
but the answer is wrong. The teacher is right on ~41% of the problems, and imitation learns the
slip along with the method: greedy decoding follows the majority and forgets every carry, so the
SFT warm-up stops near the share of problems without any carry (~24%). GRPO, rewarded only when the
verified answer is right, learns to always carry (~90%+): most of the final accuracy is RL on a
verifiable reward going past the demonstrations it was warmed up on
(`benchmarks/results/quickstart_seeds.md` has both over 8 seeds).

Operands always have the same number of digits: a fixed layout lets a tiny model find "the units
digit of the second number" quickly (mixed 2- and 3-digit operands did not train in the CPU budget).
"""

from __future__ import annotations

import json
import random
import re
from importlib import resources
from pathlib import Path

from r1_lightning.data.templates import load_template, render_prompt

QUESTION_FORMAT = "What is {a} + {b}?"
_QUESTION_PATTERN = re.compile(r"What is (\d+) \+ (\d+)\?")
# A shortened R1-Zero prompt (first sentence + `User:`/`Assistant: <think>`): ~48 tokens instead of
# ~104 for the full one, which made SFT and GRPO on the CPU about 2.5x slower end to end.
PROMPT_TEMPLATE = str(resources.files("r1_lightning.quickstart").joinpath("assets", "r1_zero_short.prompt"))
SFT_CARRY_SLIP = 0.7


def make_problem(rng: random.Random, n_digits: int = 2) -> tuple[str, str]:
    """A random sum of two `n_digits`-digit numbers (no leading zeros): `(question, answer)`."""
    low, high = 10 ** (n_digits - 1), 10**n_digits - 1
    a, b = rng.randint(low, high), rng.randint(low, high)
    return QUESTION_FORMAT.format(a=a, b=b), str(a + b)


def parse_question(question: str) -> tuple[int, int]:
    match = _QUESTION_PATTERN.fullmatch(question)
    if match is None:
        raise ValueError(f"not a quickstart question: {question!r}")
    return int(match.group(1)), int(match.group(2))


def make_trace(question: str, answer: str, rng: random.Random | None = None, carry_slip: float = 0.0) -> str:
    """The response to `question`: column sums from the units up, then the answer in tags.

    With `carry_slip > 0` (and an `rng`), each carry (into the next column, or out of the last one as
    the leading digit) is forgotten with that probability and the trace ends in the teacher's wrong
    sum; with `carry_slip == 0` it ends in `answer` (checked).
    """
    if carry_slip > 0 and rng is None:
        raise ValueError("a sloppy trace (carry_slip > 0) needs an rng")
    a_digits, b_digits = (_digits_from_units(n) for n in parse_question(question))
    n_columns = max(len(a_digits), len(b_digits))
    steps, sum_digits, carry = [], [], 0
    for column in range(n_columns):
        terms = [digits[column] for digits in (a_digits, b_digits) if column < len(digits)]
        if carry:
            terms.append(carry)
        column_sum = sum(terms)
        steps.append("+".join(map(str, terms)) + f"={column_sum}")
        sum_digits.append(column_sum % 10)
        carry = column_sum // 10
        slips = carry_slip > 0 and carry and rng.random() < carry_slip
        if slips:
            carry = 0  # the next column never sees it
    if carry:
        sum_digits.append(carry)
    traced_answer = "".join(map(str, reversed(sum_digits)))
    if carry_slip == 0 and traced_answer != answer:
        raise ValueError(f"answer {answer!r} is not the sum in {question!r} ({traced_answer})")
    return f" {', '.join(steps)} </think> <answer> {traced_answer} </answer>"


def _digits_from_units(number: int) -> list[int]:
    return [int(digit) for digit in reversed(str(number))]


def write_task_files(
    out_dir: str | Path,
    n_train: int = 4000,
    n_val: int = 200,
    n_sft: int = 4000,
    seed: int = 0,
    n_digits: int = 2,
    carry_slip: float = SFT_CARRY_SLIP,
    template: str = PROMPT_TEMPLATE,
) -> dict[str, Path]:
    """Write the quickstart data set; return the paths by name.

    - `val.jsonl`, `train.jsonl`: `{"problem", "answer"}` (the MATH reader's fields), the GRPO
      prompts and the held-out evaluation; no val question appears in train or SFT;
    - `sft.jsonl`: `{"prompt", "response", "ground_truth"}`, the sloppy teacher's traces (the
      response may end in a wrong sum; `ground_truth` is always the true one);
    - `template.prompt`: the prompt template the SFT prompts were rendered with, for the GRPO phase.
    The same arguments give the same files, byte for byte.
    """
    n_distinct = (9 * 10 ** (n_digits - 1)) ** 2
    if n_val + max(n_train, n_sft) > n_distinct:
        raise ValueError(f"{n_digits}-digit addition has only {n_distinct} distinct problems")
    rng = random.Random(seed)
    val = _distinct_problems(rng, n_val, n_digits, exclude=set())
    val_questions = {question for question, _ in val}
    train = _distinct_problems(rng, n_train, n_digits, exclude=val_questions)
    sft_problems = _distinct_problems(rng, n_sft, n_digits, exclude=val_questions)

    template_text = load_template(template)
    sft = [
        {
            "prompt": render_prompt(template_text, question),
            "response": make_trace(question, answer, rng, carry_slip),
            "ground_truth": answer,
        }
        for question, answer in sft_problems
    ]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"{name}.jsonl" for name in ("train", "val", "sft")}
    _write_jsonl(paths["train"], [{"problem": q, "answer": a} for q, a in train])
    _write_jsonl(paths["val"], [{"problem": q, "answer": a} for q, a in val])
    _write_jsonl(paths["sft"], sft)
    paths["template"] = out_dir / "template.prompt"
    paths["template"].write_text(template_text + "\n", encoding="utf-8")
    return paths


def _distinct_problems(rng: random.Random, n: int, n_digits: int, exclude: set[str]) -> list[tuple[str, str]]:
    problems, seen = [], set(exclude)
    while len(problems) < n:
        question, answer = make_problem(rng, n_digits)
        if question not in seen:
            seen.add(question)
            problems.append((question, answer))
    return problems


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
