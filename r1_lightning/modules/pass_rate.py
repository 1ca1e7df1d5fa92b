"""Difficulty estimation: each training problem's pass rate under the current model.

`r1-lightning predict --config configs/difficulty.yaml` samples `samples_per_problem` answers to
every problem of `data.train_path` (in file order, through Lightning's predict loop: sharded over
the ranks, batched through the engine), grades them, and appends one row per problem to
`output_path`: the problem in the MATH reader's fields plus `pass_rate`, `samples` and `correct`.
That file is a training set itself: `PromptDataModule`'s `min_pass_rate` / `max_pass_rate` keep a
band of it (e.g. drop the never- and always-solved problems, which give GRPO no signal) and
`curriculum: true` visits the easiest first.

Resumable: a stopped run is started again with the same command. Rows are written a batch at a
time, and a batch whose problems all have rows is skipped; a batch is always sampled whole with
a seed of its own (`seed + batch index`, plus the rank stride), so a resumed run writes exactly
the rows the uninterrupted one would have.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from r1_lightning.data.readers import read_jsonl
from r1_lightning.evaluation import grade_completions
from r1_lightning.modules.rollout import RolloutModule

DEFAULT_OUTPUT = "pass_rates.jsonl"  # under the run's default_root_dir


class PassRateModule(RolloutModule):
    """Sample `samples_per_problem` answers per problem (the training sampling settings) and record
    each problem's pass rate (the share graded correct).

    Args:
        samples_per_problem: n; the estimate's resolution is 1/n.
        output_path: the annotated jsonl (default: `pass_rates.jsonl` in the trainer's default_root_dir).
        (the rest: `RolloutModule`'s; the sampling is `sampling_temperature` etc.)
    """

    def __init__(self, model_name_or_path: str, samples_per_problem: int = 8, output_path: str | None = None,
                 **kwargs) -> None:
        super().__init__(model_name_or_path, **kwargs)
        if samples_per_problem < 1:
            raise ValueError(f"PassRateModule: samples_per_problem must be >= 1, got {samples_per_problem}")
        self.samples_per_problem = samples_per_problem
        self.output_path = output_path
        self._done: set[str] = set()

    def output_file(self) -> Path:
        if self.output_path is not None:
            return Path(self.output_path)
        return Path(self.trainer.default_root_dir) / DEFAULT_OUTPUT

    def on_predict_start(self) -> None:
        if self.trainer.is_global_zero:
            drop_cut_off_line(self.output_file())
        self.trainer.strategy.barrier()
        self._done = {row["problem"] for row in read_rows(self.output_file())}
        if self._done:
            rank_zero_info(f"PassRateModule: {len(self._done)} problems of {self.output_file()} already have "
                           f"a pass rate; continuing with the rest")

    def predict_step(self, batch: dict, batch_idx: int) -> None:
        if all(question in self._done for question in batch["question"]):
            rows = []
        else:
            sampling = self.step_sampling(batch_idx, n=self.samples_per_problem)
            completions, _ = self.rollout(batch["prompt"], sampling)
            rows = pass_rate_rows(batch, grade_completions(batch, completions, self.reward_fn), self.samples_per_problem)
        rows = [row for row in self.pool_across_ranks(rows) if row["problem"] not in self._done]
        if self.trainer.is_global_zero and rows:
            append_rows(self.output_file(), rows)
        self._done.update(row["problem"] for row in rows)

    def on_predict_end(self) -> None:
        rates = [row["pass_rate"] for row in read_rows(self.output_file())]
        rank_zero_info(
            f"PassRateModule: {len(rates)} problems in {self.output_file()}: {sum(r == 0 for r in rates)} never "
            f"solved, {sum(r == 1 for r in rates)} always solved, {sum(0 < r < 1 for r in rates)} in between "
            f"(of {self.samples_per_problem} samples each)"
        )


def pass_rate_rows(batch: dict, records: list[dict], n: int) -> list[dict]:
    """One row per problem of `batch` from its `n` graded records (prompt-major): the problem in the
    MATH reader's fields, its pass rate, and the counts behind it."""
    rows = []
    for i, question in enumerate(batch["question"]):
        correct = sum(record["answer_reward"] >= 1.0 for record in records[i * n:(i + 1) * n])
        row = {"problem": question, "answer": batch["ground_truth"][i]}
        for key in ("level", "subject", "unique_id"):
            if batch.get(key) and batch[key][i] is not None:
                row[key] = batch[key][i]
        rows.append({**row, "pass_rate": correct / n, "samples": n, "correct": correct})
    return rows


def read_rows(path: Path) -> list[dict]:
    """The rows of an annotated file (none when it does not exist yet or is empty); a line that is
    not a JSON object is named by file and line (`read_jsonl`)."""
    if not path.is_file() or path.stat().st_size == 0:
        return []
    return [row for _, row in read_jsonl(path)]


def drop_cut_off_line(path: Path) -> None:
    """Cut a last line that a crash left unfinished (no newline): its batch runs again."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append `rows` as jsonl and make them durable before the next batch starts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())
