"""Narrow ways a wrong answer earned reward, or a right one lost it, one test per rule of
r1_lightning/rewards/normalize.py's docstring that closes them: base subscripts, lists read as one
number, invisible content, hedges, plain-text pi and sqrt, double inequalities, GSM8K numbers
with exponents, and a timeout refused only for its own (answer, ground truth) pair. Expected
values are decided by hand from those rules."""

import pytest

from r1_lightning.rewards import (
    extract_last_number,
    grade,
    grader_stats,
    grader_timeouts,
    gsm8k_format_reward_fn,
    gsm8k_reward_fn,
    start_grader,
)


def r1(answer: str) -> str:
    return f"reasoning </think> <answer> {answer} </answer>"


@pytest.mark.parametrize("given, ground_truth, expected", [
    (r"4210_{10}", r"4210_{7}", False),  # two bases: two numbers
    (r"4210_{7}", r"4210_{8}", False),
    (r"4210_{7}", "4210_7", True),
    ("4210", "4210_7", True),  # a plain numeral is read in the other side's base
    ("1477", "4210_7", False),  # ... not converted: 4210_7 is 1477 in base 10, but written otherwise
    (r"4210_{10}", "4210", True),  # base 10 is the plain number, compared by value
    (r"4210_{10}", "4210.0", True),
    ("4210_3", "4210", False),  # 4 is not a base-3 digit
    (r"\text{A5}_{11}", "A5_{11}", True),
    ("0.0011", r"0.0011_{2}", True),
    ("P_1", "P_{1}", True),  # no digit before the subscript: a variable, not a numeral
])
def test_base_subscripts_are_compared(given, ground_truth, expected):
    assert grade(given, ground_truth) is expected


@pytest.mark.parametrize("given, ground_truth, expected", [
    ("81, 256", "81256", False),  # a comma and a space: a list of two solutions
    ("81256", "81, 256", False),
    ("81, 256", "81,256", True),  # no space: a number or a list, either reading
    ("81,256", "81256", True),
    ("110, 70", "70,110", True),
    ("70110", "70,110", True),
    ("111111111", r"111, \! 111, \! 111", True),  # ,\! is a thousands separator whatever the spaces
    ("1,23", "123", False),  # not groups of three digits
])
def test_lists_are_never_merged_into_one_number(given, ground_truth, expected):
    assert grade(given, ground_truth) is expected


@pytest.mark.parametrize("given, ground_truth, expected", [
    (r"\phantom{1}2", "2", True),
    (r"\phantom{1}2", "12", False),
    (r"2\hphantom{0}", "20", False),
    (r"5\vphantom{\frac{1}{2}}", "5", True),
    (r"\phantom{-}1", "-1", False),
    (r"\begin{pmatrix} 1 & -1 \\ 1 & 1 \end{pmatrix}",
     r"\begin{pmatrix} 1 & -1 \\ 1 & \phantom -1 \end{pmatrix}", True),  # one token, unbraced
])
def test_invisible_content_is_dropped(given, ground_truth, expected):
    assert grade(given, ground_truth) is expected


@pytest.mark.parametrize("given, ground_truth, expected", [
    (r"5 \approx 6", "5", False),
    (r"5 \approx 6", "6", False),
    (r"5 \sim 6", "5", False),
    (r"x \approx 5", "5", False),
    (r"5 \text{ or } 6", "5", False),  # "or" lists alternatives: a list, never one value
    (r"5 \text{ or } 6", "6", False),
    ("5 or 6", "5", False),
    (r"-30 \text{ or } -12", r"-12 \text{ or } -30", True),
    (r"\frac{2}{3} \approx 0.67", r"\$\dfrac23 \approx \$0.67", True),  # the same hedge, part by part
    (r"\frac{2}{3} \approx 0.5", r"\$\dfrac23 \approx \$0.67", False),
    ("0.67", r"\$\dfrac23 \approx \$0.67", False),
    ("8.24", r"\approx 8.24 \text{ mph}", True),  # a leading \approx only means "about"
    (r"\approx 3.14", r"\pi", False),  # ... and the rounding rule still holds
])
def test_hedges_earn_only_the_same_hedge(given, ground_truth, expected):
    assert grade(given, ground_truth) is expected


