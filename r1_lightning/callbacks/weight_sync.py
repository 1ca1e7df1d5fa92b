"""Pushing the policy's weights into the rollout engine."""

from __future__ import annotations

import time

import lightning as L


class RolloutWeightSync(L.Callback):
    """Before each rollout, push the policy's weights into the engine if they changed since the
    engine last received them (in place, no disk round trip). A no-op for engines that generate
    with the policy module itself (`HFEngine`).

    It also syncs at the start of fitting, so a run resumed from a checkpoint re-syncs an engine
    that was built from the original weights.
    """

    def __init__(self) -> None:
        self.synced_version: int | None = None
        self.last_sync_seconds: float | None = None

    def sync(self, pl_module) -> bool:
        """Sync if needed; return whether weights were pushed."""
        engine = pl_module.engine
        if engine.shares_policy_weights or self.synced_version == pl_module.policy_version:
            return False
        start = time.perf_counter()
        engine.load_weights(pl_module.policy.named_parameters())
        self.last_sync_seconds = time.perf_counter() - start
        self.synced_version = pl_module.policy_version
        return True

    def on_train_start(self, trainer, pl_module) -> None:
        self.synced_version = None  # whatever the engine holds, it is not the restored policy yet
        self.sync(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.sync(pl_module):
            pl_module.log("perf/weight_sync_seconds", self.last_sync_seconds, on_step=True, on_epoch=False)

    def on_validation_start(self, trainer, pl_module) -> None:
        self.sync(pl_module)


def sync_engine(trainer, pl_module) -> None:
    """Sync through the trainer's `RolloutWeightSync`, if it has one (used before evaluation)."""
    for callback in trainer.callbacks:
        if isinstance(callback, RolloutWeightSync):
            callback.sync(pl_module)
