"""Lightning checkpoints with a Hugging Face export beside each kept one, which a failure never
replaces with something worse."""

from __future__ import annotations

import copy
import os
import pickle
import shutil
import warnings
from pathlib import Path
from weakref import proxy

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from r1_lightning.distributed import full_state_dict, is_sharded, local_tensor
from r1_lightning.stopping import StopRequested, stop_on_slurm_requeue


class NonFiniteWeightsError(RuntimeError):
    """The policy holds a NaN or an infinity, so its state must not be written."""


DISTRIBUTED_CHECKPOINT_METADATA = "meta.pt"  # Lightning's name for the non-tensor state of a checkpoint folder


def is_checkpoint(path: str) -> bool:
    """A Lightning checkpoint: a file, or a distributed checkpoint's folder."""
    return os.path.isfile(path) or os.path.isfile(os.path.join(path, DISTRIBUTED_CHECKPOINT_METADATA))


def hf_folder_for(checkpoint_path: str) -> Path:
    """`.../step=100.ckpt` -> `.../step=100_hf/`."""
    path = Path(checkpoint_path)
    return path.with_name(path.stem + "_hf")


def non_finite_parameters(module: torch.nn.Module) -> list[str]:
    """Names of the floating-point parameters that hold a NaN or an infinity (in this rank's shard,
    for a sharded parameter: the ranks then agree with `reduce_boolean_decision`)."""
    return [name for name, p in module.named_parameters()
            if p.is_floating_point() and not torch.isfinite(local_tensor(p)).all()]


def saved_global_step(filepath: str) -> int:
    """The global step stored in the Lightning checkpoint `filepath`. The file is memory-mapped,
    so only the small entries are actually read. A distributed checkpoint (a folder, written under
    ModelParallelStrategy) keeps it in its metadata file."""
    if os.path.isdir(filepath):
        filepath = os.path.join(filepath, DISTRIBUTED_CHECKPOINT_METADATA)
    return int(torch.load(filepath, map_location="cpu", mmap=True, weights_only=True)["global_step"])


class HFExportCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` (module, optimizer, scheduler, loop and data-loader position) that also
    writes `save_pretrained` + tokenizer into `<checkpoint>_hf/` for every checkpoint it keeps,
    and deletes that folder when it deletes the checkpoint. Set `export_hf=False` to skip.

    Nothing bad is ever written: each file goes under a temporary name and is renamed into place
    (a crash mid-write leaves the previous one intact), and a policy with a NaN or infinite weight
    is refused with `NonFiniteWeightsError` instead of being saved or exported.

    On an exception or Ctrl-C during `fit`, `last.ckpt` and `last_hf/` are written only with a
    state that is complete and newer than the `last.ckpt` already on disk (its global step is read
    from the file); otherwise the file on disk stays, and the warning says why. A config or data
    error before training, or a resume that fails, thus never touches it. (Unlike Lightning's
    `OnExceptionCheckpoint`, resuming stays an explicit `--ckpt_path last`.)

    Exact resume after Ctrl-C: Lightning counts each batch as ready, started, processed and
    completed, and the data loader's position counts the batches it handed out, so the trainer
    interrupted inside `training_step` counts the batch in flight as taken: saved as it is, the
    resumed run would skip that batch and log every later step one off. Instead, at the end of
    every training batch this callback records the fit loop's state (a few counters and the loader
    position, what a periodic checkpoint stores). As long as no optimizer step was taken since
    (same global step), the weights, optimizer and scheduler are still those of that moment, so a
    failure saves them together with the recorded loop state: exactly the checkpoint a periodic
    save at the end of the last finished batch would have written, which Lightning resumes
    exactly (the interrupted batch is trained again from its start, with the same sampling seed).
    A failure after an update inside a batch (a step with several updates) cannot be rolled back;
    nothing is saved then. Nor is anything saved when another callback reports that the state in
    memory would not resume exactly (`incomplete_state`: async rollouts lost the batch sampled ahead).

    A stop signal (SIGTERM, SIGINT, SLURM's requeue signal: `r1_lightning.stopping`) is such a
    failure: the generation and grading loops abandon the step in flight (`StopRequested`, before
    its update), and the warning always ends with how to resume when a `last.ckpt` exists.
    """

    def __init__(self, *args, export_hf: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.export_hf = export_hf
        self._training_started = False
        # (global step, epoch, fit-loop state) at the end of the last training batch
        self._batch_end_state: tuple[int, int, dict] | None = None
        self._saving_batch_end_state = False
        # why the state in memory cannot be resumed exactly, set by another callback's on_exception
        # (which Lightning runs before the checkpoint callbacks), e.g. `SettleRolloutsOnFailure`
        self.incomplete_state: str | None = None

    # ----------------------------------------------------------------------------- saving
    def _atomic_save(self, trainer, filepath: str) -> None:
        partial = f"{filepath}.partial"
        trainer.save_checkpoint(partial, self.save_weights_only)  # ends with a barrier: every rank wrote
        if trainer.is_global_zero:
            if os.path.isdir(partial) and os.path.isdir(filepath):  # folders (distributed checkpoints)
                stale = f"{filepath}.stale"  # a folder cannot be replaced in one rename: move the old one away
                shutil.rmtree(stale, ignore_errors=True)
                os.replace(filepath, stale)
                os.replace(partial, filepath)
                shutil.rmtree(stale)
            else:
                os.replace(partial, filepath)

    def _export(self, trainer, filepath: str) -> None:
        # every rank gathers a sharded policy's full weights; rank 0 writes them
        policy = trainer.lightning_module.policy
        state_dict = full_state_dict(policy) if is_sharded(policy) else None
        if not trainer.is_global_zero:
            return
        folder = hf_folder_for(filepath)
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        trainer.lightning_module.export_hf(str(partial), state_dict)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)

    def _check_finite(self, trainer, filepath: str) -> None:
        bad = non_finite_parameters(trainer.lightning_module)
        if not trainer.strategy.reduce_boolean_decision(not bad, all=True):
            raise NonFiniteWeightsError(
                f"refusing to write {filepath}: the policy has non-finite weights (step {trainer.global_step}, "
                f"{len(bad)} tensors, e.g. {', '.join(bad[:3]) or 'on another rank'}); earlier checkpoints are kept"
            )

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        self._check_finite(trainer, filepath)
        self._atomic_save(trainer, filepath)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
        if self.export_hf:
            self._export(trainer, filepath)

    def _remove_checkpoint(self, trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        folder = hf_folder_for(filepath)
        if trainer.is_global_zero and folder.is_dir():
            shutil.rmtree(folder)

    # ----------------------------------------------------------------------------- failures
    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._training_started = True
        self.incomplete_state = None
        stop_on_slurm_requeue(trainer)  # after Lightning installed its requeue handler

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        state = copy.deepcopy(trainer.fit_loop.state_dict())
        self._batch_end_state = (trainer.global_step, trainer.current_epoch, state)
        with warnings.catch_warnings():
            # Lightning warns that under manual optimization a batch-end checkpoint holds the weights
            # after the update. That is the state we want: it matches the loop counters saved with it.
            warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._saving_batch_end_state:
            step, epoch, fit_loop = self._batch_end_state
            checkpoint.update(global_step=step, epoch=epoch)
            checkpoint["loops"]["fit_loop"] = copy.deepcopy(fit_loop)

    def _complete_state(self, trainer) -> str | None:
        """Which complete state a failure can save: "batch end" (the weights are still those of the
        end of the last batch), "current" (stopped in a hook after `training_step`, the state
        Lightning's periodic checkpoints have), or None (after an update inside a batch)."""
        if self._batch_end_state is not None and self._batch_end_state[0] == trainer.global_step:
            return "batch end"
        progress = trainer.fit_loop.epoch_loop.batch_progress.total
        if progress.ready == progress.started == progress.processed == progress.completed + 1:
            return "current"
        return None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not self.save_last or self.dirpath is None or not self._training_started:
            return  # nothing was trained: leave the folder alone
        # this run's last checkpoint (Lightning may have versioned its name, e.g. last-v1.ckpt)
        filepath = self.last_model_path or self.format_checkpoint_name(
            self._monitor_candidates(trainer), self.CHECKPOINT_NAME_LAST
        )
        what = f"{_describe(exception)} at step {trainer.global_step}"
        outcome = self._why_not_saved(trainer, filepath)
        if outcome is None:
            outcome = self._save_last(trainer, filepath)
        if outcome is not None:
            resume = "; resume with --ckpt_path last" if os.path.exists(filepath) else ""
            rank_zero_warn(f"{what}: {outcome}{resume}")

    def _why_not_saved(self, trainer, filepath: str) -> str | None:
        """Why a failure must leave `filepath` as it is, or None: the state in memory is complete
        and newer than the one on disk."""
        if self._complete_state(trainer) is None:
            return f"{filepath} not written: it stopped in the middle of a step, after an update"
        if self.incomplete_state is not None:
            return f"{filepath} not written: {self.incomplete_state}"
        if os.path.exists(filepath):
            try:
                on_disk = saved_global_step(filepath)
            except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as error:
                # unreadable here is not proof that it is bad: keep it
                return f"{filepath} not replaced: could not read its step ({error})"
            if on_disk >= trainer.global_step:
                return f"{filepath} (step {on_disk}) is already as new; not written"
        elif trainer.global_step == 0:
            return "no step completed: nothing to resume"
        return None

    def _save_last(self, trainer, filepath: str) -> str | None:
        """Write the complete state to `filepath` (`_complete_state`); returns what to warn about."""
        # set before saving, as Lightning does: the path is part of the saved state, and a resumed
        # run then keeps writing last.ckpt instead of a new last-v1.ckpt
        previous, self.last_model_path = self.last_model_path, filepath
        self._saving_batch_end_state = self._complete_state(trainer) == "batch end"
        try:
            self._save_checkpoint(trainer, filepath)
        except NonFiniteWeightsError as error:
            self.last_model_path = previous
            return str(error)
        finally:
            self._saving_batch_end_state = False
        exported = f" and {hf_folder_for(filepath).name}/" if self.export_hf else ""
        return f"saved {filepath}{exported} (step {trainer.global_step})"


def _describe(exception: BaseException) -> str:
    """How the failure warning names `exception`: "stopped by SIGTERM" for Lightning's stop between
    steps and ours inside one ("stopped by SIGINT", ...), else the exception's class name."""
    if isinstance(exception, StopRequested):
        return str(exception)
    if isinstance(exception, SIGTERMException):
        return "stopped by SIGTERM"
    return type(exception).__name__
