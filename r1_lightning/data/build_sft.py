"""Build R1-Zero SFT files from worked solutions: MATH (`problem`, `solution`, `answer`) and GSM8K
(`question`, `answer` ending in `#### <number>`).

Each output line is `{"prompt", "response", "ground_truth"}`, the format `load_sft` reads:

- `prompt`: the question rendered with a prompt template (`r1_zero` by default), exactly as
  `PromptDataModule` renders it, so SFT teaches the prompts that GRPO and evaluation then use;
- `response`: `" {reasoning} </think> <answer> {answer} </answer>"`, the text after the prompt's
  `Assistant: <think>`;
- `ground_truth`: the answer, which `filter_correct: true` grades the response against.

    python -m r1_lightning.data.build_sft gsm8k data/gsm8k/train.jsonl data/gsm8k/sft_chat.jsonl \\
        --template configs/gsm8k/r1_zero_chat.prompt
    python -m r1_lightning.data.build_sft math prm800k/math_splits/train.jsonl data/math/sft.jsonl \\
        --id-prefix train/ --exclude data/math/validation.jsonl

The output is a function of the input and options alone (input order, fixed JSON encoding), so
rebuilding reproduces a shipped file byte for byte.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from r1_lightning.data.readers import (
    DataFormatError,
    PathLike,
    _parse_gsm8k,
    _parse_math,
    _text_field,
    read_jsonl,
)
from r1_lightning.data.templates import load_template, render_prompt
from r1_lightning.rewards.extract import BOX_COMMANDS, extract_boxed_answer

PROG = "python -m r1_lightning.data.build_sft"
# GSM8K's calculator annotations: `48/2 = <<48/2=24>>24` is `48/2 = 24` with the call the
# solution writers' calculator made. Non-greedy and within a line: an annotation never spans lines.
_CALCULATOR_ANNOTATION = re.compile(r"<<[^\n]*?>>")


def sft_row(template: str, question: str, reasoning: str, answer: str) -> dict[str, str]:
    """One R1-Zero SFT row: the rendered prompt, `" {reasoning} </think> <answer> {answer} </answer>"`,
    and `answer` as the ground truth."""
    response = f" {reasoning} </think> <answer> {answer} </answer>"
    return {"prompt": render_prompt(template, question), "response": response, "ground_truth": answer}


def unbox(text: str) -> str:
    """`text` with every `\\boxed{X}` (and `\\fbox{X}`) replaced by `X`, nested braces included.

    Why unwrap rather than keep the box: in the R1-Zero format the `<answer>` tag is the one place
    the final answer is marked, and the reward reads only that. A box left in the reasoning would
    teach a second answer marker that nothing grades, and the boxed-then-stop habit base math models
    already have, right where the model must instead close `</think>` and open `<answer>`. Unwrapped,
    the sentence reads as plain worked text ("so the graph has $2$ vertical asymptotes"). Every box
    goes, not only the last: MATH solutions also box the answers of alternative methods and some
    intermediate values, which are no more the final answer in the reasoning than the last one.

    `\\boxed {X}` (a space before the brace, as TeX allows) counts as `\\boxed{X}`; a box whose argument
    is not in braces (`\\boxed 5`) or is never closed raises ValueError.
    """
    while (start := max(text.rfind(command) for command in BOX_COMMANDS)) >= 0:
        command = next(c for c in BOX_COMMANDS if text.startswith(c, start))
        brace = start + len(command)
        while text[brace : brace + 1].isspace():
            brace += 1
        # The last box has no box after it, so the only box in `command + text[brace:]` is its start.
        content = extract_boxed_answer(command + text[brace:]) if text.startswith("{", brace) else None
        if content is None:
            raise ValueError(f"{command} at character {start} has no {{...}} argument or is never closed")
        text = text[:start] + content + text[brace + len(content) + 2 :]
    return text


def gsm8k_reasoning(solution: str) -> str:
    """The worked lines of a GSM8K `answer` (everything before its last, `#### <number>` line), with
    the `<<...>>` calculator annotations removed."""
    worked = solution.rstrip().rsplit("\n", 1)[0] if "\n" in solution.strip() else ""
    return _CALCULATOR_ANNOTATION.sub("", worked).strip()


def build_math_rows(
    records: Iterable[tuple[int, dict[str, Any]]],
    path: PathLike,
    template: str,
    id_prefix: str | None = None,
    exclude: frozenset[str] = frozenset(),
) -> tuple[list[dict[str, str]], Counter]:
    """SFT rows from MATH records `(line, record)` with `problem`, `solution` and `answer`.

    Reasoning = the solution with its boxes unwrapped (`unbox`); answer = the `answer` field. Skipped,
    and counted by reason in the returned Counter: a `unique_id` not starting with `id_prefix` (when
    given), a problem in `exclude` (compared without surrounding whitespace), a null or empty answer.
    """
    rows, skipped = [], Counter()
    for line, record in records:
        if id_prefix is not None and not str(record.get("unique_id", "")).startswith(id_prefix):
            skipped[f"unique_id not starting with {id_prefix!r}"] += 1
        elif _text_field(record, "problem", path, line).strip() in exclude:
            skipped["problem in an --exclude file"] += 1
        elif record.get("answer") is None:
            skipped["null answer"] += 1
        elif (example := _parse_math(record, path, line)) is None:
            skipped["empty answer"] += 1
        else:
            solution = _text_field(record, "solution", path, line)
            try:
                reasoning = unbox(solution).strip()
            except ValueError as error:
                raise DataFormatError(path, line, f"field 'solution': {error}") from None
            rows.append(sft_row(template, example.question, reasoning, example.ground_truth))
    return rows, skipped


def build_gsm8k_rows(
    records: Iterable[tuple[int, dict[str, Any]]], path: PathLike, template: str
) -> tuple[list[dict[str, str]], Counter]:
    """SFT rows from GSM8K records `(line, record)`: reasoning = the worked lines without calculator
    annotations (`gsm8k_reasoning`), answer = the number after `####` without thousands separators."""
    rows = []
    for line, record in records:
        example = _parse_gsm8k(record, path, line)
        reasoning = gsm8k_reasoning(_text_field(record, "answer", path, line))
        if not reasoning:
            raise DataFormatError(path, line, "field 'answer' has no worked lines before its '####' line")
        rows.append(sft_row(template, example.question, reasoning, example.ground_truth))
    return rows, Counter()


def _questions(path: PathLike) -> frozenset[str]:
    """The `problem` (or `question`) texts of a jsonl file, without surrounding whitespace."""
    texts = (record.get("problem", record.get("question")) for _, record in read_jsonl(path))
    return frozenset(text.strip() for text in texts if isinstance(text, str))


def write_rows(rows: list[dict[str, str]], path: PathLike) -> None:
    """One JSON object per line, `json.dumps` defaults (ASCII, `", "` and `": "` separators)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)


