"""How weights reach a vLLM engine in processes of its own (`VLLMEngine(process="separate")`): over
NCCL, `NCCLWeightSender`.

vLLM 0.26's RL weight-transfer API, with `LLM(..., weight_transfer_config={"backend": "nccl"})`:

- Connect once (the first sync): the trainer (rank 0) and the engine's workers (ranks 1..tp:
  `rank_offset` 1; one for an engine without tensor parallelism) meet at a free local port. The engine side is `LLM.init_weight_transfer_engine(
  {"init_info": ...})`; the trainer side, at the same time, `vllm.distributed.weight_transfer.
  nccl_common.trainer_init(init_info)`, a `PyNcclCommunicator` on the policy's GPU.
- Each sync: `LLM.collective_rpc("load_weights_in_place", args=({names, dtype_names, shapes,
  packed},))` (`worker.WorkerExtension`: each worker receives and loads into its running model
  in place, without vLLM's layerwise reload) while the trainer broadcasts the same tensors in the same
  order, packed into 1 GiB buffers (`NCCLWeightTransferEngine.trainer_send_weights`), then
  `LLM.reset_prefix_cache()`: prompt KV cached from the old weights would be used otherwise.
- The trainer casts each tensor to the engine's dtype on its own GPU before it travels (FP32 master
  weights go as bf16: half the bytes, and the values the engine would have rounded them to anyway).

Failure: every call that waits on the other side runs on a daemon thread, under one deadline per sync
(`timeout_s`). A call that raises or is still running at the deadline raises `WeightSyncError`
naming it, and is left to its thread. The trainer's side runs on a thread too, because an NCCL
broadcast whose peer never joins blocks its caller forever; the calling thread only waits, so the
trainer does nothing else on the GPU meanwhile. After a failure the engine holds a mix of old and
new weights and the NCCL channel is mid-transfer: `VLLMEngine` refuses any further use.

The module-level `trainer_connect` and `trainer_send` are the only trainer-side vLLM calls (CPU tests
replace them); everything else here runs without vLLM.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from r1_lightning.rollout.base import WeightSyncError

NamedTensors = Sequence[tuple[str, torch.Tensor]]


class NCCLWeightSender:
    """The trainer's side of the NCCL weight transfer into one vLLM `LLM` built with
    `weight_transfer_config={"backend": "nccl"}`, its engine core in another process.

    llm: the `vllm.LLM`. name: how errors name the engine. timeout_s: the deadline of one sync
    (and of the connection, in the first). dtype: what the tensors travel as (the engine's dtype);
    None keeps each tensor's own. engine_workers: the engine's tensor-parallel workers; each joins
    the group (ranks 1..engine_workers, vLLM's `worker_init_process_group`), receives the same
    broadcast of full tensors and loads its own shard of them (its model's `load_weights`).
    """

    def __init__(self, llm, name: str, timeout_s: float, dtype: torch.dtype | None, engine_workers: int = 1) -> None:
        self.llm = llm
        self.engine_workers = engine_workers
        self.name = name
        self.timeout_s = timeout_s
        self.dtype = dtype
        self.communicator = None  # the trainer's PyNcclCommunicator, once connected
        self.syncs = 0

    def send(self, named_tensors: NamedTensors) -> None:
        """One weight sync: returns once the engine has loaded every tensor and dropped its prefix
        cache, else raises `WeightSyncError`."""
        self.syncs += 1
        where = f"{self.name}: weight sync {self.syncs}"
        if not named_tensors:
            raise WeightSyncError(f"{where}: no tensors to send")
        device = named_tensors[0][1].device
        deadline = time.monotonic() + self.timeout_s
        if self.communicator is None:
            info = {"master_address": "127.0.0.1", "master_port": free_port(), "rank_offset": 1,
                    "world_size": 1 + self.engine_workers}
            self.communicator = self._run(where, deadline, {
                "the engine joining the NCCL group (LLM.init_weight_transfer_engine)":
                    lambda: self.llm.init_weight_transfer_engine({"init_info": info}),
                "the trainer joining the NCCL group (trainer_init)": on_device(device, lambda: trainer_connect(info)),
            })[1]
        info = update_info(named_tensors, self.dtype)
        self._run(where, deadline, {
            "the engine receiving (load_weights_in_place)":
                lambda: self.llm.collective_rpc("load_weights_in_place", args=(info,)),
            "the trainer sending (trainer_send_weights)":
                on_device(device, lambda: trainer_send(named_tensors, self.communicator, self.dtype)),
        })
        if self._run(where, deadline, {"LLM.reset_prefix_cache": self.llm.reset_prefix_cache})[0] is False:
            raise WeightSyncError(f"{where}: LLM.reset_prefix_cache() refused (requests still running?), so prompt "
                                  "KV computed with the old weights would be reused")

    def _run(self, where: str, deadline: float, calls: dict[str, Callable[[], Any]]) -> list[Any]:
        return run_until(calls, deadline, where, self.timeout_s)


def run_until(calls: dict[str, Callable[[], Any]], deadline: float, where: str, timeout_s: float) -> list[Any]:
    """Run each call on a daemon thread of its own and return their results (in `calls` order) once
    all have returned. Raises `WeightSyncError` as soon as one raises, or at `deadline`
    (`time.monotonic()`) naming the calls still running, which are left to their threads."""
    finished: queue.Queue = queue.Queue()

    def run(index: int, call: Callable[[], Any]) -> None:
        try:
            finished.put((index, call(), None))
        except BaseException as error:  # noqa: BLE001 - reported to the waiting thread
            finished.put((index, None, error))

    names = list(calls)
    for index, call in enumerate(calls.values()):
        threading.Thread(target=run, args=(index, call), name=f"r1-lightning-sync-{index}", daemon=True).start()
    results: dict[int, Any] = {}
    while len(results) < len(calls):
        try:
            index, value, error = finished.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pending = " and ".join(name for i, name in enumerate(names) if i not in results)
            raise WeightSyncError(f"{where}: {pending} did not finish within sync_timeout_s={timeout_s:g} s") from None
        if error is not None:
            message = " ".join(str(error).split())
            raise WeightSyncError(f"{where}: {names[index]} failed: {type(error).__name__}: {message}") from error
        results[index] = value
    return [results[i] for i in range(len(calls))]


def update_info(named_tensors: NamedTensors, dtype: torch.dtype | None) -> dict[str, Any]:
    """vLLM's `NCCLWeightTransferUpdateInfo` as a dict: what the engine must expect, in send order."""
    return {
        "names": [name for name, _ in named_tensors],
        # the consumer resolves each with getattr(torch, name)
        "dtype_names": [str(dtype or tensor.dtype).removeprefix("torch.") for _, tensor in named_tensors],
        "shapes": [list(tensor.shape) for _, tensor in named_tensors],
        "packed": True,
    }


# vLLM's `dtype` option -> the torch dtype its weights are held in
ENGINE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "half": torch.float16,
                 "float32": torch.float32, "float": torch.float32}


def wire_dtype(engine_dtype: str) -> torch.dtype | None:
    """The dtype the weights travel as: the engine's (vLLM `dtype` option), None for "auto" (each
    tensor's own; the engine casts on load)."""
    if engine_dtype == "auto":
        return None
    if engine_dtype not in ENGINE_DTYPES:
        raise ValueError(f"VLLMEngine dtype must be auto or one of {sorted(ENGINE_DTYPES)}, got {engine_dtype!r}")
    return ENGINE_DTYPES[engine_dtype]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def on_device(device: torch.device, call: Callable[[], Any]) -> Callable[[], Any]:
    """`call` with `device` as the current CUDA device (a new thread starts on cuda:0)."""

    def run():
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            return call()

    return run


# -- the trainer-side vLLM calls --------------------------------------------------------------------------------


def trainer_connect(init_info: dict):
    """Join the NCCL group as rank 0 on the current CUDA device; returns the communicator."""
    from vllm.distributed.weight_transfer.nccl_common import trainer_init

    return trainer_init(init_info)


def trainer_send(named_tensors: NamedTensors, communicator, dtype: torch.dtype | None) -> None:
    """Broadcast `wire_tensors(named_tensors, dtype)`, packed: what the engine's `update_weights` receives."""
    from vllm.distributed.weight_transfer.nccl_engine import (
        NCCLTrainerSendWeightsArgs,
        NCCLWeightTransferEngine,
    )

    # vLLM packs and broadcasts on side streams that do not wait for the default stream: the
    # optimizer's last kernels must be done first, and the last broadcasts before the buffers go.
    torch.cuda.synchronize()
    args = NCCLTrainerSendWeightsArgs(group=communicator, packed=True)
    NCCLWeightTransferEngine.trainer_send_weights(wire_tensors(named_tensors, dtype), args)
    torch.cuda.synchronize()


def wire_tensors(named_tensors: NamedTensors, dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor]]:
    """The (name, tensor) pairs as they travel: detached, cast to `dtype` one at a time (the packer
    concatenates each 1 GiB buffer's worth, so no full copy of the weights is made)."""
    for name, tensor in named_tensors:
        yield name, tensor.detach() if dtype is None else tensor.detach().to(dtype)
