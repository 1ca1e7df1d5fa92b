"""String normalization of final answers, in the style of the Hendrycks MATH and Dr. GRPO graders,
and exact parsing of plain numbers. Together they decide most comparisons without sympy.

What normalization forgives, because it never changes the value:
- `\\dfrac`/`\\tfrac`, `\\left`/`\\right`, spacing commands, whitespace, a trailing period;
- invisible content: `\\phantom{…}`, `\\hphantom{…}`, `\\vphantom{…}` (or the one token after an
  unbraced `\\phantom -`) is dropped, so `\\phantom{1}2` is `2`, not `12`;
- degrees (`^\\circ`, `°`, "degrees"), `$`, `\\%` and "percent", a unicode minus or fraction slash;
- thousands separators: `1{,}234`, `9,\\!240` (`111, \\! 111`), and `1,234` with no space after a comma
  and groups of three digits. A comma followed by a space separates a list: `81, 256` is two
  numbers, never 81256. `70,110` can be either, so it has a `list_reading` too, and the grader
  accepts either reading (70110, or the list 70, 110);
- plain-text `pi` and `sqrt(…)`/`sqrt{…}`/`√(…)` for `\\pi` and `\\sqrt{…}` (`25*pi` = `25\\pi`);
- a leading `\\approx` ("about 8.24" is 8.24; a decimal still obeys the rounding rule below);
- a unit written in `\\text{}`/`\\mbox{}` after the value (`180\\text{ miles}`; not a.m./p.m.), or a
  unit word from a fixed list after a number (`180 miles`, `5 cm^2`); other trailing letters stay,
  so `4t` and `4m` are `4` times a variable, not `4`;
- `\\text{}` around a word answer, a number word up to twenty (`\\mbox{four}` = `4`);
- an interval written as a double inequality in one variable: `1 \\le x \\le 9` is `x \\in [1, 9]`,
  `<` (or `\\lt`) giving an open end, `9 \\ge x > 1` read from the right (`(1, 9]`);
- one leading variable (`x = 3`, `a_1 = 5`, `\\theta = 30`, `x \\in [2, 5)`), kept aside as
  `Normalized.variable`: the grader accepts `x = 3` for `3` (and `3` for `x = 3`) but not for
  `y = 3`. Anything else before an `=` is not a variable (`1 + 1 = 5` stays an equation), and a
  chain with a second `=` is not stripped.

What it does not forgive:
- a base subscript: `4210_7` is canonically `4210_{7}` and is compared by `same_numeral` (same
  base and digits; a plain numeral is read in the other side's base, so `4210` = `4210_{7}` and
  `4210` = `4210_{10}`, but `4210_{10}` != `4210_{7}` and `1477` != `4210_{7}`);
- a hedge: `\\approx`, `\\simeq` or `\\sim` between values (`5 \\approx 6`) splits the answer into
  `hedge_parts`, and the grader takes a hedge only for the same hedge, part by part; "or" between
  values lists alternatives (`5 \\text{ or } 6`), which are a list, never equal to one value.

Everything here is a fixed sequence of linear regex passes and scans over a string of bounded length
(the grader checks the length first), so it is always fast.
"""

import re
from dataclasses import dataclass
from fractions import Fraction