def build(argv: list | None = None) -> int:
    """Parse `argv`, build the file and return the number of rows written (the CLI's work)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["math", "gsm8k"])
    parser.add_argument("input", help="source jsonl (MATH: problem/solution/answer; GSM8K: question/answer)")
    parser.add_argument("output", help="the SFT jsonl to write")
    parser.add_argument("--template", default="r1_zero", help="built-in template name or .prompt file")
    parser.add_argument("--id-prefix", default=None,
                        help="math: keep only rows whose unique_id starts with this (e.g. train/)")
    parser.add_argument("--exclude", action="append", default=[], metavar="FILE",
                        help="math: drop problems whose text appears in FILE (repeatable)")
    args = parser.parse_args(None if argv is None else [str(arg) for arg in argv])
    if args.dataset == "gsm8k" and (args.id_prefix is not None or args.exclude):
        parser.error("--id-prefix and --exclude apply to math only")
    template = load_template(args.template)
    records = read_jsonl(args.input)
    if args.dataset == "math":
        exclude = frozenset().union(*map(_questions, args.exclude))
        rows, skipped = build_math_rows(records, args.input, template, args.id_prefix, exclude)
    else:
        rows, skipped = build_gsm8k_rows(records, args.input, template)
    if not rows:
        raise DataFormatError(args.input, None, "no row left to write")
    write_rows(rows, args.output)
    skipped_text = "".join(f", skipped {count} ({reason})" for reason, count in skipped.items())
    print(f"wrote {len(rows)} rows to {args.output}{skipped_text}", file=sys.stderr)
    return len(rows)


def main(argv: list | None = None) -> None:
    """Bad input (a missing file, a malformed line, a template without `{question}`) exits with
    status 2 and one line that names it first."""
    try:
        build(argv)
    except (FileNotFoundError, ValueError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
