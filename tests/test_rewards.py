"""Reward functions, answer extraction, and the grader's safety: time bounds, threads, hostile input.

Equivalence on real MATH answers is tested by tests/test_grader_table.py.
"""

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r1_lightning.rewards import (
    combine_reward_fns,
    extract_answer_tag,
    extract_boxed_answer,
    extract_last_number,
    get_reward_fn,
    grade,
    grader,
    grader_stats,
    gsm8k_reward_fn,
    question_only_reward_fn,
    r1_zero_reward_fn,
)
from r1_lightning.rewards.normalize import parse_plain_number
from r1_lightning.rewards.pool import WALL_FACTOR, worker_pool

SFT_PATH = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "math" / "sft.jsonl"
CORRECT = {"format_reward": 1.0, "answer_reward": 1.0, "reward": 1.0}
WRONG = {"format_reward": 1.0, "answer_reward": 0.0, "reward": 0.0}
UNFORMATTED = {"format_reward": 0.0, "answer_reward": 0.0, "reward": 0.0}
TIME_BOUND_S = 1.0
SLACK_S = 0.5  # process scheduling on a busy 2-core machine
# A comparison gets TIME_BOUND_S of its worker's CPU time, and more wall time (up to this) when the
# machine is too busy to give it that CPU.
WALL_BOUND_S = WALL_FACTOR * TIME_BOUND_S + SLACK_S


def r1(answer: str, reasoning: str = "some reasoning") -> str:
    return f"{reasoning} </think> <answer> {answer} </answer>"


# ---------------------------------------------------------------- extraction

@pytest.mark.parametrize("text, expected", [
    (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
    (r"\boxed{1} then \boxed{\sqrt{2}}", r"\sqrt{2}"),  # the last box
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not close the box
    (r"\boxed{{a}^{b_{c}}}", r"{a}^{b_{c}}"),
    (r"\fbox{7}", "7"),
    (r"the answer is $\boxed 5$.", "5"),
    (r"\boxed{}", ""),
    (r"\boxed{\frac{1}{2}", None),  # truncated: no final answer
    ("no box here", None),
])
def test_extract_boxed_answer(text, expected):
    assert extract_boxed_answer(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("<answer> 3 </answer>", "3"),
    ("<answer>1</answer> <answer> 2 </answer> trailing", "2"),
    ("<answer>1</answer> <answer> 2", None),  # the last block is never closed
    ("no tags", None),
    ("<answer></answer>", ""),
])
def test_extract_answer_tag(text, expected):
    assert extract_answer_tag(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("It costs $1,234.", "1234"),
    ("18 dollars", "18"),
    ("first 3, then -7.5", "-7.5"),
    ("x = .5", ".5"),
    ("none", None),
])
def test_extract_last_number(text, expected):
    assert extract_last_number(text) == expected


@pytest.mark.parametrize("text, value", [
    ("12", Fraction(12)),
    ("-0.25", Fraction(-1, 4)),
    (r"3.5\times10^{4}", Fraction(35000)),
    ("2.5e-3", Fraction(1, 400)),
    (r"\frac{-3}{4}", Fraction(-3, 4)),
    (r"-2\frac{1}{2}", Fraction(-5, 2)),  # a mixed number, not -2 * 1/2
    ("7/8", Fraction(7, 8)),
    (r"\frac{1}{0}", None),
    (r"\sqrt{2}", None),
])
def test_parse_plain_number(text, value):
    parsed = parse_plain_number(text)
    assert (parsed and parsed.value) == value


# ---------------------------------------------------------------- r1_zero

def test_acceptance_example():
    assert r1_zero_reward_fn("x </think> <answer> \\frac{1}{2} </answer>", "0.5")["reward"] == 1.0


@pytest.mark.parametrize("response, ground_truth, expected", [
    (r1("42"), "42", CORRECT),
    (r1("41"), "42", WRONG),  # format alone earns nothing
    (r1(r"\boxed{\dfrac{1}{2}}"), "0.5", CORRECT),  # a box inside the answer is unwrapped
    (r1(r"\boxed{\frac{1}{2}"), "0.5", WRONG),  # an unclosed box is no answer
    ("</think><answer> 42 </answer>", "42", UNFORMATTED),  # the separator is exact
    ("some reasoning </think> 42", "42", UNFORMATTED),
    (r1("42").replace("</answer>", ""), "42", UNFORMATTED),
    (r1("2"), ["1", "2"], CORRECT),  # several accepted answers
    (r1("7"), 7, CORRECT),  # a numeric ground truth
])
def test_r1_zero_reward(response, ground_truth, expected):
    assert r1_zero_reward_fn(response, ground_truth) == expected


