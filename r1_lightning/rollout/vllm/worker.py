"""What r1-lightning adds to vLLM's workers: `WorkerExtension`, mixed into each worker by vLLM
(`LLM(..., worker_extension_cls=WORKER_EXTENSION)`, vLLM 0.26's `ParallelConfig.worker_extension_cls`)
and called by name through `LLM.collective_rpc`, in whichever process the worker runs (the trainer's,
or an engine core's of its own). Imported by vLLM in the worker's process.
"""

from __future__ import annotations

import numpy as np
import torch

WORKER_EXTENSION = f"{__name__}.WorkerExtension"


class WorkerExtension:
    """Methods on every vLLM worker (`self` is vLLM's GPU `Worker`, whose `device` is its GPU)."""

    def load_weights_in_place(self, update_info: dict) -> None:
        """Receive one weight update over the NCCL group that `LLM.init_weight_transfer_engine` joined
        (the trainer broadcasts the same tensors meanwhile) and load it into the running model with its
        own `load_weights`, in place, as the in-process engine's sync does (`VLLMEngine.load_weights`).

        vLLM's `start_weight_update` / `update_weights` / `finish_weight_update` wrap the same receive
        in a layerwise reload, which re-processes every layer's weights after loading, for checkpoint
        formats that need it (quantized ones); with it a sync of a 1.2M-parameter model took 0.1 s.
        An unquantized model's weights, loaded in place, need none of it. update_info: vLLM's
        `NCCLWeightTransferUpdateInfo` as a dict."""
        engine = getattr(self, "weight_transfer_engine", None)
        if engine is None:
            raise RuntimeError("this vLLM worker has no weight transfer engine: build the LLM with "
                               "weight_transfer_config={'backend': 'nccl'}")
        engine.update_weights(update_info)  # parse, receive into the model's load_weights, synchronize

    def reseed_sampler(self, seed: int) -> None:
        """Seed what a vLLM 0.26 worker draws an unseeded request's sampling noise from, so a generate
        call after this samples the same on the same engine state. Its V2 model runner (the default for
        dense models such as Qwen2 and Llama) gives each request without a seed one drawn from NumPy's
        global generator when the request is added, then draws every request's noise in one kernel from
        those seeds; its V1 runner draws unseeded noise from the GPU's default generator. Both are
        seeded here."""
        np.random.seed(seed % 2**32)
        with torch.cuda.device(self.device):
            torch.cuda.manual_seed(seed)
