"""A training progress bar in optimizer steps, for runs bounded by `trainer.max_steps`.

Lightning's bars count batches within an epoch: with `max_epochs: -1` and `max_steps` (every GRPO
config) the rich bar reads `Epoch 0/-2`, and after `--ckpt_path last` the batch count runs past a
total cut to the remaining steps (`80/53`). This bar shows `global_step / max_steps` from the first
step of a resumed run to the end, across epochs; without `max_steps` it counts steps with no total.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """`r1-lightning fit` uses it unless the config names a progress bar or disables it."""

    def _show_steps(self, trainer) -> None:
        bar = self.train_progress_bar
        if bar is None or bar.disable:
            return
        bar.total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        bar.n = trainer.global_step
        epochs = f" (epoch {trainer.current_epoch + 1} of {trainer.max_epochs})" if (trainer.max_epochs or 0) > 0 else ""
        bar.set_description(f"Step{epochs}")
        bar.refresh()

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._show_steps(trainer)

    def on_train_epoch_start(self, trainer, *_) -> None:
        self._show_steps(trainer)  # one bar for the whole run: no reset to the epoch's batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.is_enabled and self.train_progress_bar is not None:
            self._show_steps(trainer)
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))