def test_r1_zero_only_the_last_answer_block_counts():
    first_right = "r </think> <answer> 2 </answer> <answer> 3 </answer>"
    last_right = "r </think> <answer> 3 </answer> <answer> 2 </answer>"
    assert r1_zero_reward_fn(first_right, "2") == WRONG
    assert r1_zero_reward_fn(last_right, "2") == CORRECT
    # Text after the last </answer> is ignored, answers or not.
    assert r1_zero_reward_fn(r1("2") + " so it is 3", "3") == WRONG


def test_r1_zero_hedging_over_many_answers_never_pays():
    hedge = "r </think> " + " ".join(f"<answer> {n} </answer>" for n in range(1, 11))
    assert sum(r1_zero_reward_fn(hedge, str(n))["reward"] for n in range(1, 11)) == 1.0
    # Several values in one answer form a set, which equals none of them.
    for n in (1, 2, 3):
        assert r1_zero_reward_fn(r1("1, 2, 3"), str(n)) == WRONG
    # Whatever the filler, a hedged answer is graded as one value at most.
    for hedged in [r"3 \text{ or } 4", r"3 \text{ or 4}", r"3 \vee 4", r"3 \pm 1", "3; 4", r"3 \quad 4"]:
        assert grade(hedged, "3") + grade(hedged, "4") <= 1, hedged
    # Unbalanced braces would leave "3" alone inside the box that math-verify parses.
    assert grade("3} + {4", "3") is False


@pytest.mark.parametrize("response", [
    "r </think> <answer></answer>",
    "r </think> <answer>   </answer>",
    "r </think> <answer> 5 </answer> <answer></answer>",  # an empty last block
])
def test_r1_zero_empty_answer_is_not_formatted(response):
    assert r1_zero_reward_fn(response, "5") == UNFORMATTED


def test_r1_zero_ground_truth_in_the_reasoning_earns_nothing():
    assert r1_zero_reward_fn(r1("41", reasoning="<think> the answer is 42"), "42") == WRONG
    assert r1_zero_reward_fn("<think> 42 </think> 42 <answer> </answer>", "42") == UNFORMATTED
    assert r1_zero_reward_fn("<think> \\boxed{42} </think>", "42") == UNFORMATTED


# ---------------------------------------------------------------- question_only and gsm8k

@pytest.mark.parametrize("response, expected", [
    (r"... so the answer is \boxed{4}.", CORRECT),
    (r"\boxed{4} no wait, \boxed{5}", WRONG),  # the last box counts
    (r"\boxed{5} no wait, \boxed{4}", CORRECT),
    ("the answer is 4", UNFORMATTED),  # no box
    (r"\boxed{ }", UNFORMATTED),
    (r"</think> <answer> \boxed{\frac{8}{2}} </answer>", CORRECT),
])
def test_question_only_reward(response, expected):
    assert question_only_reward_fn(response, "4") == expected


@pytest.mark.parametrize("answer, ground_truth, expected", [
    ("The total is $1,234.", "1234", CORRECT),
    ("18 dollars", "18", CORRECT),
    ("18.00", "18", CORRECT),
    ("-5 degrees", "-5", CORRECT),
    (r"\boxed{72}", "72", CORRECT),
    ("It is 7 then 8", "7", WRONG),  # the last number counts
    ("17.5", "18", WRONG),
    ("no number", "18", WRONG),
])
def test_gsm8k_reward(answer, ground_truth, expected):
    assert gsm8k_reward_fn(r1(answer), ground_truth) == expected


def test_gsm8k_reward_needs_the_format():
    assert gsm8k_reward_fn("the answer is 18", "18") == UNFORMATTED


# ---------------------------------------------------------------- registry and combination

def test_get_reward_fn():
    assert get_reward_fn("r1_zero") is r1_zero_reward_fn
    assert get_reward_fn("question_only") is question_only_reward_fn
    assert get_reward_fn("gsm8k") is gsm8k_reward_fn
    # your own function by import path
    assert get_reward_fn("r1_lightning.rewards.r1_zero_reward_fn") is r1_zero_reward_fn
    with pytest.raises(ValueError, match="could not be imported"):
        get_reward_fn("r1_lightning.rewards.no_such_fn")
    with pytest.raises(ValueError, match="gsm8k.*question_only.*r1_zero"):
        get_reward_fn("r1-zero")