# A hedge between values: "5 \approx 6". At the start of an answer it only means "about".
_HEDGE = re.compile(r"\\(?:approx|simeq|sim)(?![a-zA-Z])|≈")
_LEADING_HEDGE = re.compile(rf"^\s*(?:{_HEDGE.pattern})\s*")
# Formatting that never changes the value. Each pair is (pattern, replacement).
_FORMATTING = [
    (_LEADING_HEDGE, ""),
    # Plain-text pi and square roots: 25*pi, 2 - sqrt(3), sqrt{3}, √(3), √3.
    (re.compile(r"(?<![\\a-zA-Z])pi(?![a-zA-Z])"), r"\\pi"),
    (re.compile(r"(?:(?<![\\a-zA-Z])sqrt|√)\s*\(((?:[^()]|\([^()]*\))*)\)"), r"\\sqrt{\1}"),
    (re.compile(r"(?:(?<![\\a-zA-Z])sqrt|√)(?=\s*[{\d])"), r"\\sqrt"),
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"(?<=\d),\s*\\!\s*(?=\d)"), ""),  # the thousands separator ,\! whatever the spaces
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
# An interval as a double inequality: "1 \le x < 9" (checked only on short answers: the lazy bounds
# would backtrack on long runs of spaces).
_LESS, _GREATER = r"<=|\\leq?(?:slant)?|≤|<|\\lt", r">=|\\geq?(?:slant)?|≥|>|\\gt"
_BOUND = r"[^<>=,≤≥]+?"
_DOUBLE_INEQUALITIES = [
    re.compile(rf"\s*(?P<low>{_BOUND})\s*(?P<low_op>{_LESS})(?![a-zA-Z])\s*(?P<variable>[a-zA-Z]|\\[a-zA-Z]+)"
               rf"\s*(?P<high_op>{_LESS})(?![a-zA-Z])\s*(?P<high>{_BOUND})\s*"),
    re.compile(rf"\s*(?P<high>{_BOUND})\s*(?P<high_op>{_GREATER})(?![a-zA-Z])\s*(?P<variable>[a-zA-Z]|\\[a-zA-Z]+)"
               rf"\s*(?P<low_op>{_GREATER})(?![a-zA-Z])\s*(?P<low>{_BOUND})\s*"),
]
MAX_INEQUALITY_CHARS = 200
# TeX's invisible boxes: their argument takes space but shows nothing.
_INVISIBLE = re.compile(r"\\[hv]?phantom(?![a-zA-Z])\s*")
_TOKEN = re.compile(r"\\(?:[a-zA-Z]+|.)|.", re.DOTALL)
# Shorthand the graders expand: \frac12 -> \frac{1}{2}, \frac{a}2 -> \frac{a}{2}, \sqrt2 -> \sqrt{2}.
_SHORT_FRAC_FIRST = re.compile(r"\\frac(\d)")
_SHORT_FRAC_SECOND = re.compile(r"(\\frac\{[^{}]*\})(\d)")
_SHORT_SQRT = re.compile(r"\\sqrt(\d)")
_THOUSANDS = re.compile(r"-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")  # no space after a comma
# A numeral with a base subscript: 4210_7, 4210_{7}, A5_{11}, 0.0011_{2}.
_BASE_NUMERAL = re.compile(r"(?P<digits>[0-9A-Za-z]+(?:\.[0-9A-Za-z]+)?)_(?:\{(?P<braced>\d{1,2})\}|(?P<bare>\d))")
_BASE_DIGITS = re.compile(r"[0-9A-Z]+(?:\.[0-9A-Z]+)?")
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
    s = _drop_invisible(answer).strip().rstrip(".")
    for pattern, replacement in _FORMATTING:
        s = pattern.sub(replacement, s)
    s = _as_interval(s)
    prefix = _VARIABLE_PREFIX.match(s)
    head, variable = (s[: prefix.end()], prefix.group(1)) if prefix else ("", None)
    s = s[len(head) :].strip().rstrip(".")
    if _TRAILING_TEXT_UNIT.search(s) and not _TEXT_WRAPPER.fullmatch(s):  # a unit, not a text answer
        s = _TRAILING_TEXT_UNIT.sub("", s)
    for _ in range(2):  # \textbf{\text{A}} has two layers
        s = _TEXT_WRAPPER.sub(r"\1", s)
    return head, variable, _TRAILING_UNIT_WORDS.sub("", s).strip().rstrip(".")


def _drop_invisible(answer: str) -> str:
    """`answer` without `\\phantom`, `\\hphantom`, `\\vphantom` and their argument (a braced group,
    or else one token: `\\phantom -1` is `1`)."""
    pieces, position = [], 0
    while (command := _INVISIBLE.search(answer, position)) is not None:
        pieces.append(answer[position : command.start()])
        position = command.end()
        if answer.startswith("{", position):
            position = _group_end(answer, position)
        elif (token := _TOKEN.match(answer, position)) is not None:
            position = token.end()
    pieces.append(answer[position:])
    return "".join(pieces)


def _group_end(text: str, start: int) -> int:
    """The index after the `}` that closes the `{` at `start` (the end of `text` if none does)."""
    depth = 0
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return index + 1
    return len(text)


