"""Lightning checkpoints with a Hugging Face export beside each kept one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from weakref import proxy

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn


def hf_folder_for(checkpoint_path: str) -> Path:
    """`.../step=100.ckpt` -> `.../step=100_hf/`."""
    path = Path(checkpoint_path)
    return path.with_name(path.stem + "_hf")


class HFExportCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` (module, optimizer, scheduler, loop and data-loader position) that also
    writes `save_pretrained` + tokenizer into `<checkpoint>_hf/` for every checkpoint it keeps,
    and deletes that folder when it deletes the checkpoint. Set `export_hf=False` to skip.

    A crash never loses a checkpoint: each file is written under a temporary name and renamed
    into place (a crash mid-write leaves the previous `last.ckpt` intact), and on an exception or
    Ctrl-C the current state is saved as `last.ckpt`, so `--ckpt_path last` resumes from it.
    (Unlike Lightning's `OnExceptionCheckpoint`, this does not make every later `fit` in the
    same folder resume implicitly: resuming stays an explicit `--ckpt_path last`.)
    """

    def __init__(self, *args, export_hf: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.export_hf = export_hf

    def _atomic_save(self, trainer, filepath: str) -> None:
        partial = f"{filepath}.partial"
        trainer.save_checkpoint(partial, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(partial, filepath)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        self._atomic_save(trainer, filepath)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
            if self.export_hf:
                trainer.lightning_module.export_hf(str(hf_folder_for(filepath)))

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not self.save_last or self.dirpath is None:
            return
        filepath = self.format_checkpoint_name(self._monitor_candidates(trainer), self.CHECKPOINT_NAME_LAST)
        self._atomic_save(trainer, filepath)
        self.last_model_path = filepath
        rank_zero_warn(
            f"{type(exception).__name__} at step {trainer.global_step}: saved {filepath}; "
            f"resume with --ckpt_path last"
        )

    def _remove_checkpoint(self, trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        folder = hf_folder_for(filepath)
        if trainer.is_global_zero and folder.is_dir():
            shutil.rmtree(folder)
