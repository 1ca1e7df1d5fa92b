"""Symbolic equality of two final answers: `symbolic_equal(given, ground_truth) -> bool`.

Runs in the grader's worker process only (see `_symbolic_worker.py`): it imports sympy and
math-verify, and a hostile answer may keep it busy until the parent kills it.

math-verify parses both answers (with its unit stripping off: `4t` is 4 times t, not 4 tons) and
compares their structure (sets, tuples, intervals, matrices, equations). Its numeric shortcuts are
what made constant answers match many ground truths: `|\\infty|` and `\\infty^{\\infty}` compared
equal to unrelated decimals, `2^{1000} - 2^{1000}` cancelled to 0 in 15-digit floats and then
equalled any decimal it was subtracted from, and `10^{-100}` equalled every ground truth below
1e-15 (the difference was "chopped" to zero). So before and inside that comparison:
1. Non-finite values: an answer that is `\\infty` or `-\\infty` equals only the same; infinities as
   interval endpoints are compared as such; any other infinity, `nan` or `zoo` (`|\\infty|`,
   `\\infty - \\infty`, `\\frac{1}{0}`) makes the answers equal only if they are the same expression.
2. Equations: an equation in the given answer counts only if its left side is a variable (`x = 4`
   for `4`, `AB = 9` for `9`); `1 + 1 = 5` is not `5`, and `x = 2 + 2 = 5` is not `5`.
3. Decimals are exact numbers (`0.25\\pi` = `\\frac{\\pi}{4}`, `2.47 \\times 10^5` = 247000). A whole
   answer that is a decimal may also stand for an exact constant it rounds to, by the rule of
   `normalize.approximates` (at least 6 significant digits: `3.464102` = `2\\sqrt3`).
4. Leaves: math-verify's numeric and symbolic leaf comparisons are replaced by exact ones. Two
   constants are equal iff sympy simplifies their difference to 0, or they agree to 50 significant
   digits evaluated with guaranteed precision (different short closed forms never do); expressions
   with variables are equal iff their difference simplifies to 0.
"""

import functools

import math_verify.grader as math_verify_grader
from latex2sympy2_extended.math_normalization import NormalizationConfig
from math_verify import LatexExtractionConfig, parse, verify
from math_verify.grader import is_relation
from mpmath.libmp import prec_to_dps, to_str
from sympy import (
    Abs,
    AccumBounds,
    Basic,
    Eq,
    Float,
    Interval,
    MatrixBase,
    Mul,
    Rational,
    S,
    Symbol,
    simplify,
)
from sympy.core.evalf import PrecisionExhausted
from sympy.core.relational import Relational

from r1_lightning.rewards.normalize import approximates, normalize_answer, parse_plain_number, strip_dressing

EQUAL_DIGITS = 50  # constants agreeing to this many significant digits are the same number
_NON_FINITE = (S.Infinity, S.NegativeInfinity, S.ComplexInfinity, S.NaN)

# The answer is already extracted, so parse the whole string as one LaTeX expression (as if it
# were boxed) rather than fishing for any number in it: "2 or maybe 3" must not match 3. No
# fallback to the raw string: an unparsable answer compares as not equal.
_WHOLE_ANSWER = [LatexExtractionConfig(
    boxed_match_priority=0, try_extract_without_anchor=False,
    normalization_config=NormalizationConfig(basic_latex=True, units=False, malformed_operators=True,
                                             nits=True, boxed="all", equations=False),
)]


@functools.lru_cache(maxsize=8192)  # a GRPO group repeats its ground truth and often its answers
def parse_answer(text: str) -> Basic | MatrixBase | None:
    """The sympy object math-verify reads from a final answer, or None."""
    parsed = parse("\\boxed{" + strip_dressing(text) + "}", extraction_config=_WHOLE_ANSWER,
                   fallback_mode="no_fallback", parsing_timeout=None)
    return next((item for item in parsed if isinstance(item, (Basic, MatrixBase))), None)


def symbolic_equal(given: str, ground_truth: str) -> bool:
    gold, pred = parse_answer(ground_truth), parse_answer(given)
    if gold is None or pred is None:
        return False
    gold_infinity, pred_infinity = _signed_infinity(gold), _signed_infinity(pred)
    if gold_infinity or pred_infinity:
        return gold_infinity == pred_infinity
    if _has_non_finite(gold) or _has_non_finite(pred):
        return gold == pred
    if not _relations_allowed(gold, pred):
        return False
    if _approximates(given, gold) or _approximates(ground_truth, pred):
        return True
    return bool(verify(exactify(gold), exactify(pred), timeout_seconds=None))


def _signed_infinity(expr) -> int:
    """+1 for oo, -1 for -oo (however written), 0 otherwise."""
    if expr is S.Infinity or expr is S.NegativeInfinity:
        return 1 if expr is S.Infinity else -1
    if isinstance(expr, Mul) and len(expr.args) == 2 and S.NegativeOne in expr.args and S.Infinity in expr.args:
        return -1
    return 0


def _children(expr) -> tuple:
    if isinstance(expr, MatrixBase):
        return tuple(expr)
    if isinstance(expr, Interval):  # an infinite endpoint is how intervals are written
        return tuple(end for end in (expr.start, expr.end) if not _signed_infinity(end))
    return expr.args if isinstance(expr, Basic) else ()


def _has_non_finite(expr) -> bool:
    """Whether an infinity, nan or zoo occurs anywhere but as an interval endpoint."""
    stack = [expr]
    while stack:
        node = stack.pop()
        if any(node is value for value in _NON_FINITE) or isinstance(node, AccumBounds):
            return True
        stack.extend(_children(node))
    return False


