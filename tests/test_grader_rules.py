"""The grader's equality rules: rounding, leniencies, answers lost to guards, empty answers, and the
check on a user's reward function. Expected values are decided by hand from the rules in the
docstrings of r1_lightning.rewards.normalize and .grader, not read off the grader."""

import pytest

from r1_lightning.rewards import (
    get_reward_fn,
    grade,
    gsm8k_format_reward_fn,
    gsm8k_reward_fn,
    r1_zero_format_reward_fn,
    r1_zero_reward_fn,
    resolve_reward_fn,
)

UNFORMATTED = {"format_reward": 0.0, "answer_reward": 0.0, "reward": 0.0}


def r1(answer: str) -> str:
    return f"reasoning </think> <answer> {answer} </answer>"


# ---------------------------------------------------------------- rounding

@pytest.mark.parametrize("given, ground_truth, expected", [
    # A short decimal is an exact number of its own, whatever it rounds.
    ("1.00", r"\frac{4036082}{4036081}", False),
    ("0.0", r"\frac{1}{4194304}", False),
    ("1.000000", r"\frac{4036082}{4036081}", False),  # trailing zeros carry no digits
    ("0.33", r"\frac{1}{3}", False),
    ("3.1416", r"\pi", False),  # 5 significant digits
    # Exact equality needs no digits.
    ("0.5", r"\frac{1}{2}", True),
    ("1.00", "1", True),
    (r"\frac{7}{20}", "0.35", True),
    # 6 or more significant digits, correctly rounded at the last one: an approximation.
    ("0.333333", r"\frac{1}{3}", True),
    (r"\frac{1}{3}", "0.333333", True),  # either side may be the decimal
    ("3.464102", r"2\sqrt{3}", True),
    ("3.14159", r"\pi", True),
    ("530.929", r"169\pi", True),  # 6 significant digits at 3 decimal places
    ("3.464101", r"2\sqrt{3}", False),  # truncated, not rounded
    ("530.93", r"169\pi", False),
    ("0.3333333", "0.333333", False),  # two decimals are two exact numbers
])
def test_rounding_rule(given, ground_truth, expected):
    assert grade(given, ground_truth) is expected


# ---------------------------------------------------------------- leniencies

@pytest.mark.parametrize("given, ground_truth", [
    ("1 + 1 = 5", "5"),  # the right-hand side of a wrong equation
    ("2 + 3 = 5", "5"),  # or of a right one: the answer is the value, not the work
    ("x = 1 + 1 = 5", "5"),
    ("f(x) = 4", "4"),
    ("4t", "4"),  # a trailing letter is a variable, not a unit
    ("4m", "4"),
    ("4 apples", "4"),
    (r"x = -\frac14", r"y = -\frac14"),  # another variable
    ("k = 6", "x=6"),
])
def test_leniencies_that_reward_wrong_work_are_gone(given, ground_truth):
    assert grade(given, ground_truth) is False


@pytest.mark.parametrize("given, ground_truth", [
    ("x = 4", "4"),
    ("4", "x = 4"),
    ("y = 4", "y=4"),
    (r"x \in [1, 2)", "[1,2)"),
    ("AB = 9", "9"),
    (r"4\text{ m}", "4"),  # a unit in \text
    (r"12\sqrt{13}\text{ feet}", r"\sqrt{1872}"),  # ... also before the symbolic step
    ("180 miles", "180"),
    (r"30^\circ", "30"),
    ("1,000,000", "1000000"),
    (r"\dfrac{1}{2}", r"\frac12"),
    (r"\left( 1, \frac{\pi}{2} \right)", r"(1, \pi/2)"),
    (r"\begin{pmatrix} 1 \\ \sqrt{4} \end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
])
def test_leniencies_users_expect_stay(given, ground_truth):
    assert grade(given, ground_truth) is True


# ---------------------------------------------------------------- answers lost to the guards

def test_a_factorial_answer_given_word_for_word_is_right():
    assert r1_zero_reward_fn(r1(r"\frac{1}{2004!}"), r"\frac{1}{2004!}")["reward"] == 1.0
    assert grade(r"\dfrac{1}{2004!}", r"\frac{1}{2004!}") is True
    # Another form of it is evaluated (within the time bound), since the truth has that factorial.
    assert grade(r"(2004!)^{-1}", r"\frac{1}{2004!}") is True
    assert grade(r"\frac{1}{2003!}", r"\frac{1}{2004!}") is False


def test_a_long_correct_answer_is_right():
    spaced = r"\frac{1}{2}" + r"\," * 300  # identical once normalized
    summed = " + ".join([r"\frac{1}{200}"] * 100)  # 1/2, written in 1,500 characters
    assert len(spaced) > 600 and len(summed) > 600
    assert grade(spaced, r"\frac12") is True
    assert grade(summed, r"\frac12") is True
    assert grade(summed, r"\frac13") is False


# ---------------------------------------------------------------- empty answers

@pytest.mark.parametrize("response", [
    r"r </think> <answer> \boxed{} </answer>",
    r"r </think> <answer>\boxed{ }</answer>",
    r"r </think> <answer> 5 </answer> <answer> \boxed{} </answer>",  # the last block counts
    "r </think> <answer></answer>",
    "r </think> <answer> 5 </answer> <answer></answer>",
])
def test_an_empty_answer_is_not_formatted(response):
    assert r1_zero_reward_fn(response, "5") == UNFORMATTED
    assert gsm8k_reward_fn(response, "5") == UNFORMATTED
    assert r1_zero_format_reward_fn(response, "5")["reward"] == 0.0
    assert gsm8k_format_reward_fn(response, "5")["reward"] == 0.0


def test_several_answer_blocks_grade_the_last():
    assert r1_zero_reward_fn(r"r </think> <answer> \boxed{} </answer> <answer> 5 </answer>", "5")["reward"] == 1.0
    assert r1_zero_reward_fn(r"r </think> <answer> 5 </answer> <answer> 6 </answer>", "5")["reward"] == 0.0


# ---------------------------------------------------------------- a user's reward function

def missing_keys_reward(response: str, ground_truth: str) -> dict:
    return {"reward": 1.0}


def not_a_dict_reward(response: str, ground_truth: str) -> float:
    return 1.0


def test_a_reward_function_with_missing_keys_is_named():
    fn = get_reward_fn("test_grader_rules.missing_keys_reward")
    with pytest.raises(ValueError, match=r"'test_grader_rules.missing_keys_reward'.*\['format_reward', 'answer_reward'\]"):
        fn(r1("5"), "5")
    combined = resolve_reward_fn({"r1_zero": 1.0, "test_grader_rules.missing_keys_reward": 0.5})
    with pytest.raises(ValueError, match="missing_keys_reward.*format_reward"):
        combined(r1("5"), "5")
    with pytest.raises(TypeError, match="'test_grader_rules.not_a_dict_reward' returned float"):
        resolve_reward_fn("test_grader_rules.not_a_dict_reward")(r1("5"), "5")