@pytest.mark.parametrize("given, ground_truth, expected", [
    ("25*pi", r"25\pi", True),
    ("25 pi", r"25\pi", True),
    (r"\frac{pi}{4}", r"\frac{\pi}{4}", True),
    ("2 - sqrt(3)", r"2-\sqrt{3}", True),
    ("sqrt(2)/2", r"\frac{\sqrt{2}}{2}", True),
    ("3*sqrt{5}", r"3\sqrt{5}", True),
    ("2 - sqrt(5)", r"2-\sqrt{3}", False),
    ("25*pi", "25", False),
    (r"\text{spin}", r"s\pi n", False),  # pi inside a word is not pi
])
def test_plain_text_pi_and_sqrt_are_read(given, ground_truth, expected):
    assert grade(given, ground_truth) is expected


@pytest.mark.parametrize("given, ground_truth, expected", [
    (r"1 \le x \le 9", "[1, 9]", True),
    ("1 < x < 9", "[1,9]", False),
    (r"0 < x \le 1", "(0,1]", True),
    (r"-\frac{1}{2} \leq x \leq \frac{1}{2}", r"\left[ -\frac{1}{2}, \frac{1}{2} \right]", True),
    (r"9 \ge x > 1", "(1, 9]", True),  # read from the right
    (r"1 \le y \le 9", r"x \in [1, 9]", False),  # another variable
    (r"1 \le x \le 9", r"x \in [1, 9]", True),
    (r"1 \le x < 9", "[1, 9]", False),
    (r"-80\leq g(x)\leq 82", "[-80,82]", False),  # g(x) is not one variable
])
def test_an_interval_as_a_double_inequality(given, ground_truth, expected):
    assert grade(given, ground_truth) is expected


@pytest.mark.parametrize("text, expected", [
    ("1e3", "1000"),
    ("10^3", "1000"),
    ("10^{3}", "1000"),
    (r"2.5 \times 10^{3}", "2500"),
    ("1.5e-3", "3/2000"),
    ("2**10", "1024"),
    ("2^{-1}", "1/2"),
    ("-2^2", "-4"),  # the sign applies after the power
    ("The area is 25 cm^2.", "25"),  # an exponent of a unit is no number
    ("0x10", None),  # hexadecimal: refused, not read as 10
    ("10^{99999}", None),  # too large to read: refused, not read as 99999
    ("0^{-1}", None),
])
def test_gsm8k_last_number_reads_notation_whole(text, expected):
    assert extract_last_number(text) == expected


def test_gsm8k_reward_for_numbers_with_exponents():
    assert gsm8k_reward_fn(r1("1e3"), "3")["reward"] == 0.0
    assert gsm8k_reward_fn(r1("1e3"), "1000")["reward"] == 1.0
    assert gsm8k_reward_fn(r1("10^3"), "3")["reward"] == 0.0
    assert gsm8k_reward_fn(r1(r"\boxed{10^3}"), "1000")["reward"] == 1.0
    assert gsm8k_reward_fn(r1("0x10"), "10")["reward"] == 0.0
    assert gsm8k_reward_fn(r1("0x10"), "16")["reward"] == 0.0
    assert gsm8k_format_reward_fn(r1("0x10"), "16")["reward"] == 0.0  # no number the grader reads


def test_a_timeout_is_refused_only_for_its_own_pair():
    """An honest answer that overran against one ground truth (an expensive one here) is still
    compared, and right, against another; only the same pair is refused at once."""
    start_grader(wait=True)
    expensive_truth = "(2^{5} + 9^{9} + 17)!"  # a factorial of ~387 million: overruns any budget
    # A budget this small ends in an overrun however loaded the machine (never in "starved").
    overrun_s = 0.01
    before, stats = grader_timeouts(), grader_stats()
    assert grade(r"\sqrt{75}", expensive_truth, timeout_s=overrun_s) is False
    assert grader_stats().timeouts == stats.timeouts + 1
    assert grade(r"\sqrt{75}", r"5\sqrt{3}") is True
    assert grade(r"\sqrt{75}", expensive_truth, timeout_s=overrun_s) is False  # the same pair: refused
    assert grader_stats().quarantined == stats.quarantined + 1
    assert grader_timeouts() == before + 2
