"""Pull the final answer out of a model response: the last `\\boxed{}`, the last `<answer>` block,
the last number. Every function is a linear scan: responses are untrusted and can be huge."""

import re

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
BOX_COMMANDS = ("\\boxed", "\\fbox")

_BOX_TOKEN_RE = re.compile(r" +([^\s$]+)")  # `\boxed 5`
# A number as people write it: optional sign and currency, thousands separators, decimals.
# The thousands form comes first so "1,234" is one number rather than "1" and "234".
_NUMBER_RE = re.compile(r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\$?\.\d+")


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
    ("costs $1,234." -> "1234"), or None if there is none."""
    last = None
    for last in _NUMBER_RE.finditer(text):
        pass
    if last is None:
        return None
    return last.group().replace("$", "").replace(",", "")
