"""Logging sample generations as a table."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

COLUMNS = ("step", "prompt", "response", "ground_truth", "reward", "format_reward", "answer_reward")


class GenerationLogger(L.Callback):
    """Every `every_n_steps` GRPO/EI steps, write up to `max_rows` of the last rollout (prompt,
    response, ground truth, rewards) to `generations.jsonl` in the log folder, and as a table to
    every logger that supports tables (W&B `log_table`, TensorBoard as text)."""

    def __init__(self, every_n_steps: int = 10, max_rows: int = 8, filename: str = "generations.jsonl"):
        self.every_n_steps = every_n_steps
        self.max_rows = max_rows
        self.filename = filename

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        records = getattr(pl_module, "last_rollout_records", None)
        if not records or batch_idx % self.every_n_steps:
            return
        step = trainer.global_step
        rows = [[step] + [r.get(c) for c in COLUMNS[1:]] for r in records[: self.max_rows]]
        path = Path(trainer.log_dir or ".") / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.writelines(json.dumps(dict(zip(COLUMNS, row))) + "\n" for row in rows)
        for logger in trainer.loggers:
            if hasattr(logger, "log_table"):  # WandbLogger
                logger.log_table(key="generations", columns=list(COLUMNS), data=rows, step=step)
            elif hasattr(getattr(logger, "experiment", None), "add_text"):  # TensorBoardLogger
                text = "\n\n".join(f"**reward {r[4]}** | {r[1][-200:]!r} → {r[2]!r} (truth {r[3]!r})" for r in rows)
                logger.experiment.add_text("generations", text, global_step=step)
