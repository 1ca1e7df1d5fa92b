"""A batch loader whose position can be saved and restored, for exact checkpoint resume.

Lightning saves the state of every train dataloader that has `state_dict()` / `load_state_dict()`
(it tests `isinstance(loader, lightning.fabric.utilities.types._Stateful)`), stores it in the
checkpoint under the fit loop, and on resume calls `load_state_dict()` *before* its single `iter()`
call for the resumed epoch (`FitLoop.setup_data`). A plain `torch.utils.data.DataLoader` has no such
state, so a run resumed mid-epoch would start the epoch over and see a different data order.

`ResumableDataLoader` makes the order a pure function of (seed, epoch): epoch `e` visits the
examples in the order `torch.randperm(n, generator=torch.Generator().manual_seed(seed + e))`. The
whole state is then (epoch, batches yielded in that epoch), and restoring it reproduces the rest of
the sequence exactly.

It is deliberately not a `DataLoader` subclass: Lightning re-instantiates DataLoaders under DDP to
inject a `DistributedSampler` (which would drop the resume logic), and worker processes would prefetch
batches ahead of the count. Our batches are lists of strings, so there is nothing to parallelize;
multi-process training shards the order itself through `num_replicas` / `rank`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch


class ResumableDataLoader:
    """Iterate over `dataset` in batches, in a seeded per-epoch order that can resume mid-epoch.

    Args:
        dataset: any sequence (`len` + integer indexing), e.g. a list of examples.
        batch_size: examples per batch.
        collate_fn: turns a list of examples into a batch; the default returns the list itself.
        shuffle: visit examples in the seeded random order of each epoch; otherwise in dataset order.
        seed: base seed; epoch `e` uses `seed + e`.
        drop_last: drop the last batch of an epoch when it is smaller than `batch_size`.
        num_replicas, rank: for data-parallel training, each rank takes every `num_replicas`-th
            example of the epoch order starting at `rank` (truncated so all ranks get the same count).

    Epochs: every call to `iter()` starts the next epoch (the first call starts epoch 0), exactly
    like a shuffling `DataLoader` gives a fresh order on each `iter()` -- unless a position is
    pending from `load_state_dict()`, in which case that `iter()` continues from it. An epoch that was
    fully consumed resumes at the start of the next one.

    Known limit: with Lightning's `limit_train_batches` below `len(loader)`, an end-of-epoch
    checkpoint resumes in the rest of that epoch's order rather than at the next epoch's start,
    because the loader cannot tell a truncated epoch from an interrupted one.
    """

    def __init__(
        self,
        dataset: Sequence[Any],
        batch_size: int,
        collate_fn: Callable[[list[Any]], Any] = list,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"ResumableDataLoader: batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(
                f"ResumableDataLoader: need 0 <= rank < num_replicas, got {rank=}, {num_replicas=}"
            )
        self.dataset, self.batch_size, self.collate_fn = dataset, batch_size, collate_fn
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last  # the order of an epoch
        self.num_replicas, self.rank = num_replicas, rank  # this rank's share of it
        if len(self) == 0:
            raise ValueError(
                f"ResumableDataLoader: {len(dataset)} examples over {num_replicas} replica(s) make no batch "
                f"of batch_size={batch_size} (drop_last={drop_last})"
            )
        # The position: the epoch being (or last) iterated and how many of its batches were handed out.
        self.epoch = 0
        self.batches_yielded = 0
        # True when the next iter() must continue from (epoch, batches_yielded) instead of starting
        # a new epoch: initially (start of epoch 0) and after load_state_dict().
        self._resume_pending = True
        # Bumped on each iter() so an abandoned iterator cannot move the position of a newer one.
        self._iteration = 0

    def _examples_per_replica(self) -> int:
        return len(self.dataset) // self.num_replicas

    def __len__(self) -> int:
        """Batches per epoch (per replica)."""
        n = self._examples_per_replica()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch_order(self, epoch: int) -> list[int]:
        """Dataset indices this replica visits in `epoch`, in order."""
        n = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        return order[self.rank :: self.num_replicas][: self._examples_per_replica()]

    def __iter__(self) -> Iterator[Any]:
        # Move the position eagerly (not inside the generator, which runs only at the first next()),
        # so that state_dict() is right as soon as iter() returns.
        if self._resume_pending:
            if self.batches_yielded >= len(self):  # the saved epoch was finished
                self.epoch, self.batches_yielded = self.epoch + 1, 0
        else:
            self.epoch, self.batches_yielded = self.epoch + 1, 0
        self._resume_pending = False
        self._iteration += 1
        return self._batches(self._iteration, self.epoch_order(self.epoch), start=self.batches_yielded)

    def _batches(self, iteration: int, order: list[int], start: int) -> Iterator[Any]:
        for batch_index in range(start, len(self)):
            batch = self._batch(order, batch_index)
            if iteration == self._iteration:
                self.batches_yielded = batch_index + 1
            yield batch

    def _batch(self, order: list[int], batch_index: int) -> Any:
        indices = order[batch_index * self.batch_size : (batch_index + 1) * self.batch_size]
        return self.collate_fn([self.dataset[i] for i in indices])

    def peek(self) -> Any:
        """The batch that comes next (the first of the next epoch once this one is done), without
        moving the position: what lets a trainer start working on a batch before the loop hands it
        over (GRPO's asynchronous rollouts)."""
        epoch, batch_index = self.epoch, self.batches_yielded
        if batch_index >= len(self):
            epoch, batch_index = epoch + 1, 0
        return self._batch(self.epoch_order(epoch), batch_index)

    def state_dict(self) -> dict[str, int]:
        """The position: `{"epoch": e, "batches_yielded": k}` -- the next batch is batch k of epoch e."""
        return {"epoch": self.epoch, "batches_yielded": self.batches_yielded}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Make the next `iter()` continue right after the position saved in `state_dict`."""
        missing = {"epoch", "batches_yielded"} - set(state_dict)
        if missing:
            raise KeyError(
                f"ResumableDataLoader.load_state_dict: missing keys {sorted(missing)} in {state_dict}"
            )
        epoch, batches_yielded = int(state_dict["epoch"]), int(state_dict["batches_yielded"])
        if epoch < 0 or batches_yielded < 0:
            raise ValueError(f"ResumableDataLoader.load_state_dict: negative position in {state_dict}")
        self.epoch, self.batches_yielded = epoch, batches_yielded
        self._resume_pending = True
