"""No constant answer is "universal": whatever one string a policy settles on, it matches at most a
handful of different real ground truths (the same value written a few ways: `\\frac12`, `.5`, `1:2`).

Found by fuzzing: `|\\infty|` matched about 9% of the MATH validation answers, `2^{1000} - 2^{1000}`
every decimal it was compared with, `10^{-100}` every tiny ground truth. The families below build
such constants: infinities, absolute values, huge and tiny powers, cancelling expressions, nan,
empty sets, short decimals, bare variables, and combinations of them.
"""

import csv
import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from r1_lightning.rewards import grade, start_grader

CASES_PATH = Path(__file__).parent / "fixtures" / "grader_cases.tsv"
VALIDATION_PATH = Path(__file__).resolve().parents[1] / "data" / "math" / "validation.jsonl"  # shipped
HANDFUL = 5  # the most forms of one value among these ground truths (1/2: \frac12, .5, 1:2, ...)
# Each matched tens to hundreds of different MATH answers before the fix.
KNOWN_UNIVERSAL = [r"|\infty|", r"\infty^{\infty}", r"2^{1000} - 2^{1000}"]


def fixture_ground_truths() -> list[str]:
    lines = [line for line in CASES_PATH.read_text().splitlines() if not line.startswith("#")]
    return sorted({row["ground_truth"] for row in csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)})


def validation_ground_truths(count: int) -> list[str]:
    with open(VALIDATION_PATH) as lines:
        answers = sorted({json.loads(line)["answer"] for line in lines})
    return random.Random(0).sample(answers, count)


def matches(answer: str, ground_truths: list[str]) -> list[str]:
    """The ground truths that `answer` is graded equal to (two threads: two workers at once)."""
    with ThreadPoolExecutor(max_workers=2) as threads:
        verdicts = list(threads.map(lambda truth: grade(answer, truth), ground_truths))
    return [truth for truth, equal in zip(ground_truths, verdicts) if equal]


small = st.integers(0, 12).map(str)
huge_exponent = st.integers(20, 99_999).map(str)
base = st.sampled_from(["2", "3", "10", "e", r"\pi", "x"])
leaf = st.one_of(
    st.sampled_from([r"\infty", r"-\infty", r"\frac{0}{0}", r"\frac{1}{0}", "0^0", r"\text{nan}", "nan",
                     "zoo", r"\emptyset", r"\{\}", r"\text{ }", "x", "n", r"\mathbb{R}", r"(-\infty,\infty)"]),
    small,
    st.builds(lambda b, k: f"{b}^{{{k}}}", base, huge_exponent),  # huge powers
    st.builds(lambda b, k: f"{b}^{{-{k}}}", base, huge_exponent),  # tiny powers
    st.builds(lambda d, n: f"{d}.{'0' * n}", st.sampled_from("01"), st.integers(0, 5)),  # 1.00, 0.0
)


def combine(parts):
    return st.one_of(
        st.builds(lambda a: f"|{a}|", parts),
        st.builds(lambda a, b: f"{a} - {b}", parts, parts),
        st.builds(lambda a, b: f"{a} + {b}", parts, parts),
        st.builds(lambda a, b: f"{a}^{{{b}}}", parts, leaf),
        st.builds(lambda a, b: rf"\frac{{{a}}}{{{b}}}", parts, parts),
        st.builds(lambda a, c: f"({a} + {c}) - {a}", parts, small),  # cancelling: (10^{20}+3) - 10^{20}
    )


constants = st.recursive(leaf, combine, max_leaves=4)


@pytest.fixture(scope="module", autouse=True)
def workers():
    start_grader(wait=True)


@settings(max_examples=12, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@example(answer=KNOWN_UNIVERSAL[0])
@example(answer=KNOWN_UNIVERSAL[2])
@given(answer=constants)
def test_no_constant_answer_matches_many_fixture_ground_truths(answer):
    """Always runs: the ground truths of tests/fixtures/grader_cases.tsv (real MATH answers)."""
    matched = matches(answer, fixture_ground_truths())
    assert len(matched) <= HANDFUL, f"{answer!r} matches {len(matched)}: {matched[:10]}"


@settings(max_examples=6, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@example(answer=KNOWN_UNIVERSAL[1])
@given(answer=constants)
def test_no_constant_answer_matches_many_validation_ground_truths(answer):
    """300 distinct MATH validation answers (of 2,048), a fixed sample."""
    matched = matches(answer, validation_ground_truths(300))
    assert len(matched) <= HANDFUL, f"{answer!r} matches {len(matched)}: {matched[:10]}"


@pytest.mark.parametrize("answer", KNOWN_UNIVERSAL)
def test_known_universal_answers_match_almost_nothing(answer):
    matched = matches(answer, fixture_ground_truths())
    assert len(matched) <= 1, f"{answer!r} matches {matched}"  # 0, or the one it is equal to


@pytest.mark.parametrize("tiny", [r"10^{-100}", r"\frac{1}{10^{30}}", r"e^{-1000}"])
def test_a_tiny_number_is_not_every_tiny_ground_truth(tiny):
    # A difference below 1e-15 was "chopped" to zero, so any tiny constant equalled any tiny truth.
    assert grade(tiny, r"\frac{1}{2004!}") is False
    assert grade(tiny, r"\frac{1}{4194304}") is False
