"""String normalization of final answers, in the style of the Hendrycks MATH and Dr. GRPO graders,
and exact parsing of plain numbers. Together they decide most comparisons without sympy.

Everything here is a fixed sequence of linear regex passes over a short string (the grader caps
the length first), so it is always fast.
"""

import re
from dataclasses import dataclass
from fractions import Fraction

# Formatting that never changes the value. Each pair is (pattern, replacement).
_FORMATTING = [
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\(?:left|right)(?![a-zA-Z])\.?"), ""),  # \left( \right] and the null delimiter \right.
    (re.compile(r"\\(?:displaystyle|!|,|;|:)"), ""),
    (re.compile(r"\\ |~"), " "),
    (re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree"), ""),  # degrees: 30^\circ is 30
    (re.compile(r"\{,\}"), ""),  # LaTeX thousands separator 1{,}000
    (re.compile(r"\\?\$|\\?%|\bpercent\b"), ""),  # dollars and percent signs
    (re.compile("\u2212"), "-"),  # unicode minus
    (re.compile("[\u2044\u2215]"), "/"),  # unicode fraction and division slashes: 5⁄11
    # Lists written in words: "6, 8\text{, and }10", "12\text{ and }13".
    (re.compile(r",?\s*(?:\\text\{\s*,?\s*and\s*\}|\band\b)\s*"), ","),
    (re.compile(r",(?:\s*,)+"), ","),
]

_TEXT_COMMANDS = r"\\(?:text|textnormal|textrm|textbf|mbox|mathrm|mathbf|operatorname)"
# A unit written as text after a value: "180\text{ miles}", "32\text{ cm}^2", "34\text{ sq. units}".
# Not "9\text{ a.m.}": a.m. and p.m. change the answer.
_TRAILING_TEXT_UNIT = re.compile(
    _TEXT_COMMANDS + r"\{\s*(?![ap]\.?m\b)[a-zA-Z][a-zA-Z. ]*\}(?:\^\{?[23]\}?)?\s*$"
)
_TEXT_WRAPPER = re.compile(_TEXT_COMMANDS + r"\{([^{}]*)\}")  # \text{Monday} -> Monday
# A unit written as a plain word after a number: "180 miles", "12 square units", "5 cm^2".
_UNIT_WORDS = (
    "units?|square|sq\\.?|cubic|cm|mm|km|meters?|metres?|centimeters?|inch(?:es)?|in|feet|foot|ft|"
    "yards?|yd|miles?|mph|seconds?|sec|minutes?|min|hours?|hrs?|days?|weeks?|months?|years?|"
    "dollars?|cents?|degrees?|pounds?|lbs?|ounces?|oz|gallons?|liters?|litres?|grams?|kg|people|ways"
)
_TRAILING_UNIT_WORDS = re.compile(rf"(?<=[\d}}])(?:[\s.]*(?:{_UNIT_WORDS})\b)+(?:\^\{{?[23]\}}?)?\s*$")
# "x = 3", "\theta = 30", "a_1 = 5", "x \in [2, 5)": one variable, one equals (or \in) sign.
_VARIABLE_PREFIX = re.compile(r"^\s*(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?\s*(?:=|\\in\b)(?!.*=)")
_WHITESPACE = re.compile(r"\s+")
# Shorthand the graders expand: \frac12 -> \frac{1}{2}, \frac{a}2 -> \frac{a}{2}, \sqrt2 -> \sqrt{2}.
_SHORT_FRAC_FIRST = re.compile(r"\\frac(\d)")
_SHORT_FRAC_SECOND = re.compile(r"(\\frac\{[^{}]*\})(\d)")
_SHORT_SQRT = re.compile(r"\\sqrt(\d)")
_THOUSANDS = re.compile(r"-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")
# A whole answer written as a word: "\mbox{four}" is 4.
_NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
]
_NUMBER_WORD_VALUES = {word: str(value) for value, word in enumerate(_NUMBER_WORDS)}


