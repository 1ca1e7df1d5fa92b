"""Where each trainer rank's vLLM engine goes, and how it is launched beside the trainer's ranks.

Layouts under DDP / FSDP2 (`engine_gpus`): every trainer rank owns one engine, samples its own
prompts with it and loads the full weights into it (gathered from the shards under FSDP2).
Colocated (`colocate=True`): rank r's engine on rank r's own GPU. Split (the default): with T
trainer ranks per node on GPUs 0..T-1, local rank r's engine on GPU T + r (T + r·tp .. with
`tensor_parallel_size` tp), weights over NCCL from the rank's GPU with `process="separate"`.

An in-process engine under an initialized `torch.distributed` (Lightning's DDP / FSDP2 group):
vLLM 0.26's worker (`init_distributed_environment`) does not create a process group when one
exists; it builds its own groups (world, TP, PP, DP) out of the existing world, one group per
rank for TP 1 (`initialize_model_parallel` lays the ranks out as ExternalDP x DP x PP x TP). Its
default in-process executor would tell the worker it is rank 0 of 1 on every rank. vLLM's
`distributed_executor_backend="external_launcher"` is the executor for this case (processes
started by torchrun, as TRL's colocated mode uses it): the worker takes its rank from `RANK`,
its GPU from `LOCAL_RANK` (`engine_launch_env`, set for the construction only), and nothing
forks. Group creation is a collective over the trainer's ranks, so every rank builds its engine
at the same point (`configure_model`); generation with TP 1 then communicates with no other rank.
An engine core in its own process has a `torch.distributed` of its own and needs none of this.
"""

from __future__ import annotations

import contextlib
import os

from r1_lightning.rollout.base import TrainerRanks


def engine_gpus(
    device: str | int,
    colocate: bool,
    num_gpus: int,
    policy_device_index: int | None,
    ranks: TrainerRanks | None = None,
    tensor_parallel_size: int = 1,
) -> list[int]:
    """The CUDA indices (on this node) of this rank's engine: `tensor_parallel_size` of them.

    device "auto": colocated, the rank's own GPU (the policy's; its local rank without one); split,
    with T = `ranks.ranks_per_node` trainer ranks on GPUs 0..T-1, GPUs T + local_rank·tp onwards
    (one process: cuda:1). `ranks` None: one process. An explicit device is one process's choice:
    with several ranks per node every rank would take it, so it is refused there.
    """
    if num_gpus == 0:
        raise RuntimeError("VLLMEngine needs a CUDA GPU and none is visible: without one, generate with the policy "
                           "itself (--model.init_args.engine r1_lightning.rollout.HFEngine)")
    ranks = ranks or TrainerRanks()
    tp, per_node = tensor_parallel_size, ranks.ranks_per_node
    if device != "auto":
        if per_node > 1:
            raise ValueError(
                f"VLLMEngine device {device!r} would put the engines of all {per_node} trainer ranks of a node on "
                "one GPU: use device auto (colocate true: each rank's own GPU; false: GPU ranks-per-node + local rank)"
            )
        first = int(device.removeprefix("cuda:")) if isinstance(device, str) else int(device)
        indices = list(range(first, first + tp))
        if not 0 <= first or indices[-1] >= num_gpus:
            raise ValueError(f"VLLMEngine device {device!r} (tensor_parallel_size {tp}) is not on the {num_gpus} "
                             "visible GPUs")
        return indices
    if colocate:
        return [policy_device_index if policy_device_index is not None else ranks.local_rank]
    needed = per_node * (1 + tp)
    if num_gpus < needed:
        raise RuntimeError(
            f"VLLMEngine colocate false (the split layout) puts the engine of each of the {per_node} trainer rank(s) "
            f"per node on {tp} GPU(s) of its own: that needs {needed} GPUs per node, {num_gpus} visible. Set "
            "--model.init_args.engine.init_args.colocate true (each rank's engine on its own GPU, vLLM sleep mode), "
            "use fewer --trainer.devices, or --model.init_args.engine r1_lightning.rollout.HFEngine"
        )
    first = per_node + ranks.local_rank * tp
    return list(range(first, first + tp))


def engine_launch_env(process: str, ranks: TrainerRanks, device_index: int) -> dict[str, str]:
    """The variables vLLM's `external_launcher` executor reads (`_distributed_args`) when an engine
    runs in the process of one of several trainer ranks: RANK (its rank in the trainer's group, which
    vLLM's groups reuse) and LOCAL_RANK (the engine's GPU); WORLD_SIZE only for an `env://` init,
    which the trainer's existing group makes vLLM skip. Empty (vLLM's own executor) for one process,
    and for an engine core in a process of its own."""
    if process != "in_process" or ranks.world_size == 1:
        return {}
    return {"RANK": str(ranks.rank), "LOCAL_RANK": str(device_index), "WORLD_SIZE": str(ranks.world_size)}


@contextlib.contextmanager
def scoped_env(variables: dict[str, str]):
    """`variables` in os.environ for the block, then the caller's values again: Lightning's cluster
    environments read LOCAL_RANK and friends later on."""
    previous = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
