"""Keeping the rollout engine on the policy's current weights.

The invariant: the engine holds the policy's current weights before every rollout and every
evaluation, and after a checkpoint restore. An engine that generates with the policy itself
(`HFEngine`) holds them by construction; one with its own copy (`VLLMEngine`) is sent them in place
by `RolloutModule.sync_engine` whenever `policy_version` moved past the version it holds.

`RolloutWeightSync` decides when. It is not a config option: `RolloutModule.configure_callbacks`
returns it, so every run of a module that samples has it (Lightning replaces one a config lists).
"""

from __future__ import annotations

import lightning as L


class RolloutWeightSync(L.Callback):
    """Syncs the engine at the start of fitting, validation and prediction, and before each training batch
    (each GRPO or expert-iteration step samples first); logs `perf/weight_sync_seconds`."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        # Each run may restore a checkpoint into the policy (`--ckpt_path`), whose version number
        # says nothing about what the engine holds: the first rollout of the run syncs again.
        pl_module.engine_version = None

    def on_train_start(self, trainer, pl_module) -> None:
        pl_module.sync_engine()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        seconds = pl_module.sync_engine()
        if seconds is not None:
            pl_module.log("perf/weight_sync_seconds", seconds, on_step=True, on_epoch=False)

    def on_validation_start(self, trainer, pl_module) -> None:
        pl_module.sync_engine()

    def on_predict_start(self, trainer, pl_module) -> None:
        pl_module.sync_engine()
