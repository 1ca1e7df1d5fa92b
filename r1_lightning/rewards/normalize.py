"""String normalization of final answers, in the style of the Hendrycks MATH and Dr. GRPO graders,
and exact parsing of plain numbers. Together they decide most comparisons without sympy.

What normalization forgives, because it never changes the value:
- `\\dfrac`/`\\tfrac`, `\\left`/`\\right`, spacing commands, whitespace, a trailing period;
- degrees (`^\\circ`, `°`, "degrees"), `$`, `\\%` and "percent", thousands separators (`1,234`,
  `1{,}234`, `9,\\!240`), a unicode minus or fraction slash;
- a unit written in `\\text{}`/`\\mbox{}` after the value (`180\\text{ miles}`; not a.m./p.m.), or a
  unit word from a fixed list after a number (`180 miles`, `5 cm^2`); other trailing letters stay,
  so `4t` and `4m` are `4` times a variable, not `4`;
- `\\text{}` around a word answer, a number word up to twenty (`\\mbox{four}` = `4`);
- one leading variable (`x = 3`, `a_1 = 5`, `\\theta = 30`, `x \\in [2, 5)`), kept aside as
  `Normalized.variable`: the grader accepts `x = 3` for `3` (and `3` for `x = 3`) but not for
  `y = 3`. Anything else before an `=` is not a variable (`1 + 1 = 5` stays an equation), and a
  chain with a second `=` is not stripped.

Everything here is a fixed sequence of linear regex passes over a string of bounded length (the
grader checks the length first), so it is always fast.
"""

import re
from dataclasses import dataclass
from fractions import Fraction

# Formatting that never changes the value. Each pair is (pattern, replacement).
_FORMATTING = [
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\(?:left|right)(?![a-zA-Z])\.?"), ""),  # \left( \right] and the null delimiter \right.
    # Spacing commands, but not the second backslash of a matrix row break `\\`.
    (re.compile(r"(?<!\\)\\(?:displaystyle|!|,|;|:)"), ""),
    (re.compile(r"(?<!\\)\\ |~"), " "),
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
_VARIABLE_PREFIX = re.compile(r"^\s*((?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?)\s*(?:=|\\in\b)(?!.*=)")
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


@dataclass(frozen=True)
class Normalized:
    variable: str | None  # the leading variable of "x = 3" ("x"), else None
    value: str  # the canonical string of the rest ("3")


def _undress(answer: str) -> tuple[str, str | None, str]:
    """(the `x =` prefix as written, its variable, the rest without what does not change its value)."""
    s = answer.strip().rstrip(".")
    for pattern, replacement in _FORMATTING:
        s = pattern.sub(replacement, s)
    prefix = _VARIABLE_PREFIX.match(s)
    head, variable = (s[: prefix.end()], prefix.group(1)) if prefix else ("", None)
    s = s[len(head) :].strip().rstrip(".")
    if _TRAILING_TEXT_UNIT.search(s) and not _TEXT_WRAPPER.fullmatch(s):  # a unit, not a text answer
        s = _TRAILING_TEXT_UNIT.sub("", s)
    for _ in range(2):  # \textbf{\text{A}} has two layers
        s = _TEXT_WRAPPER.sub(r"\1", s)
    return head, variable, _TRAILING_UNIT_WORDS.sub("", s).strip().rstrip(".")


def strip_dressing(answer: str) -> str:
    """`answer` without what does not change its value (units, degrees, `$`, `%`, `\\left`, `\\dfrac`,
    `\\text{}` wrappers, a trailing period), spacing and an `x =` prefix kept: the form the symbolic
    step parses."""
    head, _variable, rest = _undress(answer)
    return f"{head} {rest}" if head else rest


def normalize(answer: str) -> Normalized:
    """The leading variable and a canonical string of a final answer: equal strings mean equal
    answers. The converse does not hold: different strings go on to a numeric or symbolic test."""
    _head, variable, s = _undress(answer)
    if variable is not None:
        variable = _WHITESPACE.sub("", variable).replace("{", "").replace("}", "")
    s = _WHITESPACE.sub("", s).rstrip(".")
    s = _SHORT_FRAC_FIRST.sub(r"\\frac{\1}", s)
    s = _SHORT_FRAC_SECOND.sub(r"\1{\2}", s)
    s = _SHORT_SQRT.sub(r"\\sqrt{\1}", s)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return Normalized(variable, _NUMBER_WORD_VALUES.get(s.lower(), s))


def normalize_answer(answer: str) -> str:
    """The canonical string of `answer` without its leading variable (see `normalize`)."""
    return normalize(answer).value


# A decimal is read as a rounded approximation only when it carries at least this many significant
# digits (trailing zeros do not count). Then its rounding window is at most 5e-6 relative wide:
# fractions with denominators up to a few hundred are further apart than that, so one decimal can
# stand for one short exact number at most, and a constant decimal answer cannot match many.
MIN_APPROXIMATION_DIGITS = 6


@dataclass(frozen=True)
class PlainNumber:
    """The exact value of a plain number as written; for a decimal (`is_decimal`), the position of
    its last written digit (`places` = 3 for 1.250, -3 for 3.5 x 10^4) and its significant digits
    without leading or trailing zeros (`digits` = 2 for 1.250)."""

    value: Fraction
    is_decimal: bool = False
    places: int = 0
    digits: int = 0


def approximates(decimal: PlainNumber, distance_bound) -> bool:
    """Whether `decimal` is a correct rounding of an exact value at distance `distance_bound` from
    it (a Fraction, or an upper bound on the distance). The rule, shared by the fast path and the
    symbolic step: a decimal equals an exact value it is not identical to iff it has at least
    `MIN_APPROXIMATION_DIGITS` significant digits and the value rounds to it at its last written
    digit. So `0.333333` = 1/3 and `3.464102` = 2 sqrt 3, but `0.33` != 1/3, `1.00` != 4036082/4036081
    and `0.0` != 1/4194304: a short decimal is an exact number of its own."""
    if not decimal.is_decimal or decimal.digits < MIN_APPROXIMATION_DIGITS:
        return False
    return distance_bound <= Fraction(1, 2) * Fraction(10) ** -decimal.places


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
        value = sign * Fraction(mantissa) * Fraction(10) ** exponent
        if "." not in mantissa:
            return PlainNumber(value)
        places = len(mantissa) - mantissa.index(".") - 1 - exponent
        digits = len(mantissa.replace(".", "").strip("0"))
        return PlainNumber(value, True, places, digits)
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
    return PlainNumber(sign * (whole + Fraction(numerator, denominator)))
