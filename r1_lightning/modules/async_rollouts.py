"""One-step-off asynchronous rollouts for GRPO (`GRPOModule(async_rollouts=True)`).

While the policy trains on the batch of step t, the engine samples the batch of step t+1 on a
background thread, with the weights the policy had before update t; the engine receives the new
weights once both are done (`RolloutModule.sync_engine` waits for the generation in flight). Each
batch is then one step behind the policy that trains on it (`train/policy_lag`, in optimizer
updates: 1 with one update per step, 0 for the first batch), which the truncated importance weights
against the engine's log-probs correct for.

The batch sampled ahead is the one the loop hands over next (`ResumableDataLoader.peek`) and is
sampled with the seed of the step that trains on it, so the data order and the seeds are those of
a synchronous run; with `rollout_lag=0` (sampling starts after the update instead of before it)
the run is exactly the synchronous run with the same TIS cap, which checks the machinery (without
that cap a synchronous run differs wherever the engine's log-probs differ from the policy's).
`async_warmup_steps=K` samples the batches of the first K steps that way too, and one step off
from then on: while the policy changes fastest, early in a run, each step then learns from its own
batch. A batch sampled ahead that is not the one the loop then hands over (`limit_train_batches`
ends epochs early) is dropped and sampled again.

Exact resume: a checkpoint holds the sampled batch the step after it trains on (its completions
with token ids and engine log-probs, rewards and metrics, and the weight version that sampled it),
waiting for its generation when it is still in flight, so a resumed run trains on exactly what the
uninterrupted run did. A checkpoint written on a failure inside step t (the state before the step,
`HFExportCheckpoint`) holds step t's own batch, which `RolloutsAhead.current` keeps until the step
ends. Without a saved batch (a checkpoint of a synchronous run, another world size), the first step
samples its batch with the restored weights.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
import torch

from r1_lightning.callbacks.checkpoint import HFExportCheckpoint
from r1_lightning.rollout import Completion

# How long a failure waits for the generation in flight before leaving it to its daemon thread: long
# enough for one batch, short enough that Ctrl-C (which Lightning ignores once it handles one) ends.
SETTLE_SECONDS = 60.0


@dataclass
class SampledBatch:
    """A data batch sampled, graded and rewarded: what a GRPO step trains on.

    batch: the data batch (questions). global_step: the step that trains on it (its sampling seed's).
    engine_version: the `policy_version` of the weights that sampled it.
    completions, records, rewards (N,), metrics: as `GRPOModule._sample_groups` returns them.
    """

    batch: dict
    global_step: int
    engine_version: int
    completions: list[Completion]
    records: list[dict]
    rewards: torch.Tensor
    metrics: dict[str, float]

    def state_dict(self) -> dict:
        """Plain types and tensors only: checkpoints are read with `weights_only=True`."""
        state = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        state["completions"] = [dataclasses.asdict(c) for c in self.completions]
        return state

    @classmethod
    def from_state_dict(cls, state: dict) -> SampledBatch:
        return cls(**{**state, "completions": [Completion(**c) for c in state["completions"]]})


def _finished(value: SampledBatch) -> concurrent.futures.Future:
    future = concurrent.futures.Future()
    future.set_result(value)
    return future


def _run_in_background(sample: Callable[[], SampledBatch]) -> concurrent.futures.Future:
    """`sample()` on a daemon thread: the process never waits for it at exit."""
    future = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(sample())
        except BaseException as error:  # noqa: BLE001 - raised again where the result is taken (also
            future.set_exception(error)  # StopRequested, a SystemExit: a waiter must never wait forever)

    threading.Thread(target=run, name="r1-lightning-rollout", daemon=True).start()
    return future


class RolloutsAhead:
    """The batches of an asynchronous GRPO run: `current`, the one the running step trains on, and
    at most one sampled ahead for a later step (in flight on a background thread, or restored from
    a checkpoint).

    lag: 1 samples the next batch before the step's update (one-step-off), 0 after it (no overlap
    with the update; the synchronous run with the same TIS cap, exactly). warmup_steps: the GRPO steps at the start whose
    batches are sampled with lag 0 whatever `lag` is.
    """

    def __init__(self, lag: int, warmup_steps: int = 0) -> None:
        self.lag = lag
        self.warmup_steps = warmup_steps
        self.current: SampledBatch | None = None
        self._ahead: concurrent.futures.Future | None = None
        self._waited_seconds = 0.0

    # ----------------------------------------------------------------------------- the step
    def batch_for_step(self, module, batch: dict) -> SampledBatch:
        """The sampled `batch` for the module's current step: the one sampled ahead for it, else
        sampled now (the first step, or a batch ahead that is not this one). With lag 1, then
        starts sampling the next step's batch."""
        step = module.global_step
        sampled = self._take(step, batch) or module.sampler(batch, step)()
        self.current = sampled
        if self._next_lag(module) == 1:
            self._sample_next(module)
        return sampled

    def step_ended(self, module) -> None:
        """After the step's update: with lag 0, sync the engine and start sampling the next batch."""
        if self._next_lag(module) == 0:
            module.sync_engine()
            self._sample_next(module)

    def _next_lag(self, module) -> int:
        """The lag of the batch after the running step's: 0 while that step is a warm-up step."""
        next_step = self.current.global_step + module.updates_per_rollout
        return 0 if next_step < self.warmup_steps * module.updates_per_rollout else self.lag

    def pop_waited_seconds(self) -> float:
        """Seconds spent waiting for the engine since the last call (0 when sampling kept up)."""
        seconds, self._waited_seconds = self._waited_seconds, 0.0
        return seconds

    def _sample_next(self, module) -> None:
        step = self.current.global_step + module.updates_per_rollout  # the step after the running one
        max_steps = module.trainer.max_steps
        if max_steps is not None and 0 <= max_steps <= step:
            return  # no step will train on it
        loader = module.trainer.train_dataloader
        peek = getattr(loader, "peek", None)
        if peek is None:
            raise TypeError(f"GRPOModule async_rollouts: the train loader ({type(loader).__name__}) cannot show its "
                            "next batch: it needs `peek()`, as ResumableDataLoader (PromptDataModule's) has")
        self._ahead = _run_in_background(module.sampler(peek(), step))

    def _take(self, step: int, batch: dict) -> SampledBatch | None:
        self.wait()
        # a failed sampling raises here, and stays in `_ahead` for `settle` to see the batch lost
        sampled = self._ahead.result() if self._ahead is not None else None
        self._ahead = None
        if sampled is None or sampled.global_step != step or sampled.batch != batch:
            return None
        return sampled

    # ----------------------------------------------------------------------------- the engine
    def wait(self) -> None:
        """Until the generation in flight, if any, has finished (its result is kept): whatever else
        uses the engine or changes its weights calls this first."""
        if self._ahead is not None and not self._ahead.done():
            start = time.perf_counter()
            concurrent.futures.wait([self._ahead])
            self._waited_seconds += time.perf_counter() - start

    def settle(self, timeout_s: float = SETTLE_SECONDS) -> str | None:
        """On a failure: give the generation in flight `timeout_s` to finish (the failure's
        checkpoint may save it), then forget it; its daemon thread ends with the process. Returns
        why the batch sampled ahead is lost (it failed, a stop signal abandoned it, or it did not
        finish in time), after which the state in memory would not resume exactly; else None."""
        if self._ahead is None:
            return None
        concurrent.futures.wait([self._ahead], timeout=timeout_s)
        if not self._ahead.done():
            self._ahead = None
            return f"the batch being sampled did not finish within {timeout_s:.0f} s"
        error = self._ahead.exception()
        if error is not None:
            self._ahead = None
            return f"the batch being sampled was abandoned ({type(error).__name__}: {error})"
        return None

    def clear(self) -> None:
        """At the end of fitting: wait for the engine, drop the batches (none is trained any more)."""
        self.wait()
        self._ahead, self.current = None, None

    # ----------------------------------------------------------------------------- checkpoints
    def state_for(self, global_step: int) -> dict | None:
        """The state of the sampled batch that the step at `global_step` trains on, for a
        checkpoint of that step (waiting for its generation), or None when there is none."""
        if self.current is not None and self.current.global_step == global_step:
            return self.current.state_dict()
        self.wait()
        if self._ahead is None or not self._ahead.done():
            return None
        sampled = self._ahead.result()  # a failed (or stopped) sampling fails the save: it would not resume exactly
        return sampled.state_dict() if sampled.global_step == global_step else None

    def load(self, state: dict | None) -> None:
        """Restore a batch that `state_for` saved: the next step trains on it instead of sampling."""
        self.current = None
        self._ahead = _finished(SampledBatch.from_state_dict(state)) if state is not None else None


class SettleRolloutsOnFailure(L.Callback):
    """Lets the batch being sampled finish, or forgets it, when fitting fails (`RolloutsAhead.settle`),
    before the checkpoint callbacks (which Lightning runs last) save the state. A lost batch makes
    the state in memory one that a resumed run would not continue exactly (it would sample that
    batch again, with newer weights): the checkpoint callbacks then keep the `last.ckpt` on disk."""

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if pl_module.rollouts_ahead is None:
            return
        lost = pl_module.rollouts_ahead.settle()
        if lost is not None:
            for callback in trainer.checkpoint_callbacks:
                if isinstance(callback, HFExportCheckpoint):
                    callback.incomplete_state = lost
