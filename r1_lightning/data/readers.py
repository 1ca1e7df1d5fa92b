"""Readers for the JSON Lines files the package trains and evaluates on.

Every reader returns a list of small frozen dataclasses:

- `PromptExample` (question + ground truth) for prompt sets: MATH and GSM8K, used by GRPO, expert
  iteration and evaluation;
- `SFTExample` (prompt + response) for supervised fine-tuning.

Bad input fails loudly with a `DataFormatError` whose message starts with `path:line:` (1-based,
counting blank lines) and says what was wrong. A file with no records is an error too: a typo'd
config pointing at an empty file should not train on nothing.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from r1_lightning.rewards.extract import extract_boxed_answer

PathLike = str | os.PathLike[str]


class DataFormatError(ValueError):
    """A data file is malformed. `str(error)` is `"path:line: what was wrong"` (`line` may be None)."""

    def __init__(self, path: PathLike, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class PromptExample:
    """A question with its verifiable answer.

    level: MATH difficulty as an int (1..5) when the file says `"Level 3"` or `3`; any other value
    (MATH has two `"Level ?"` problems) is kept as the original string; None when absent.
    pass_rate: the share of sampled answers graded correct, in [0, 1], when the file was annotated
        by difficulty estimation (`PassRateModule`); None when absent.
    """

    question: str
    ground_truth: str
    level: int | str | None = None
    subject: str | None = None
    unique_id: str | None = None
    pass_rate: float | None = None


@dataclass(frozen=True)
class SFTExample:
    """A prompt (template already applied) and the response to learn, with an optional answer."""

    prompt: str
    response: str
    ground_truth: str | None = None


def read_jsonl(path: PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, record)` for each non-blank line of a JSON Lines file (lines are 1-based).

    Raises `FileNotFoundError` for a missing file and `DataFormatError` for a line that is not
    UTF-8, not JSON or not a JSON object, and (when the iteration ends) for a file with no records.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    num_records = 0
    with path.open("rb") as file:
        for line_number, raw_line in enumerate(file, start=1):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataFormatError(path, line_number, f"not valid UTF-8 ({error.reason})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataFormatError(
                    path, line_number, f"invalid JSON: {error.msg} (column {error.colno})"
                ) from None
            if not isinstance(record, dict):
                raise DataFormatError(
                    path, line_number, f"expected a JSON object, got {type(record).__name__}"
                )
            num_records += 1
            yield line_number, record
    if num_records == 0:
        raise DataFormatError(path, None, "empty file: no JSON records")


def _text_field(
    record: dict[str, Any], field: str, path: PathLike, line: int, required: bool = True
) -> str | None:
    """`record[field]` as a string (JSON numbers are accepted and converted); None if optional and absent.

    A required field must be present, not null and not blank.
    """
    value = record.get(field)
    if value is None:
        if not required:
            return None
        problem = f"field {field!r} is null" if field in record else f"missing field {field!r}"
        raise DataFormatError(path, line, f"{problem} (fields present: {sorted(record)})")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataFormatError(path, line, f"field {field!r} must be a string, got {type(value).__name__}")
    value = str(value)
    if required and not value.strip():
        raise DataFormatError(path, line, f"field {field!r} is empty")
    return value


_LEVEL_PATTERN = re.compile(r"(?:Level\s*)?(\d+)")


def _parse_level(value: Any) -> int | str | None:
    """`"Level 3"`, `"3"` and `3` become 3; anything else is kept (a string) or None when absent."""
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _LEVEL_PATTERN.fullmatch(str(value).strip())
    return int(match.group(1)) if match else str(value)


def _parse_math(record: dict[str, Any], path: PathLike, line: int) -> PromptExample | None:
    """MATH: `problem` + `answer`, or `problem` + `solution` whose last `\\boxed{}` is the answer.

    Returns None for a problem whose answer is empty: MATH itself has two (`"answer": ""`, from a
    `\\boxed{}` solution), and a ground truth nothing can match is worse than dropping the problem.
    """
    question = _text_field(record, "problem", path, line)
    answer = _text_field(record, "answer", path, line, required=False)
    if answer is None:
        solution = _text_field(record, "solution", path, line, required=False)
        if solution is None:
            raise DataFormatError(
                path,
                line,
                f"missing field 'answer' (and no 'solution' to read a \\boxed{{}} answer from; "
                f"fields present: {sorted(record)})",
            )
        answer = extract_boxed_answer(solution)
        if answer is None:
            raise DataFormatError(path, line, "no 'answer' field and no complete \\boxed{...} in 'solution'")
    if not answer.strip():
        return None
    return PromptExample(
        question=question,
        ground_truth=answer.strip(),
        level=_parse_level(record.get("level")),
        subject=_text_field(record, "subject", path, line, required=False),
        unique_id=_text_field(record, "unique_id", path, line, required=False),
        pass_rate=_pass_rate(record, path, line),
    )


def _pass_rate(record: dict[str, Any], path: PathLike, line: int) -> float | None:
    value = record.get("pass_rate")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise DataFormatError(path, line, f"field 'pass_rate' must be a number in [0, 1], got {value!r}")
    return float(value)


def _parse_gsm8k(record: dict[str, Any], path: PathLike, line: int) -> PromptExample:
    """GSM8K: `question` + `answer`, whose last line is `#### <number>`.

    The ground truth is that number with whitespace and thousands-separator commas removed
    (`"#### 1,200"` -> `"1200"`), as in the official GSM8K evaluation (openai/grade-school-math).
    """
    question = _text_field(record, "question", path, line)
    solution = _text_field(record, "answer", path, line)
    last_line = solution.rstrip().rsplit("\n", 1)[-1].strip()
    if not last_line.startswith("####"):
        raise DataFormatError(
            path, line, f"field 'answer' does not end with a '#### <number>' line: {last_line!r}"
        )
    answer = last_line.removeprefix("####").strip().replace(",", "")
    if not answer:
        raise DataFormatError(path, line, "nothing after '####' in field 'answer'")
    return PromptExample(question=question, ground_truth=answer, pass_rate=_pass_rate(record, path, line))


_PROMPT_PARSERS: dict[str, Callable[[dict[str, Any], PathLike, int], PromptExample | None]] = {
    "math": _parse_math,
    "gsm8k": _parse_gsm8k,
}


def _detect_dataset(record: dict[str, Any], path: PathLike, line: int) -> str:
    """Tell MATH (`problem`) from GSM8K (`question`) by the fields of a record."""
    if "problem" in record:
        return "math"
    if "question" in record:
        return "gsm8k"
    raise DataFormatError(
        path,
        line,
        f"cannot tell the dataset from fields {sorted(record)}: expected 'problem' (MATH) or "
        f"'question' (GSM8K); set dataset= explicitly",
    )


def load_prompt_dataset(
    path: PathLike, dataset: Literal["auto", "math", "gsm8k"] = "auto"
) -> list[PromptExample]:
    """Read a prompt set. `dataset="auto"` picks the reader from the first record's fields.

    Problems with an empty answer are skipped with a warning that lists their lines.
    """
    if dataset != "auto" and dataset not in _PROMPT_PARSERS:
        raise ValueError(f"unknown dataset {dataset!r}; expected 'auto' or one of {sorted(_PROMPT_PARSERS)}")
    records = list(read_jsonl(path))
    if dataset == "auto":
        first_line, first_record = records[0]
        dataset = _detect_dataset(first_record, path, first_line)
    parse = _PROMPT_PARSERS[dataset]
    examples, skipped_lines = [], []
    for line, record in records:
        example = parse(record, path, line)
        if example is None:
            skipped_lines.append(line)
        else:
            examples.append(example)
    if skipped_lines:
        warnings.warn(
            f"{path}: skipped {len(skipped_lines)} problem(s) with an empty answer, at lines "
            f"{skipped_lines[:20]}",
            stacklevel=2,
        )
    if not examples:
        raise DataFormatError(path, None, "no problem with a non-empty answer")
    return examples


def load_math(path: PathLike) -> list[PromptExample]:
    """Read MATH-style problems (`problem` + `answer` or `solution`; keeps level, subject, unique_id)."""
    return load_prompt_dataset(path, "math")


def load_gsm8k(path: PathLike) -> list[PromptExample]:
    """Read GSM8K problems (`question` + `answer` ending in `#### <number>`)."""
    return load_prompt_dataset(path, "gsm8k")


_CHAT_ROLES = ("system", "user", "assistant")


def _parse_messages(messages: Any, path: PathLike, line: int) -> tuple[str, str]:
    """A single-turn chat -> (prompt, response).

    Accepted shapes: `[user, assistant]` or `[system, user, assistant]`. The system message is
    prepended to the user's text with a newline (we train on plain text, not a chat template).
    Multi-turn conversations are rejected rather than silently cut.
    """
    if not isinstance(messages, list) or not messages:
        raise DataFormatError(path, line, "field 'messages' must be a non-empty list")
    for index, message in enumerate(messages):
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise DataFormatError(
                path, line, f"messages[{index}] must be an object with string 'role' and 'content'"
            )
        if message["role"] not in _CHAT_ROLES:
            raise DataFormatError(
                path,
                line,
                f"messages[{index}] has role {message['role']!r}; expected one of {list(_CHAT_ROLES)}",
            )
    roles = [message["role"] for message in messages]
    if roles not in (["user", "assistant"], ["system", "user", "assistant"]):
        raise DataFormatError(
            path,
            line,
            f"messages must be one user then one assistant message, optionally after one system "
            f"message; got roles {roles}",
        )
    content = {message["role"]: message["content"] for message in messages}
    for role in ("user", "assistant"):
        if not content[role].strip():
            raise DataFormatError(path, line, f"the {role} message is empty")
    prompt = content["user"] if "system" not in content else f"{content['system']}\n{content['user']}"
    return prompt, content["assistant"]


def _parse_sft(record: dict[str, Any], path: PathLike, line: int) -> SFTExample:
    """`prompt` + `response` (+ optional `ground_truth`), or a chat `messages` list (+ `ground_truth`)."""
    if "messages" in record:
        prompt, response = _parse_messages(record["messages"], path, line)
    elif "prompt" in record or "response" in record:
        prompt = _text_field(record, "prompt", path, line)
        response = _text_field(record, "response", path, line)
    else:
        raise DataFormatError(
            path,
            line,
            f"an SFT record needs 'prompt' and 'response' fields or a 'messages' list; "
            f"fields present: {sorted(record)}",
        )
    ground_truth = _text_field(record, "ground_truth", path, line, required=False)
    return SFTExample(prompt=prompt, response=response, ground_truth=ground_truth)


def load_sft(path: PathLike) -> list[SFTExample]:
    """Read supervised pairs: `prompt` + `response` (+ `ground_truth`) lines or chat `messages` lines."""
    return [_parse_sft(record, path, line) for line, record in read_jsonl(path)]
