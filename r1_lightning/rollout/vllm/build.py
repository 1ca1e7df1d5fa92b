"""How `VLLMEngine` builds its vLLM `LLM`s: importing vLLM (warning off the tested version), checking
which engine arguments this vLLM has, the engine's options (`EngineOptions`, validated) and the
`LLM(...)` keyword arguments they make on the engine's GPUs.

vLLM is imported here only when an engine is attached (`import_vllm`), so `import r1_lightning.rollout`
works without it. The vLLM API each argument relies on is named next to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch

from r1_lightning.rollout.base import TrainerRanks
from r1_lightning.rollout.vllm.layout import scoped_env
from r1_lightning.rollout.vllm.worker import WORKER_EXTENSION

log = logging.getLogger(__name__)

TESTED_VLLM_VERSION = "0.26.0"

INSTALL_HINT = (
    "VLLMEngine needs vLLM on a CUDA machine: pip install 'r1-lightning[vllm]' (vllm=="
    f"{TESTED_VLLM_VERSION}). Without vLLM, generate with the policy itself: "
    "--model.init_args.engine r1_lightning.rollout.HFEngine"
)


_warned_versions: set[str] = set()  # each untested vLLM version is warned about once per process


def import_vllm():
    """The `vllm` module (with `vllm.envs`), or an `ImportError` that says how to install it. An
    engine may import it twice (`attach`, then `build_llm`): an untested version is warned about once."""
    try:
        import vllm
        import vllm.envs
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    if vllm.__version__ != TESTED_VLLM_VERSION and vllm.__version__ not in _warned_versions:
        _warned_versions.add(vllm.__version__)
        log.warning("VLLMEngine is tested with vllm==%s, found %s", TESTED_VLLM_VERSION, vllm.__version__)
    return vllm


def engine_arg_exists(name: str) -> bool:
    """Whether this vLLM's `EngineArgs` has the field `name` (older releases lack some we use)."""
    return name in _engine_arg_names()


@functools.cache
def _engine_arg_names() -> frozenset[str]:
    from vllm.engine.arg_utils import EngineArgs  # a dataclass: LLM(**kwargs) feeds it

    return frozenset(field.name for field in dataclasses.fields(EngineArgs))


# Where vLLM's engine core runs (`VLLMEngine.process`)
Process = Literal["in_process", "separate"]
PROCESSES = get_args(Process)


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """The options every `LLM` of a `VLLMEngine` is built from (each documented at `VLLMEngine`),
    validated together: some only make sense with others (replicas and tensor parallelism need an
    engine in processes of its own, which cannot share the policy's GPU)."""

    gpu_memory_utilization: float
    max_model_len: int | None
    enable_prefix_caching: bool
    dtype: str
    seed: int
    enforce_eager: bool
    colocate: bool
    max_num_seqs: int | None
    process: Process
    tensor_parallel_size: int
    replicas: int

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1 or None, got {self.max_num_seqs}")
        if self.process not in PROCESSES:
            raise ValueError(f"VLLMEngine process must be one of {PROCESSES}, got {self.process!r}")
        if self.process == "separate" and self.colocate:
            raise ValueError("VLLMEngine process 'separate' syncs weights over NCCL, which needs the engine on another "
                             "GPU than the policy: it cannot be colocated (use process 'in_process' with colocate)")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"VLLMEngine tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.tensor_parallel_size > 1 and self.process != "separate":
            raise ValueError(f"VLLMEngine tensor_parallel_size {self.tensor_parallel_size} needs process 'separate' "
                             "(vLLM's tensor-parallel workers run in processes of their own, and so not with colocate)")
        if self.replicas < 1:
            raise ValueError(f"VLLMEngine replicas must be >= 1, got {self.replicas}")
        if self.replicas > 1 and (self.process != "separate" or self.tensor_parallel_size > 1):
            raise ValueError(f"VLLMEngine replicas {self.replicas} needs process 'separate' and tensor_parallel_size 1 "
                             "(each replica is an LLM in processes of its own on the engine's GPU)")

    @property
    def memory_share(self) -> float:
        """The share of the engine GPU's memory each replica's `LLM` may take: `gpu_memory_utilization`
        split evenly, since the replicas share one GPU."""
        return self.gpu_memory_utilization / self.replicas


