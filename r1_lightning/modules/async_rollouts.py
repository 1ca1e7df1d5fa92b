"""One-step-off asynchronous rollouts for GRPO (`GRPOModule(async_rollouts={"enabled": True})`).

While the policy trains on the batch of step t, the engine samples the batch of step t+1 on a
background thread, with the weights the policy had before update t; the engine receives the new
weights once both are done (`GRPOModule.sync_engine` waits for the generation in flight). Only
`GRPOModule` knows of this: it owns one `RolloutsAhead` and hands it functions, not itself. Each
batch is then one step behind the policy that trains on it (`train/policy_lag`, in optimizer
updates: 1 with one update per step, 0 for the first batch), which the truncated importance weights
against the engine's log-probs correct for.

The batch sampled ahead is the one the loop hands over next (`ResumableDataLoader.peek`) and is
sampled with the seed of the step that trains on it, so the data order and the seeds are those of
a synchronous run; with `rollout_lag=0` (sampling starts after the update instead of before it)
the run is exactly the synchronous run with the same TIS cap, which checks the machinery (without
that cap a synchronous run differs wherever the engine's log-probs differ from the policy's).
`warmup_steps=K` samples the batches of the first K steps that way too, and one step off
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
from r1_lightning.modules.grpo_config import AsyncRolloutConfig
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

    It knows the module only through three functions, so data flows one way (module -> here):
        sampler(batch, global_step): a call that samples and grades `batch` for the step at
            `global_step` from the weights the engine holds now (`GRPOModule.sampler`).
        sync_weights(): push the policy's weights into the engine (`sync_engine`).
        next_batch(global_step): the data batch the loop hands the step at `global_step` next, or
            None when no step will train on it (past `max_steps`).
    config: the lag (1 samples the next batch before the step's update, one-step-off; 0 after it,
    no overlap with the update: the synchronous run with the same TIS cap, exactly) and the warm-up
    steps whose batches are sampled with lag 0 whatever the lag is. updates_per_rollout: optimizer
    updates (global steps) per GRPO step, so the step after the one at global step t is at
    t + updates_per_rollout.
    """

    def __init__(
        self, config: AsyncRolloutConfig, updates_per_rollout: int,
        sampler: Callable[[dict, int], Callable[[], SampledBatch]], sync_weights: Callable[[], object],
        next_batch: Callable[[int], dict | None],
    ) -> None:
        self.lag = config.rollout_lag
        self.warmup_steps = config.warmup_steps
        self.updates_per_rollout = updates_per_rollout
        self.sampler, self.sync_weights, self.next_batch = sampler, sync_weights, next_batch
        self.current: SampledBatch | None = None
        self._ahead: concurrent.futures.Future | None = None
        self._waited_seconds = 0.0

    # ----------------------------------------------------------------------------- the step
    def batch_for_step(self, batch: dict, global_step: int) -> SampledBatch:
        """The sampled `batch` for the step at `global_step`: the one sampled ahead for it, else
        sampled now (the first step, or a batch ahead that is not this one). With lag 1, then
        starts sampling the next step's batch."""
        sampled = self._take(global_step, batch) or self.sampler(batch, global_step)()
        self.current = sampled
        if self._next_lag() == 1:
            self._sample_next()
        return sampled

    def step_ended(self) -> None:
        """After the step's update: with lag 0, sync the engine and start sampling the next batch."""
        if self._next_lag() == 0:
            self.sync_weights()
            self._sample_next()

    @property
    def next_step(self) -> int:
        """The global step of the GRPO step after the running one."""
        return self.current.global_step + self.updates_per_rollout

    def _next_lag(self) -> int:
        """The lag of the batch after the running step's: 0 while that step is a warm-up step."""
        return 0 if self.next_step < self.warmup_steps * self.updates_per_rollout else self.lag

    def pop_waited_seconds(self) -> float:
        """Seconds spent waiting for the engine since the last call (0 when sampling kept up)."""
        seconds, self._waited_seconds = self._waited_seconds, 0.0
        return seconds

    def _sample_next(self) -> None:
        step = self.next_step
        batch = self.next_batch(step)
        if batch is not None:
            self._ahead = _run_in_background(self.sampler(batch, step))

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

    def __init__(self, rollouts_ahead: RolloutsAhead) -> None:
        self.rollouts_ahead = rollouts_ahead

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        lost = self.rollouts_ahead.settle()
        if lost is not None:
            for callback in trainer.checkpoint_callbacks:
                if isinstance(callback, HFExportCheckpoint):
                    callback.incomplete_state = lost
