"""Is a model's final answer equal to the ground truth? `grade(given, ground_truth) -> bool`.

Equal means the same exact value, or the same set, tuple, interval or matrix of exact values; a
decimal stands for an exact number it is not identical to only under the rounding rule of
`normalize.approximates` (at least 6 significant digits, correctly rounded). Stages, cheapest first:
1. Identical strings (after unwrapping a `\\boxed{}`) are equal, before any guard: a real answer
   like `\\frac{1}{2004!}` or a long one is never lost to a guard meant for hostile input.
2. Fast path, in this process, for answers up to `MAX_NORMALIZE_CHARS`: normalized strings are equal
   (`\\dfrac{1}{2}` = `\\frac12`, `x = 3` = `3`, `180\\text{ miles}` = `180`; the leniencies and their
   limits are listed in `normalize`), word answers are compared as words ("(C)", "A, B"), and two
   plain numbers are compared by exact value (`0.5` = `1/2`, `3.5\\times10^{4}` = `35000`, `2` != `3`,
   `1.00` != `\\frac{4036082}{4036081}`). A different leading variable is a different answer
   (`x = -\\frac14` != `y = -\\frac14`). `70,110` is also tried as the list `70, 110`
   (`normalize.list_reading`), never `81, 256` as 81256. A numeral with a base subscript is decided here
   (`normalize.same_numeral`), and a hedge (`5 \\approx 6`) equals only the same hedge, each of its
   values equal (`normalize.hedge_parts`).
3. Guards: answers over `MAX_SYMBOLIC_CHARS`, nested too deep, with unbalanced braces, power towers,
   or a six-digit exponent or four-digit factorial (unless the ground truth has one too) are not
   equal. Real MATH answers are at most 159 characters with brackets nested 3 deep.
4. Symbolic step (`symbolic.symbolic_equal`: math-verify's parser and structure comparison with
   exact leaves, no numeric shortcuts) in a worker process of `pool`, for radicals, intervals,
   tuples, sets, matrices, expressions. Each comparison gets `timeout_s` of CPU time; waiting for
   a worker is first come, first served and not part of it; every timeout is counted
   (`grader_timeouts()`), and only the same (answer, ground truth) pair is refused afterwards.
   Call `start_grader()` at set-up so that no call pays the start-up.
Grading never raises and never `eval`s; any failure means "not equal".
"""

import logging
import re

from r1_lightning.rewards.extract import unwrap_boxed
from r1_lightning.rewards.normalize import (
    approximates,
    hedge_parts,
    list_reading,
    normalize,
    parse_plain_number,
    same_numeral,
)
from r1_lightning.rewards.pool import worker_pool

logger = logging.getLogger(__name__)

MAX_NORMALIZE_CHARS = 20_000  # regex passes stay linear, but there is no need to scan megabytes
MAX_SYMBOLIC_CHARS = 2_000
MAX_BRACKET_DEPTH = 12

# A six-digit or longer exponent, or the factorial of a four-digit or longer number: far outside
# MATH, and expensive for sympy to evaluate.
_HUGE_EXPONENT_OR_FACTORIAL = re.compile(r"\^\s*\{?\s*-?\d{6,}|\d{4,}\s*\}?\s*\)?\s*!")
_DIGIT_TIMES_I = re.compile(r"(?<=\d)i\b")


def start_grader(wait: bool = False) -> None:
    """Start the symbolic workers now rather than on the first call that needs one (which would
    wait one to five seconds). Idempotent; with `wait`, returns once they are ready."""
    pool = worker_pool()
    pool.start()
    if wait:
        pool.wait_ready()


def grade(given: str, ground_truth: str, timeout_s: float = 1.0) -> bool:
    """True iff the answer `given` equals `ground_truth` (both final answers, not full responses;
    a `\\boxed{}` around either is unwrapped). Returns False on any error, and within `timeout_s`
    of the worker's CPU time however hostile `given` is."""
    try:
        return _grade(given, ground_truth, timeout_s)
    except Exception:  # a bug or a surprise in a library must cost one reward, not the run
        logger.debug("grading failed; counted as wrong", exc_info=True)
        return False


def _grade(given: str, ground_truth: str, timeout_s: float) -> bool:
    if not isinstance(given, str) or ground_truth is None:
        return False
    ground_truth = str(ground_truth)
    given, ground_truth = (unwrap_boxed(given) or "").strip(), (unwrap_boxed(ground_truth) or "").strip()
    if not given or not ground_truth:
        return False
    if given == ground_truth:
        return True
    if len(given) > MAX_NORMALIZE_CHARS:
        return False
    if _grade_reading(given, ground_truth, timeout_s):
        return True
    given_list, truth_list = list_reading(given), list_reading(ground_truth)  # 70,110 may be 70, 110
    if given_list is None and truth_list is None:
        return False
    return _grade_reading(given_list or given, truth_list or ground_truth, timeout_s)