def _as_interval(answer: str) -> str:
    """`x \\in [1, 9)` for `1 \\le x < 9` (or `9 > x \\ge 1`); any other answer as it is."""
    if len(answer) > MAX_INEQUALITY_CHARS or not any(c in answer for c in "<>\u2264\u2265\\"):
        return answer
    for pattern in _DOUBLE_INEQUALITIES:
        match = pattern.fullmatch(answer)
        if match is not None:
            low_open, high_open = (match[op].strip("\\") in ("<", ">", "lt", "gt") for op in ("low_op", "high_op"))
            return (f"{match['variable']} \\in {'(' if low_open else '['}{match['low'].strip()}, "
                    f"{match['high'].strip()}{')' if high_open else ']'}")
    return answer


def list_reading(answer: str) -> str | None:
    """`70, 110` for `70,110`: an answer that reads as a number with thousands separators (no space
    after its commas, groups of three digits) may also be a list written without spaces. None for
    any other answer."""
    rest = _undress(answer)[2].strip()
    return rest.replace(",", ", ") if _THOUSANDS.fullmatch(rest) else None


def hedge_parts(answer: str) -> list[str]:
    """The values an answer hedges between (`5 \\approx 6` -> `["5 ", " 6"]`), or `[answer]` if it
    has no hedge; a leading `\\approx` ("about 8.24") is not a hedge."""
    return _HEDGE.split(_LEADING_HEDGE.sub("", answer)) if _HEDGE.search(answer) else [answer]


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
    thousands = _THOUSANDS.fullmatch(s.strip()) is not None  # before spaces go: "81, 256" is a list
    s = _WHITESPACE.sub("", s).rstrip(".")
    s = _SHORT_FRAC_FIRST.sub(r"\\frac{\1}", s)
    s = _SHORT_FRAC_SECOND.sub(r"\1{\2}", s)
    s = _SHORT_SQRT.sub(r"\\sqrt{\1}", s)
    if thousands:
        s = s.replace(",", "")
    numeral = _BASE_NUMERAL.fullmatch(s) if "_" in s else None
    if numeral is not None and any(c.isdigit() for c in numeral["digits"]):
        s = f"{numeral['digits'].upper()}_{{{int(numeral['braced'] or numeral['bare'])}}}"
    return Normalized(variable, _NUMBER_WORD_VALUES.get(s.lower(), s))


def normalize_answer(answer: str) -> str:
    """The canonical string of `answer` without its leading variable (see `normalize`)."""
    return normalize(answer).value


def same_numeral(a: str, b: str) -> bool | None:
    """Whether two normalized answers, one or both a numeral with a base subscript, are the same
    numeral; None when neither has a base subscript. Two bases must agree; a plain numeral is read
    in the other's base (`4210` is `4210_{7}`, a base-10 numeral is compared by value), and digits
    must be valid in that base."""
    a_numeral, b_numeral = _base_numeral(a), _base_numeral(b)
    if a_numeral is None and b_numeral is None:
        return None
    (a_digits, a_base), (b_digits, b_base) = a_numeral or (a, None), b_numeral or (b, None)
    if a_base is not None and b_base is not None and a_base != b_base:
        return False
    base = a_base or b_base
    if base == 10:
        a_number, b_number = parse_plain_number(a_digits), parse_plain_number(b_digits)
        return a_number is not None and b_number is not None and a_number.value == b_number.value
    if not (_valid_in_base(a_digits, base) and _valid_in_base(b_digits, base)):
        return False
    return a_digits.lstrip("0") == b_digits.lstrip("0")


def _base_numeral(normalized: str) -> tuple[str, int] | None:
    """(digits, base) of a canonical `4210_{7}` (see `normalize`), else None."""
    digits, separator, base = normalized.partition("_{")
    if not separator or not base.endswith("}") or not base[:-1].isdigit():
        return None
    numeral = _BASE_DIGITS.fullmatch(digits) is not None and any(c.isdigit() for c in digits)
    return (digits, int(base[:-1])) if numeral else None  # P_{1} is a variable


def _valid_in_base(digits: str, base: int) -> bool:
    return (2 <= base <= 36 and _BASE_DIGITS.fullmatch(digits) is not None
            and all(digit == "." or int(digit, 36) < base for digit in digits))


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
