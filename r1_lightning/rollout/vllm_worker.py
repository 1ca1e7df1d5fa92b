"""What r1-lightning adds to vLLM's workers: `WorkerExtension`, mixed into each worker by vLLM
(`LLM(..., worker_extension_cls=WORKER_EXTENSION)`, vLLM 0.26's `ParallelConfig.worker_extension_cls`)
and called by name through `LLM.collective_rpc`, in whichever process the worker runs (the trainer's,
or an engine core's of its own). Imported by vLLM in the worker's process; needs only torch there.
"""

from __future__ import annotations

import torch

WORKER_EXTENSION = f"{__name__}.WorkerExtension"


class WorkerExtension:
    """Methods on every vLLM worker (`self` is vLLM's GPU `Worker`, whose `device` is its GPU)."""

    def reseed_sampler(self, seed: int) -> None:
        """Seed the worker GPU's default generator. vLLM 0.26's sampler draws the noise of every request
        without a seed of its own from it, in one batched call a step (seeded requests are drawn one by
        one), so a generate call after this samples the same on the same engine state."""
        with torch.cuda.device(self.device):
            torch.cuda.manual_seed(seed)