def _grade_reading(given: str, ground_truth: str, timeout_s: float) -> bool:
    given_parts, truth_parts = hedge_parts(given), hedge_parts(ground_truth)
    if len(given_parts) > 1 or len(truth_parts) > 1:  # a hedge is only the same hedge, part by part
        return len(given_parts) == len(truth_parts) and all(
            _grade(part, truth_part, timeout_s) for part, truth_part in zip(given_parts, truth_parts))
    decided = compare_fast(given, ground_truth)
    if decided is not None:
        return decided
    if _is_pathological(given, ground_truth):
        return False
    return worker_pool().compare(_for_math_verify(given), _for_math_verify(ground_truth), timeout_s)


def _for_math_verify(answer: str) -> str:
    # math-verify reads `i` as the imaginary unit only when it stands alone (`\bi\b`), so that
    # "0.56i" would be 0.56 times a real symbol i; "0.56 i" is read as intended.
    return _DIGIT_TIMES_I.sub(" i", answer)


def _is_pathological(answer: str, ground_truth: str = "") -> bool:
    """Too long, nested too deep, unbalanced braces, a power tower, a huge exponent or factorial
    (the last two allowed when the ground truth has them too)."""
    if len(answer) > MAX_SYMBOLIC_CHARS:
        return True
    if _HUGE_EXPONENT_OR_FACTORIAL.search(answer) and not _HUGE_EXPONENT_OR_FACTORIAL.search(ground_truth):
        return True
    depth = braces = 0  # all brackets (intervals may leave some open), and `{}` groups alone
    exponent_depths = []  # the depths at which the open exponent groups `^{...}` started
    previous = ""
    after_caret = False
    for char in answer:
        if char == "^" and exponent_depths:  # an exponent inside an exponent: 10^{10^{10}}
            return True
        if char in "([{":
            depth += 1
            braces += char == "{" and previous != "\\"
            if depth > MAX_BRACKET_DEPTH:
                return True
            if char == "{" and after_caret:
                exponent_depths.append(depth)
        elif char in ")]}":
            if exponent_depths and exponent_depths[-1] == depth:
                exponent_depths.pop()
            depth -= 1
            braces -= char == "}" and previous != "\\"
            if braces < 0:  # "3} + {4" would smuggle text out of the box math-verify parses
                return True
        if char == "^":
            after_caret = True
        elif not char.isspace():
            after_caret = False
        previous = char
    return braces != 0


def compare_fast(given: str, ground_truth: str) -> bool | None:
    """Decide equality without sympy when possible: True/False, or None for "needs the symbolic step"."""
    given_normalized, truth_normalized = normalize(given), normalize(ground_truth)
    if not given_normalized.value:
        return False
    variables = {given_normalized.variable, truth_normalized.variable} - {None}
    if len(variables) == 2:  # x = 3 is 3, but it is not y = 3
        return False
    given_value, truth_value = given_normalized.value, truth_normalized.value
    if given_value == truth_value:
        return True
    numeral = same_numeral(given_value, truth_value)  # 4210_{7}: sympy would drop the base
    if numeral is not None:
        return numeral
    if _WORD_ANSWER.fullmatch(given_value) and _WORD_ANSWER.fullmatch(truth_value):
        return _word_items(given_value) == _word_items(truth_value)
    given_number, truth_number = parse_plain_number(given_value), parse_plain_number(truth_value)
    if given_number is None or truth_number is None:
        return None
    if given_number.value == truth_number.value:
        return True
    distance = abs(given_number.value - truth_number.value)
    if given_number.is_decimal != truth_number.is_decimal:  # two decimals are two exact numbers
        return approximates(given_number if given_number.is_decimal else truth_number, distance)
    return False


# Answers made of words or letters: "Wednesday", "(C)", "A, B", "CBAD". Compared as text (any case,
# choices in any order), never by sympy, which would read CBAD as the product C*B*A*D = ABCD.
_WORD_ANSWER = re.compile(r"(?:\([A-Za-z]+\)|[A-Za-z]+)(?:,(?:\([A-Za-z]+\)|[A-Za-z]+))*")


def _word_items(answer: str) -> list[str]:
    return sorted(item.strip("()").lower() for item in answer.split(","))