def llm_engine_args(
    options: EngineOptions,
    vllm,
    model_path: str,
    tokenizer_path: str,
    *,
    ranks: TrainerRanks,
    device_indices: Sequence[int],
    launch_env: dict[str, str],
    name: str,
) -> dict[str, Any]:
    """The keyword arguments of each replica's `vllm.LLM` for `options` on trainer rank `ranks.rank`,
    placed on `device_indices` (or, with a non-empty `launch_env` (`layout.engine_launch_env`), by
    vLLM's external launcher). Options left None are left out: vLLM's own default. `name` is how
    errors call the engine. Raises `RuntimeError` when this vLLM lacks an argument the options need."""
    engine_args: dict[str, Any] = {
        "model": model_path,
        "tokenizer": tokenizer_path,
        "dtype": options.dtype,
        # one seed per rank: engines that sample from their own generator (per_request_seeds
        # false) would otherwise draw the same numbers on every rank
        "seed": options.seed + ranks.rank,
        "gpu_memory_utilization": options.memory_share,
        "enable_prefix_caching": options.enable_prefix_caching,
        "enforce_eager": options.enforce_eager,
        "enable_sleep_mode": options.colocate,
        "logprobs_mode": "raw_logprobs",  # ModelConfig.logprobs_mode (also 0.26's default)
    }
    if options.process == "separate":
        if not engine_arg_exists("weight_transfer_config"):
            raise RuntimeError(f"this vLLM ({vllm.__version__}) has no weight transfer API for an engine in its "
                               f"own process: use process 'in_process', or vllm=={TESTED_VLLM_VERSION}")
        engine_args["weight_transfer_config"] = {"backend": "nccl"}  # EngineArgs.weight_transfer_config (0.26)
    if engine_arg_exists("worker_extension_cls"):  # ParallelConfig.worker_extension_cls: our worker methods
        engine_args["worker_extension_cls"] = WORKER_EXTENSION
    for option in ("max_model_len", "max_num_seqs"):  # None: vLLM's own default
        if getattr(options, option) is not None:
            engine_args[option] = getattr(options, option)
    if options.tensor_parallel_size > 1:
        engine_args["tensor_parallel_size"] = options.tensor_parallel_size
    if launch_env:
        # the worker's GPU is LOCAL_RANK's; external_launcher takes no device_ids (its local
        # rank would index them)
        engine_args["distributed_executor_backend"] = "external_launcher"
        if not torch.distributed.is_initialized():
            raise RuntimeError(f"{name} runs in the trainer's process on {ranks.world_size} ranks, which "
                               "needs torch.distributed initialized first (attach it in configure_model)")
    elif engine_arg_exists("device_ids"):
        engine_args["device_ids"] = list(device_indices)  # EngineArgs.device_ids (0.26)
    elif device_indices[0] != 0:
        # Fallback for a vLLM without `device_ids`: its single in-process worker takes cuda:0, and
        # CUDA_VISIBLE_DEVICES cannot change once CUDA started (it has: the policy is on a GPU).
        raise RuntimeError(
            f"this vLLM ({vllm.__version__}) cannot place its engine on cuda:{device_indices[0]}. "
            "Launch with the engine's GPU listed first, e.g. CUDA_VISIBLE_DEVICES=1,0, and pass "
            "--model.init_args.engine.init_args.device 0 with the trainer on the other GPU, or use "
            f"vllm=={TESTED_VLLM_VERSION}"
        )
    return engine_args


@contextlib.contextmanager
def in_process_env(vllm):
    """`VLLM_ENABLE_V1_MULTIPROCESSING=0` while an in-process engine is built, whatever the environment
    says: vLLM 0.26 reads it (`vllm.envs`, lazily, at each access) when `LLM` builds its engine, and
    decides there whether the engine core runs in this process. An in-process engine core caches every
    vLLM variable once built (`envs.enable_envs_cache`), so a later engine would see that engine's
    values: the cache is dropped first. The caller's value is restored afterwards."""
    envs = getattr(vllm, "envs", None)
    if envs is not None and hasattr(envs, "disable_envs_cache"):
        envs.disable_envs_cache()
    with scoped_env({"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}):
        yield


def build_llm(**engine_args):
    """`vllm.LLM(**engine_args)` as every `VLLMEngine` builds it, in this process or in its own
    (`LLMProcess` runs "r1_lightning.rollout.vllm.build:build_llm" there)."""
    vllm = import_vllm()
    without_logprob_token_strings()
    return vllm.LLM(**engine_args)


def without_logprob_token_strings() -> None:
    """Stop vLLM's front end from turning each log-prob's token id into its text.

    With every sampled token's log-prob asked for (async rollouts' importance weights), vLLM 0.26's
    front end converts each of those ids to its string (`Logprob.decoded_token`) and checks it for
    partial UTF-8: the largest part of its per-token work, measured on vLLM's own `OutputProcessor`
    (benchmarks/vllm_front_end.py), and nothing in this package reads those strings. vLLM has no
    option for it, but its `LogprobsProcessor` leaves them out when it has no tokenizer: this gives
    every request's processor none. The completion text and stop strings still use the tokenizer
    (the `IncrementalDetokenizer` is built apart). Idempotent; a vLLM without that hook is left as is.
    """
    try:
        from vllm.v1.engine.logprobs import LogprobsProcessor  # vLLM 0.26's front end
    except ImportError:
        return
    build = LogprobsProcessor.__dict__.get("from_new_request")
    if not isinstance(build, classmethod) or getattr(build.__func__, "without_token_strings", False):
        return
    original = build.__func__

    def from_new_request(cls, tokenizer, request):
        return original(cls, None, request)

    from_new_request.without_token_strings = True
    LogprobsProcessor.from_new_request = classmethod(from_new_request)
