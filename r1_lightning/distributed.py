"""FSDP2 for the policy, under Lightning's `ModelParallelStrategy` (the strategy builds the device
mesh; `PolicyModule.configure_model` calls `shard_policy` on it).

Each decoder layer, then the whole model, is one `fully_shard` group: the parameters, their
gradients after each update's reduce-scatter, and AdamW's moments live as shards (DTensors) over
the data-parallel ranks. The full weights are gathered when the module computes and dropped for the
optimizer step (the layout of ZeRO-2, `reshard_after_forward=False`):

    gather_full_weights  (start of a batch, of validation, after each update; a collective)
    -> forward / backward passes, HF generation, chunked log-probs: no collective at all; the
       gradients accumulate unsharded (`set_requires_gradient_sync(False)`) except in the update's
       last backward, which reduce-scatters them
    -> reshard -> clip and step on the shards -> gather_full_weights

Why not re-shard after every forward (ZeRO-3): then every forward and backward all-gathers, so
every rank must run the same number of them, and the ranks do not: token-budget microbatches
(`microbatch_max_tokens`) cut each rank's sequences into as many microbatches as they need, and
HF generation runs one forward per generated token, as many as the rank's longest answer. The
chunked log-probs also read the LM head's weight outside the model's forward, where ZeRO-3 would
hold only a shard. Here only the update's last backward (one per rank per update) communicates.
The cost is the full weights and gradients on every rank during an update, as under DDP; AdamW's
two moments (twice the weights' memory) stay sharded. A checkpoint save registers the shards again
(the state dict is the shards); the next batch, or the next forward, gathers.

Every function here that gathers is a collective: every rank must call it, in the same order.
"""

from __future__ import annotations

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor


def compile_under_fsdp2_error(backend: str) -> str:
    """Why `compile` is refused under FSDP2, naming the option: the decoder layers compiled before
    `fully_shard` made two CPU ranks (gloo) run mismatched collectives in their first forward, and
    compiled FSDP2 has not run on GPUs here. Eager FSDP2 is what the tests and the 7B run cover."""
    return (f"--model.init_args.compile {backend} under FSDP2 (ModelParallelStrategy) is not supported: compiled "
            "decoder layers made the ranks' collectives disagree, and the pair has not run on GPUs; pass "
            "--model.init_args.compile false")


def data_parallel_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The mesh's data-parallel dimension; the policy has no tensor parallelism, so a
    tensor-parallel dimension larger than 1 is refused (it would give ranks the same data)."""
    if mesh.ndim == 2 and mesh["tensor_parallel"].size() > 1:
        dp, tp = mesh["data_parallel"].size(), mesh["tensor_parallel"].size()
        raise ValueError(
            f"trainer.strategy: ModelParallelStrategy built a mesh of data_parallel_size={dp} x "
            f"tensor_parallel_size={tp}, but the policy is only sharded data-parallel (FSDP2): set "
            f"--trainer.strategy.data_parallel_size {dp * tp} "
            f"--trainer.strategy.tensor_parallel_size 1"
        )
    return mesh["data_parallel"] if mesh.ndim == 2 else mesh


def shard_policy(policy: torch.nn.Module, mesh: DeviceMesh, dtype: torch.dtype) -> None:
    """FSDP2 in place: each decoder layer (`model.layers`) is one group, the rest (embeddings, final
    norm, LM head; a tied head shares the embedding's parameter, so they must be in one group) the
    root. Computes in `dtype` (the module's `dtype` option, that of the loaded weights) and reduces
    gradients in float32. A collective: every rank must call it."""
    mesh = data_parallel_mesh(mesh)
    options = {"mesh": mesh, "mp_policy": MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32),
               "reshard_after_forward": False}
    layers = getattr(getattr(policy, "model", None), "layers", None)
    for layer in layers if isinstance(layers, torch.nn.ModuleList) else ():
        fully_shard(layer, **options)
    fully_shard(policy, **options)
    policy.set_reshard_after_backward(False)  # recursive: every group keeps its full weights
    # FSDP2 sets up its root (which holds every group's post-backward) at the root's first forward.
    # The chunked log-probs call the decoder body and the head's weight without it, so a first
    # forward runs here.
    device = next(policy.parameters()).device
    with torch.no_grad():
        policy(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)
    reshard(policy)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` was sharded with FSDP2 (`shard_policy`)."""
    return isinstance(model, FSDPModule)


def _groups(policy: torch.nn.Module) -> list[FSDPModule]:
    return [module for module in policy.modules() if isinstance(module, FSDPModule)]


def gather_full_weights(policy: torch.nn.Module) -> None:
    """Make every group's full weights present (all-gather each group that holds only its shard; a
    no-op for the groups already gathered, and for a model that is not sharded)."""
    for group in _groups(policy):
        group.unshard()


def reshard(policy: torch.nn.Module) -> None:
    """Drop the gathered weights: the parameters are the shards again (what the optimizer holds)."""
    for group in _groups(policy):
        group.reshard()


def set_gradient_sync(policy: torch.nn.Module, sync: bool) -> None:
    """Whether the next backward reduce-scatters the gradients (the update's last) or only
    accumulates them unsharded (the microbatches before it)."""
    if is_sharded(policy):
        policy.set_requires_gradient_sync(sync)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with full tensors, on every rank, without the second name of a tied
    parameter (e.g. a tied `lm_head.weight`: gathered, it would be a copy that no longer shares
    the embedding's storage, so the Hugging Face export would write it twice). Under FSDP2 each
    parameter is all-gathered in the same order on every rank, so every rank must call this
    before any rank uses the result (a rank that started loading its engine while another still
    gathered would wait forever). The weights the rollout engine is sent and the HF export writes."""
    aliases = ({name for name, _ in model.named_parameters(remove_duplicate=False)}
               - {name for name, _ in model.named_parameters()})
    if is_sharded(model):
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    else:
        state = model.state_dict()
    return {name: tensor for name, tensor in state.items() if name not in aliases}


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (the tensor itself otherwise): for checks that each rank
    makes on its own part and then agrees on (`reduce_boolean_decision`)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def total_norm(norm: torch.Tensor) -> torch.Tensor:
    """`get_total_norm` of sharded gradients as a plain tensor. It is already the global norm (the
    DTensor norm all-reduces the shards' parts and comes back replicated); a norm taken over the
    local shards instead would be each rank's own, and clip each rank differently. Any other
    tensor as it is."""
    return norm.full_tensor() if isinstance(norm, DTensor) else norm
