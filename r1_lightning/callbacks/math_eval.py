"""`MathEvalCallback`: the periodic evaluation while training, graded and written as `validate`'s
(`r1_lightning.evaluation`)."""

from __future__ import annotations

from itertools import islice

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from r1_lightning.evaluation import summarize, val_metrics, write_eval_outputs


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