def _is_variable(expr) -> bool:
    """x, a_1, AB (a product of symbols, as parsed from a segment name)."""
    return isinstance(expr, Symbol) or (isinstance(expr, Mul) and all(isinstance(a, Symbol) for a in expr.args))


def _relations_allowed(gold, pred) -> bool:
    """An equation in the answer is taken for its right side only as `variable = value`."""
    if _contains_relation(gold):
        return True  # math-verify compares equations with equations (x = 1 is not y = 1)
    if is_relation(pred) and not isinstance(pred, Eq):
        return False
    stack = [pred]
    while stack:
        node = stack.pop()
        if isinstance(node, Relational) and not (isinstance(node, Eq) and _is_variable(node.lhs)):
            return False
        if not isinstance(node, Relational):
            stack.extend(_children(node))
    return True


def _contains_relation(expr) -> bool:
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, Relational) or is_relation(node):
            return True
        stack.extend(_children(node))
    return False


def _approximates(decimal_text: str, exact) -> bool:
    """Whether `decimal_text` is a plain decimal that rounds the exact constant `exact` (rule 3)."""
    decimal = parse_plain_number(normalize_answer(decimal_text))
    if decimal is None or not decimal.is_decimal or not isinstance(exact, Basic) or exact.atoms(Float):
        return False
    if exact.free_symbols or not exact.is_number:
        return False
    try:
        distance = Abs(exact.doit() - Rational(decimal.value.numerator, decimal.value.denominator))
        distance = distance.evalf(max(30, decimal.places + 20), strict=True)
        return distance.is_number and distance.is_finite and approximates(decimal, Rational(distance))
    except (PrecisionExhausted, TypeError, ValueError, ArithmeticError):
        return False


def exactify(expr):
    """`expr` with each decimal (a binary Float) replaced by the exact decimal it was written as."""
    try:
        floats = expr.atoms(Float)
    except AttributeError:
        return expr
    return expr.xreplace({f: Rational(to_str(f._mpf_, prec_to_dps(f._prec))) for f in floats}) if floats else expr


def exact_equal(a, b) -> bool:
    """Rule 4 for two constants: equal iff the difference simplifies to 0 or they agree to 50 digits."""
    a, b = _doit(a), _doit(b)
    if a == b:
        return True
    try:
        x, y = a.evalf(EQUAL_DIGITS + 10, strict=True), b.evalf(EQUAL_DIGITS + 10, strict=True)
        if x.is_number and y.is_number and x.is_finite and y.is_finite:
            scale = max(Abs(x), Abs(y))
            return bool(Abs(x - y) <= scale * Rational(1, 10**EQUAL_DIGITS))
    except (PrecisionExhausted, TypeError, ValueError, ArithmeticError):
        pass  # not evaluable to that precision (an exact zero in disguise, say): try simplify
    return _simplifies_to_zero(a - b)


def _doit(expr):
    try:
        return expr.doit()
    except Exception:  # noqa: BLE001 - sympy raises anything; the expression as written is still fine
        return expr


def _simplifies_to_zero(difference) -> bool:
    try:
        difference = simplify(difference)
    except Exception:  # noqa: BLE001
        return False
    if isinstance(difference, MatrixBase):
        return bool(difference.is_zero_matrix)
    return difference == 0


def _is_constant(expr) -> bool:
    return isinstance(expr, Basic) and not expr.free_symbols and bool(expr.is_number)


def _numeric_leaf(a, b, float_rounding=None, numeric_precision=None) -> bool:
    """Replaces math-verify's numeric leaf test (rounding and chopping): exact, for constants."""
    if isinstance(a, MatrixBase) and isinstance(b, MatrixBase):
        a, b = _doit(a), _doit(b)
        return a.shape == b.shape and all(_numeric_leaf(x, y) or _symbolic_leaf(x, y) for x, y in zip(a, b))
    if _is_constant(a) and _is_constant(b):
        return exact_equal(a, b)
    return False


def _symbolic_leaf(a, b) -> bool:
    """Replaces math-verify's symbolic leaf test for expressions with variables (constants were
    decided by `_numeric_leaf`)."""
    if _is_constant(a) and _is_constant(b):
        return False
    try:
        difference = a - b
        return not _differ_somewhere(difference) and _simplifies_to_zero(difference)
    except Exception:  # noqa: BLE001
        return False


def _differ_somewhere(difference) -> bool:
    """Whether `difference` is clearly not 0 at some rational point: then the expressions are not
    equal, and simplify (tens of milliseconds) need not run. Never decides "equal"."""
    if isinstance(difference, MatrixBase) or not isinstance(difference, Basic):
        return False
    symbols = sorted(difference.free_symbols, key=str)
    point = {symbol: Rational(7 + 2 * i, 13 + 3 * i) for i, symbol in enumerate(symbols)}
    try:
        value = difference.xreplace(point).evalf(30)
        return bool(value.is_number and value.is_finite and Abs(value) > Rational(1, 10**12))
    except Exception:  # noqa: BLE001
        return False


# math-verify's structural comparison calls these two by module-global name. If a new version
# renamed them, replacing them would silently keep the numeric shortcuts: refuse to run instead.
for _name, _leaf in (("sympy_numeric_eq", _numeric_leaf), ("sympy_symbolic_eq", _symbolic_leaf)):
    if not hasattr(math_verify_grader, _name):
        raise ImportError(f"math_verify.grader.{_name} is gone: this math-verify version needs the "
                          "grader's exact leaf comparisons ported (r1_lightning/rewards/symbolic.py)")
    setattr(math_verify_grader, _name, _leaf)
