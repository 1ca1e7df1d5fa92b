"""Pull the final answer out of a model response: the last `\\boxed{}`, the last `<answer>` block,
the last number. Every function is a linear scan: responses are untrusted and can be huge."""

import re
from fractions import Fraction

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
BOX_COMMANDS = ("\\boxed", "\\fbox")

_BOX_TOKEN_RE = re.compile(r" +([^\s$]+)")  # `\boxed 5`
# A number as people write it: optional sign and currency, thousands separators, decimals, then
# an exponent that makes it another number: `1e3`, `2.5 \times 10^{3}`, `10^3`, `2**10`. The
# thousands form comes first so "1,234" is one number rather than "1" and "234". A hexadecimal
# `0x10` is matched whole, so that it is not read as 10; a digit right after `^` or `_` that no
# number carries (`cm^2`, `x_1`) is an exponent or index, not a number.
_NUMBER_RE = re.compile(
    r"(?<![\d.])(?P<hex>0[xX][0-9a-fA-F]+)"
    r"|(?<!\^)(?<!\^\{)(?<!_)(?<!_\{)(?P<sign>-?)\$?(?P<number>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:[eE](?P<e>[+-]?\d+)"
    r"|[ ]*(?P<times>(?:\\times|\\cdot|\u00d7|\*)[ ]*10[ ]*)?(?:\^|\*\*)[ ]*\{?[ ]*(?P<power>[+-]?\d+)[ ]*\}?)?"
)
MAX_EXPONENT_DIGITS = 400  # a number with an exponent is read only up to this many digits


def extract_boxed_answer(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, nested braces included.

    `\\boxed 5` (no braces) gives the next token. Returns None when there is no box or the last
    one is never closed (a truncated response has no final answer), and "" for `\\boxed{}`.
    """
    start = max(text.rfind(command) for command in BOX_COMMANDS)
    if start < 0:
        return None
    command = next(c for c in BOX_COMMANDS if text.startswith(c, start))
    i = start + len(command)
    if i < len(text) and text[i] == " ":  # the `\boxed 5` form
        token = _BOX_TOKEN_RE.match(text, i)
        return token.group(1).rstrip(".") if token else None
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    j = i
    while j < len(text):
        char = text[j]
        if char == "\\":  # `\{` and `\}` are literal braces, not grouping
            j += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
        j += 1
    return None


def unwrap_boxed(answer: str) -> str | None:
    """`answer` itself, or the content of its last box if it has one (None if that box is unclosed)."""
    if not any(command in answer for command in BOX_COMMANDS):
        return answer
    return extract_boxed_answer(answer)


def extract_answer_tag(response: str) -> str | None:
    """The text between the last `<answer>` and the `</answer>` after it, stripped.

    None when there is no `<answer>` or the last one is never closed: only the final answer block
    counts, so writing several answers (hedging) gains nothing.
    """
    start = response.rfind(ANSWER_OPEN)
    if start < 0:
        return None
    start += len(ANSWER_OPEN)
    end = response.find(ANSWER_CLOSE, start)
    if end < 0:
        return None
    return response[start:end].strip()


def extract_last_number(text: str) -> str | None:
    """The last number in `text` with `$`, thousands separators and a trailing `.` removed
    ("costs $1,234." -> "1234"); a number with an exponent as its exact value ("1e3" and "10^3"
    -> "1000", "2^{-1}" -> "1/2"). None if there is none, or if the last one is hexadecimal or has
    an exponent too large to read: such a number is refused rather than read as its last digits."""
    last = None
    for last in _NUMBER_RE.finditer(text):
        pass
    if last is None or last["hex"]:
        return None
    number = last["number"].replace(",", "")
    if last["e"] is None and last["power"] is None:
        return last["sign"] + number
    exponent = int(last["e"] or last["power"])
    scientific = last["e"] is not None or last["times"] is not None  # 2.5e3, 2.5 \times 10^3
    base = Fraction(10) if scientific else Fraction(number)  # else a power: 2^10
    if abs(exponent) * len(str(base.numerator)) > MAX_EXPONENT_DIGITS or (base == 0 and exponent < 0):
        return None
    value = Fraction(number) * base**exponent if scientific else base**exponent
    value = -value if last["sign"] else value  # -2^2 is -(2^2)
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