def normalize_answer(answer: str) -> str:
    """A canonical string for a final answer: equal strings mean equal answers.

    Removes what does not change the value (`\\left`/`\\right`, `\\dfrac`, spacing commands, `^\\circ`,
    `$`, `%`, text units, thousands separators, an `x =` prefix, all whitespace, a trailing period)
    and unwraps `\\text{...}`; a number word ("four", up to twenty) becomes digits. The converse
    does not hold: different strings go on to a numeric or symbolic comparison.
    """
    s = answer.strip().rstrip(".")
    for pattern, replacement in _FORMATTING:
        s = pattern.sub(replacement, s)
    s = s.strip().rstrip(".")
    if _TRAILING_TEXT_UNIT.search(s) and not _TEXT_WRAPPER.fullmatch(s):  # a unit, not a text answer
        s = _TRAILING_TEXT_UNIT.sub("", s)
    for _ in range(2):  # \textbf{\text{A}} has two layers
        s = _TEXT_WRAPPER.sub(r"\1", s)
    s = _TRAILING_UNIT_WORDS.sub("", s)
    s = _VARIABLE_PREFIX.sub("", s)
    s = _WHITESPACE.sub("", s).rstrip(".")
    s = _SHORT_FRAC_FIRST.sub(r"\\frac{\1}", s)
    s = _SHORT_FRAC_SECOND.sub(r"\1{\2}", s)
    s = _SHORT_SQRT.sub(r"\\sqrt{\1}", s)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return _NUMBER_WORD_VALUES.get(s.lower(), s)


@dataclass(frozen=True)
class PlainNumber:
    value: Fraction
    is_decimal: bool  # written with a decimal point, so possibly a rounded approximation


_DECIMAL = r"(?:\d+(?:\.\d*)?|\.\d+)"
# 12, -0.5, 3.5\times10^{4}, 2.5e-3. Exponents stay small so the exact value stays cheap.
_DECIMAL_RE = re.compile(
    rf"(?P<sign>-?)(?P<mantissa>{_DECIMAL})"
    r"(?:(?:\\times|\\cdot|\*)10\^(?:\{(?P<braced>[+-]?\d{1,3})\}|(?P<bare>\d))|[eE](?P<e>[+-]?\d{1,3}))?"
)
# \frac{3}{4}, -\frac{3}{4}, \frac{-3}{4}, 3/4, and mixed numbers 2\frac{1}{2} (= 5/2, as in MATH).
_FRACTION_RE = re.compile(
    r"(?P<sign>-?)(?:(?P<whole>\d+)?\\frac\{(?P<num>-?\d+)\}\{(?P<den>-?\d+)\}|(?P<snum>\d+)/(?P<sden>\d+))"
)


def parse_plain_number(normalized: str) -> PlainNumber | None:
    """The exact value of a normalized answer that is a plain number, or None if it is not one."""
    if len(normalized) > 400:  # int() refuses more than 4300 digits anyway; keep it cheap
        return None
    sign = -1 if normalized.startswith("-") else 1
    match = _DECIMAL_RE.fullmatch(normalized)
    if match:
        exponent = int(match["braced"] or match["bare"] or match["e"] or 0)
        mantissa = match["mantissa"]
        return PlainNumber(sign * Fraction(mantissa) * Fraction(10) ** exponent, "." in mantissa)
    match = _FRACTION_RE.fullmatch(normalized)
    if match is None:
        return None
    if match["snum"] is not None:
        numerator, denominator, whole = int(match["snum"]), int(match["sden"]), 0
    else:
        numerator, denominator, whole = int(match["num"]), int(match["den"]), int(match["whole"] or 0)
        if match["whole"] is not None and (numerator < 0 or denominator < 0):
            return None  # 2\frac{-1}{2} is not a mixed number
    if denominator == 0:
        return None
    return PlainNumber(sign * (whole + Fraction(numerator, denominator)), False)