def test_format_shaping_combination_keeps_answer_and_format_of_the_correctness_reward():
    from r1_lightning.rewards import resolve_reward_fn

    shaped = resolve_reward_fn({"gsm8k": 1.0, "r1_zero_format": 0.1})
    wrong = shaped("steps </think> <answer> 17 </answer>", "18")
    assert wrong["reward"] == pytest.approx(0.1) and wrong["answer_reward"] == 0.0 and wrong["format_reward"] == 1.0
    right = shaped("steps </think> <answer> 18 </answer>", "18")
    assert right["reward"] == pytest.approx(1.1) and right["answer_reward"] == 1.0
    unformatted = shaped("the answer is 18", "18")
    assert unformatted["reward"] == 0.0 and unformatted["format_reward"] == 0.0
    assert resolve_reward_fn("r1_zero") is r1_zero_reward_fn


@pytest.mark.parametrize(("answer", "shaping"), [
    ("a single number", 0.0),      # the prompt's own example, copied: no number, no shaping
    ("the number of eggs", 0.0),
    ("16 eggs", 1.0),              # a number, right or wrong, earns the shaping
    ("$1,000.", 1.0),
    (r"\boxed{-3/4}", 1.0),
    (r"\boxed{x}", 0.0),
])
def test_gsm8k_format_shaping_needs_a_number_in_the_answer(answer, shaping):
    from r1_lightning.rewards import gsm8k_format_reward_fn, r1_zero_format_reward_fn, resolve_reward_fn

    response = f" reasoning here </think> <answer> {answer} </answer>"
    assert gsm8k_format_reward_fn(response, "18") == {"format_reward": 0.0, "answer_reward": 0.0, "reward": shaping}
    assert r1_zero_format_reward_fn(response, "18")["reward"] == 1.0  # the generic shaping pays for any answer
    shaped = resolve_reward_fn({"gsm8k": 1.0, "gsm8k_format": 0.1})(response, "18")
    assert shaped["reward"] == pytest.approx(0.1 * shaping) and shaped["format_reward"] == 1.0
    assert resolve_reward_fn({"gsm8k": 1.0, "gsm8k_format": 0.1})(" r </think> <answer> 18 </answer>", "18")[
        "reward"] == pytest.approx(1.1)


def test_combine_reward_fns_weights_each_component():
    combined = combine_reward_fns({"r1_zero": 1.0, "question_only": 0.5})
    # Correct in the R1-Zero format, with no box for question_only: 1.0 * 1 + 0.5 * 0.
    assert combined(r1("4"), "4") == {
        "format_reward": 1.0, "answer_reward": 1.0, "reward": 1.0,
        "r1_zero/reward": 1.0, "question_only/reward": 0.0,
    }
    # Both rewards: 1.0 * 1 + 0.5 * 1.
    assert combined(r1(r"\boxed{4}"), "4")["reward"] == 1.5
    with pytest.raises(ValueError):
        combine_reward_fns({})
    with pytest.raises(ValueError):
        combine_reward_fns({"unknown": 1.0})


# ---------------------------------------------------------------- grader safety

def assert_bounded_false(answer: str, ground_truth: str = "1", bound_s: float = TIME_BOUND_S + SLACK_S) -> None:
    start = time.monotonic()
    assert grade(answer, ground_truth, timeout_s=TIME_BOUND_S) is False
    assert time.monotonic() - start < bound_s


@pytest.mark.parametrize("answer", [
    "10^{10^{10^{10}}}",
    "{10}^{{10}^{10}}",
    "(" * 50_000 + "1" + ")" * 50_000,
    "3^{10000000000}",
    "100000!",
    "9" * 100_000,
    "1+" * 500_000 + "1",
    "\\frac{" * 10_000,
])
def test_pathological_answers_are_rejected_quickly(answer):
    assert_bounded_false(answer)


def test_worker_is_killed_when_it_overruns_and_replaced():
    # (9^9)! = 387420489! passes the cheap guards; only the worker's time limit stops it.
    assert not grader._is_pathological("(9^{9})!")
    assert_bounded_false("(9^{9})!", bound_s=WALL_BOUND_S)
    assert grade(r"\sqrt{12}", r"2\sqrt{3}") is True  # a fresh worker took over


