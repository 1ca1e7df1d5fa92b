"""The embedded default task and model: everything the quickstart needs, built in code, no download.

- `task`: two-digit addition problems, worked traces in the R1-Zero format (from a teacher that
  forgets carries), and the jsonl files the data modules read (`write_task_files`);
- `tokenizer`: a ~160-token word-level tokenizer for that text (`build_tokenizer`);
- `model`: a two-layer Llama (`build_model`) and `materialize`, which writes it with its tokenizer
  as a normal Hugging Face folder (what `builtin:quickstart` resolves to).
"""

from r1_lightning.quickstart.model import MODEL_CONFIG, build_model, materialize
from r1_lightning.quickstart.task import PROMPT_TEMPLATE, make_problem, make_trace, write_task_files
from r1_lightning.quickstart.tokenizer import build_tokenizer

__all__ = [
    "MODEL_CONFIG",
    "PROMPT_TEMPLATE",
    "build_model",
    "build_tokenizer",
    "make_problem",
    "make_trace",
    "materialize",
    "write_task_files",
]
