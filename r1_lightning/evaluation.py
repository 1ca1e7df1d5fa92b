"""Evaluation: grading sampled answers, summarizing and writing them, and running it while training.

One implementation for `r1-lightning validate` (zero-shot or any checkpoint: the validation loop
of `RolloutModule`) and for `MathEvalCallback`, the periodic evaluation during fitting. Both sample
with the module's engine and `eval_sampling` (greedy by default) on weights the engine is known to
hold (`RolloutModule.sync_engine`), grade each answer with the module's reward function
(`grade_completions`, which GRPO and expert iteration use for their rollouts too), log
`val/<summary key>` metrics and write `eval_<tag>.jsonl` and `eval_<tag>_summary.json`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from itertools import islice
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from r1_lightning.rollout import Completion
from r1_lightning.stopping import raise_if_stop_requested


def grade_completions(batch: dict, completions: Sequence[Completion], reward_fn: Callable) -> list[dict]:
    """One record per (example, sample): question, response, ground truth, rewards, length, and
    the example's level/subject when the batch has them. `completions` is prompt-major. A stop
    signal ends it between two answers (`StopRequested`)."""
    n = len(completions) // max(1, len(batch["prompt"]))
    records = []
    for j, completion in enumerate(completions):
        raise_if_stop_requested()
        i = completion.prompt_index
        rewards = reward_fn(completion.text, batch["ground_truth"][i])
        record = {
            "prompt": batch["prompt"][i],
            "response": completion.text,
            "ground_truth": batch["ground_truth"][i],
            "format_reward": float(rewards["format_reward"]),
            "answer_reward": float(rewards["answer_reward"]),
            "reward": float(rewards["reward"]),
            "response_tokens": len(completion.token_ids),
            "finish_reason": completion.finish_reason,
        }
        for key in ("level", "subject", "unique_id"):
            if key in batch and batch[key][i] is not None:
                record[key] = batch[key][i]
        if n > 1:
            record["sample"] = j % n
        records.append(record)
    return records


def summarize(records: Sequence[dict]) -> dict:
    """Format rate, answer accuracy, mean response length, and accuracy by level and subject."""
    if not records:
        return {"n": 0}
    n = len(records)
    summary: dict = {
        "n": n,
        "answer_accuracy": sum(r["answer_reward"] for r in records) / n,
        "format_rate": sum(r["format_reward"] for r in records) / n,
        "reward_mean": sum(r["reward"] for r in records) / n,
        "response_tokens_mean": sum(r["response_tokens"] for r in records) / n,
        "truncated_rate": sum(r["finish_reason"] == "length" for r in records) / n,
    }
    for key in ("level", "subject"):
        groups: dict[str, list[float]] = defaultdict(list)
        for r in records:
            if key in r:
                groups[str(r[key])].append(r["answer_reward"])
        if groups:
            summary[f"accuracy_by_{key}"] = {k: sum(v) / len(v) for k, v in sorted(groups.items())}
    return summary


def val_metrics(summary: dict) -> dict[str, float]:
    """The summary's scalar entries as `val/<name>` metrics for loggers (nested breakdowns stay in
    the written summary file)."""
    return {f"val/{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))}


def write_eval_outputs(records: Sequence[dict], folder: str | Path, tag: str) -> dict:
    """Summarize `records` and write `eval_{tag}.jsonl` (one line per example) and
    `eval_{tag}_summary.json` into `folder`. Returns the summary."""
    summary = summarize(records)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"eval_{tag}.jsonl", "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)
    (folder / f"eval_{tag}_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


class MathEvalCallback(L.Callback):
    """Every `every_n_steps` optimizer updates (and before the first and after the last), run the
    engine over the validation prompts, grade the answers, and log `val/answer_accuracy`,
    `val/format_rate`, `val/response_tokens_mean` (plus per-level/subject accuracies in the
    written summary). Writes `eval/eval_step_{k}.jsonl` and a summary next to the logs.

    Uses the module's engine and evaluation sampling (greedy by default) and the data module's
    validation loader; `max_batches` bounds the cost of each evaluation.
    """

    def __init__(self, every_n_steps: int = 50, max_batches: int | None = None, eval_at_start: bool = True,
                 eval_at_end: bool = True):
        if every_n_steps < 1:
            raise ValueError(f"MathEvalCallback.every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.max_batches = max_batches
        self.eval_at_start = eval_at_start
        self.eval_at_end = eval_at_end
        self._last_step: int | None = None

    def evaluate(self, trainer, pl_module) -> dict:
        pl_module.sync_engine()  # evaluate the weights being trained, never stale ones
        # On several ranks, rank r grades batches r, r + world size, ...; the ranks pool the records
        # in batch order and rank 0 writes them: the records and summary of one process.
        shares = [(index, pl_module.evaluate_examples(batch))
                  for index, batch in enumerate(islice(trainer.datamodule.val_dataloader(), self.max_batches))
                  if index % trainer.world_size == trainer.global_rank]
        records = [r for _, batch_records in sorted(pl_module.pool_across_ranks(shares), key=lambda s: s[0])
                   for r in batch_records]
        step = trainer.global_step
        folder = f"{trainer.log_dir or '.'}/eval"  # on every rank: `log_dir` is a collective (a broadcast)
        summary = write_eval_outputs(records, folder, tag=f"step_{step}") if trainer.is_global_zero else summarize(records)
        for logger in trainer.loggers:
            logger.log_metrics(val_metrics(summary), step=step)
        self._last_step = step
        rank_zero_info(
            f"[eval] step {step}: answer_accuracy={summary.get('answer_accuracy', 0):.3f} "
            f"format_rate={summary.get('format_rate', 0):.3f} on {summary['n']} examples"
        )
        return summary

    def on_train_start(self, trainer, pl_module) -> None:
        # A resumed run already evaluated this step before it stopped.
        if self.eval_at_start and trainer.global_step == 0:
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.eval_at_end and trainer.global_step != self._last_step:
            self.evaluate(trainer, pl_module)