def test_a_dead_worker_is_replaced():
    assert grade(r"\sqrt{8}", r"2\sqrt{2}") is True
    failures = grader_stats().worker_failures
    for worker in worker_pool()._workers:
        assert worker.wait_ready()
        os.kill(worker._pid, signal.SIGKILL)
    time.sleep(0.1)
    # An idle worker found dead is replaced before use, so no verdict is lost.
    assert grade(r"\sqrt{18}", r"3\sqrt{2}") is True
    assert grade(r"\sqrt{27}", r"3\sqrt{3}") is True
    assert grader_stats().worker_failures == failures
    # So is a worker that dies with the fork server gone: a new server forks its replacement.
    worker_pool()._server._process.kill()
    worker_pool()._server._process.wait()
    for worker in worker_pool()._workers:
        if worker.wait_ready(timeout_s=0) and not worker.exited():
            os.kill(worker._pid, signal.SIGKILL)
    time.sleep(0.1)
    assert grade(r"\sqrt{50}", r"5\sqrt{2}") is True
    assert grader_stats().worker_failures == failures


@pytest.mark.parametrize("given, ground_truth", [(None, "1"), ("1", None), (3, "3"), ("", "1"), ("1", "")])
def test_grade_rejects_bad_input_without_raising(given, ground_truth):
    assert grade(given, ground_truth) is False


def test_grade_from_threads_is_correct_and_bounded():
    cases = [(r"\sqrt{12}", r"2\sqrt{3}", True), ("[1, 2)", "[1,2]", False), ("(1,2)", "(2,1)", False),
             (r"\frac{\pi}{4}", r"0.25\pi", True), ("(9^{9})!", "1", False)] * 2
    assert threading.current_thread() is threading.main_thread()
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: grade(case[0], case[1], timeout_s=TIME_BOUND_S), cases))
    assert results == [expected for _, _, expected in cases]
    # Two overrunning cases cost about TIME_BOUND_S each, however the workers are shared.
    assert time.monotonic() - start < 20


@pytest.mark.skipif(not SFT_PATH.is_file(), reason="needs ../shared/data/math/sft.jsonl")
def test_grading_a_grpo_step_is_fast():
    """A GRPO step grades 2048 rollouts: real responses, half with their own ground truth and half
    with another problem's, must take a few seconds (about 1.5 s on a 2-core CPU)."""
    with open(SFT_PATH) as lines:
        rows = [json.loads(line) for line in lines][:1024]
    pairs = [(row["response"], row["ground_truth"]) for row in rows]
    pairs += [(row["response"], other["ground_truth"]) for row, other in zip(rows, rows[1:] + rows[:1])]
    grade(r"\sqrt{2}", r"\sqrt{3}")  # start the worker outside the timed part
    start = time.monotonic()
    rewards = [r1_zero_reward_fn(response, truth)["reward"] for response, truth in pairs]
    assert time.monotonic() - start < 10.0
    assert 0.2 < sum(rewards) / len(rewards) < 0.6  # roughly: own answers often right, others wrong


# ---------------------------------------------------------------- property tests

digits = st.text("0123456789", min_size=1, max_size=12)
power_towers = st.lists(digits, min_size=3, max_size=8).map(lambda xs: "^{".join(xs) + "}" * (len(xs) - 1))
deep_parentheses = st.integers(13, 60_000).map(lambda n: "(" * n + "x" + ")" * n)
long_digit_strings = st.integers(601, 200_000).map(lambda n: "7" * n)
huge_factorials = st.integers(1000, 10**12).map(lambda n: f"{n}!")
pathological = st.one_of(power_towers, deep_parentheses, long_digit_strings, huge_factorials)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=pathological, ground_truth=st.sampled_from(["1", r"\frac{1}{2}", r"2\sqrt{3}", "(1,2)"]))
def test_pathological_answers_give_false_within_the_bound(answer, ground_truth):
    assert_bounded_false(answer, ground_truth)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=st.text(max_size=200), ground_truth=st.sampled_from(["1", r"\frac{1}{2}", r"\text{odd}"]))
def test_grade_returns_a_bool_within_the_bound_on_any_text(answer, ground_truth):
    start = time.monotonic()
    assert isinstance(grade(answer, ground_truth, timeout_s=TIME_BOUND_S), bool)
    assert time.monotonic() - start < TIME_BOUND_S + SLACK_S


fragments = st.sampled_from(
    ["<think>", "</think>", " ", "<answer>", "</answer>", "</think> <answer>", r"\boxed{", "{", "}",
     "\\", "42", r"\frac{1}{2}", "$", "\n"]
)
responses = st.one_of(st.text(max_size=300), st.lists(st.one_of(fragments, st.text(max_size=5))).map("".join))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(response=responses)
def test_reward_fns_never_raise(response):
    for reward_fn in (r1_zero_reward_fn, question_only_reward_fn, gsm8k_reward_fn):
        rewards = reward_fn(response, "42")
        assert set(rewards) == {"format_reward", "answer_reward", "reward"}
        assert rewards["reward"] == rewards["answer_reward"] <= rewards["format_reward"]
