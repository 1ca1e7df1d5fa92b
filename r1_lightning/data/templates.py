"""Prompt templates: the text wrapped around a question before the model sees it.

A template is plain text with a `{question}` placeholder. Two ship with the package as
`r1_lightning/data/prompts/<name>.prompt`:

- `r1_zero`: the DeepSeek-R1-Zero instruction in the wording of the Stanford CS336 alignment
  assignment, ending in `Assistant: <think>` so that the model's first token is already reasoning.
- `question_only`: just the question (for base models prompted to end with `\\boxed{}`).

Any other `.prompt` file can be passed by path. Rendering uses `str.replace`, never `str.format`:
MATH problems are full of LaTeX braces (`\\frac{1}{2}`) that `format` would try to interpret.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

QUESTION_PLACEHOLDER = "{question}"
BUILTIN_TEMPLATES = ("r1_zero", "question_only")


def load_template(name_or_path: str | os.PathLike[str]) -> str:
    """Return the text of a built-in template (`r1_zero`, `question_only`) or of a template file.

    One trailing newline is removed from the file's text (editors add one); the rendered prompt must
    end exactly where the model is to continue (`Assistant: <think>` for `r1_zero`).
    """
    name = str(name_or_path)
    if name in BUILTIN_TEMPLATES:
        source = f"built-in template {name!r}"
        text = resources.files("r1_lightning.data").joinpath("prompts", f"{name}.prompt").read_text("utf-8")
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"prompt template {name!r} is neither a built-in template {list(BUILTIN_TEMPLATES)} "
                f"nor an existing file"
            )
        source = f"template file {str(path)!r}"
        text = path.read_text("utf-8")
    text = text.removesuffix("\n").removesuffix("\r")
    if QUESTION_PLACEHOLDER not in text:
        raise ValueError(f"{source} has no {QUESTION_PLACEHOLDER} placeholder")
    return text


def render_prompt(template: str, question: str) -> str:
    """Put `question` in place of `{question}` in `template`; braces in the question are kept as is."""
    if QUESTION_PLACEHOLDER not in template:
        raise ValueError(f"prompt template has no {QUESTION_PLACEHOLDER} placeholder: {template[:80]!r}")
    return template.replace(QUESTION_PLACEHOLDER, question)
