"""`VLLMEngine`: rollouts from a vLLM `LLM` on its own GPU, its engine core in the trainer's process
or in a process of its own (the rest of `r1_lightning.rollout.vllm` is what it builds on).

Design:
- In-process engine (`process="in_process"`, `VLLM_ENABLE_V1_MULTIPROCESSING=0`): the engine core
  and its single worker run in this process and thread, so `LLM.apply_model` hands the worker's
  `nn.Module` to a Python function and the policy's tensors pass by reference — a weight sync is one
  in-place `model.load_weights(...)` over (Hugging Face name, tensor) pairs, with no disk and no NCCL.
- Engine in processes of its own (`process="separate"`): the whole `LLM` is built in a spawned
  process (`llm_process.LLMProcess`) and its engine core in another, as vLLM does by default. vLLM's
  front end (detokenization, stop strings, per-token log-probs) then runs outside the trainer's
  interpreter: sampled on a thread beside training (async rollouts), it would share the trainer's
  GIL with the training loop. Weights cross over NCCL from the policy's GPU to the engine's
  (`transfer.NCCLWeightSender`), still without disk.
- Replicas (`replicas=k`, with "separate"): k such `LLM`s on the engine's GPU, each sampling a share
  of the prompts at once. One vLLM engine's scheduling and output processing are Python on one core
  each; while they run, its GPU idles. k engines do that work on k cores, but take turns on the GPU
  (without MPS), each reading all the weights per decoding step: on the 1.5B shape on an H200 two
  did not shorten a rollout (benchmarks/results/async_2gpu.md).
- A weight sync that fails or hangs (`sync_timeout_s`) raises `WeightSyncError`, and the engine then
  refuses to generate: it holds a mix of old and new weights.
- Placement: `LLM(..., device_ids=[N])` (vLLM 0.26) puts the engine on `cuda:N` without touching
  `CUDA_VISIBLE_DEVICES`. By default N = 1: the policy trains on GPU 0, the engine owns GPU 1.
- `colocate=True` shares one GPU with the trainer: vLLM's sleep mode frees the engine's memory
  (`sleep(level=1)`: weights offloaded to CPU, KV cache discarded) while the policy trains.
- Layouts under DDP / FSDP2 (colocated, split) and an in-process engine beside the trainer's
  `torch.distributed` group: `layout.py`.
- Prompts go in as token ids from the policy's tokenizer, so the engine and the trainer agree on
  ids; vLLM loads the same tokenizer from the model folder for stop strings and detokenization.
- Log-probs are vLLM's `logprobs_mode="raw_logprobs"`: log-softmax of the unprocessed logits
  (before temperature, top-k/top-p and min_tokens), the same quantity as `HFEngine`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable, Iterator, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info

from r1_lightning.rollout.base import Completion, SamplingConfig, TrainerRanks, WeightSyncError
from r1_lightning.rollout.vllm import build
from r1_lightning.rollout.vllm.build import EngineOptions, Process
from r1_lightning.rollout.vllm.generation import (
    generate_completions,
    generate_on_replicas,
    sampling_params_kwargs,
)
from r1_lightning.rollout.vllm.layout import engine_gpus, engine_launch_env, scoped_env
from r1_lightning.rollout.vllm.llm_process import LLMProcess
from r1_lightning.rollout.vllm.transfer import NCCLWeightSender, wire_dtype

log = logging.getLogger(__name__)


class VLLMEngine:
    """A vLLM engine on its own GPU (default: the second one), fed the policy's weights in place.

    model: what vLLM loads at attach time; default the policy's own `config._name_or_path`.
        Its weights only need the right shapes: the trainer pushes the policy's weights in before
        the first rollout (and after a resume).
    device: "auto" (cuda:1; with `colocate`, the policy's GPU; under DDP / FSDP2 each rank's GPU of its
        layout, `layout.engine_gpus`), or a CUDA index / "cuda:N" (one trainer rank per node only).
    gpu_memory_utilization: share of the engine GPU's memory vLLM may take (weights + KV cache).
        With `colocate`, it shares that memory with training: use a small value (e.g. 0.3).
    max_model_len: prompt + response token budget; None = the model's maximum.
    seed: the engine's base seed.
    per_request_seeds: honour `SamplingConfig.seed` with one seed per request, so a rollout is the
        same whatever else is in the batch (a resumed run samples what the straight run did).
        False: one seed per `generate` call instead. The engine's workers reseed what unseeded
        requests draw from with `SamplingConfig.seed` first (`worker.WorkerExtension`). The same
        call on the same engine state then samples the same (a resumed run too, since each step's sync
        leaves that state alike), but a request's samples depend on the batch. Without a seed, both
        sample from the engine's own generators. Speed: vLLM 0.26's V2 model runner (the default for
        dense models) draws every request's noise in one kernel from per-request seeds either way, so
        the two cost the same there; its V1 runner (MoE models) draws seeded requests' noise one
        request at a time, which per-call seeds avoid. Colocated in process, the reseed also reseeds
        the trainer's NumPy and GPU generators.
    max_num_seqs: how many sequences vLLM decodes at once; None = vLLM's default, which 0.26 sets to
        1024 on GPUs of 70 GB or more (`EngineArgs.get_batch_defaults`): a 256 x 8 rollout batch then
        runs in two waves.
    enforce_eager: skip CUDA graphs and torch.compile (faster start, slower decoding).
    colocate: the engine on the policy's GPU, asleep between rollouts (vLLM's sleep mode): one GPU, or
        under DDP / FSDP2 the colocated layout (each rank's engine on its own GPU); false: the split
        layout (each rank's engine on a GPU of its own).
    tensor_parallel_size: GPUs per engine (vLLM's tensor parallelism), for models one GPU cannot hold;
        > 1 needs `process="separate"` (vLLM's workers then run in processes of their own: weights
        reach every worker over one NCCL broadcast, each loading its shard) and the split layout.
    process: where vLLM runs. "in_process": in the trainer's process, weights synced by reference
        (`LLM.apply_model`). "separate": the `LLM` in a process of its own and its engine core in
        another (`llm_process.LLMProcess`), weights synced over NCCL from the policy's GPU, cast to
        `dtype` first; needs the engine on another GPU than the policy (NCCL joins one rank per GPU),
        so not with `colocate`. Use it with async rollouts: vLLM's front end then does not share the
        trainer's interpreter with the training loop.
    sync_timeout_s: with "separate", the seconds one weight sync may take (the first also connects)
        before it fails with `WeightSyncError` instead of waiting on a hung engine.
    replicas: with "separate", how many `LLM`s share the engine's GPU (`gpu_memory_utilization` is
        split evenly between them). A `generate` call gives each a contiguous share of the prompts (a
        prompt's n samples stay together) and returns the completions in prompt order; with
        per-request seeds they are the samples one engine would draw. Weights reach each over NCCL
        of its own, one after another (NCCL joins one rank per GPU, so the replicas cannot share a
        group). Worth trying only when the engine's GPU mostly idles during a rollout.
    """

    def __init__(
        self,
        model: str | None = None,
        device: str | int = "auto",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        dtype: str = "bfloat16",
        seed: int = 0,
        enforce_eager: bool = False,
        colocate: bool = False,
        per_request_seeds: bool = True,
        max_num_seqs: int | None = None,
        process: Process = "in_process",
        sync_timeout_s: float = 60.0,
        tensor_parallel_size: int = 1,
        replicas: int = 1,
    ) -> None:
        self.options = EngineOptions(
            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching, dtype=dtype, seed=seed, enforce_eager=enforce_eager,
            colocate=colocate, max_num_seqs=max_num_seqs, process=process,
            tensor_parallel_size=tensor_parallel_size, replicas=replicas,
        )
        if sync_timeout_s <= 0:
            raise ValueError(f"VLLMEngine sync_timeout_s must be > 0, got {sync_timeout_s}")
        self.model = model
        self.device = device
        self.per_request_seeds = per_request_seeds
        self.sync_timeout_s = sync_timeout_s
        self.wire_dtype = wire_dtype(dtype) if process == "separate" else None

        self.llms: list = []  # each replica's vllm.LLM (its LLMProcess with "separate"), built by attach()
        self.tokenizer = None
        self.device_indices: list[int] = []  # the engine's GPUs (tensor_parallel_size of them), set by attach
        self.ranks = TrainerRanks()
        self._tie_word_embeddings = False
        self._sleeping = False
        self._senders: list[NCCLWeightSender] = []  # process "separate": the trainer's side of each replica's sync
        self._reseedable = False  # the workers have WorkerExtension.reseed_sampler (per_request_seeds false)
        self._broken: str | None = None  # why the engine's weights are unknown (a failed sync)

    def __str__(self) -> str:
        gpus = ",".join(map(str, self.device_indices))
        rank = f"rank {self.ranks.rank}'s " if self.ranks.world_size > 1 else ""
        replicas = f", {self.options.replicas} replicas" if self.options.replicas > 1 else ""
        return f"{rank}VLLMEngine on cuda:{gpus} ({self.options.process.replace('_', '-')} engine core{replicas})"

    @property
    def llm(self):
        """The vLLM `LLM` (its `LLMProcess` with "separate"; the first replica's); None before `attach`."""
        return self.llms[0] if self.llms else None

    @property
    def process(self) -> Process:
        """Where vLLM's engine core runs: "in_process" or "separate"."""
        return self.options.process

    @property
    def device_index(self) -> int | None:
        """The engine's (first) GPU; None before `attach`."""
        return self.device_indices[0] if self.device_indices else None

    # -- RolloutEngine protocol ------------------------------------------------------------------

    @property
    def shares_policy_weights(self) -> bool:
        return False

    def attach(self, policy: torch.nn.Module, tokenizer, ranks: TrainerRanks | None = None) -> None:
        vllm = build.import_vllm()
        self.ranks = ranks or TrainerRanks()
        model_path = self.model or getattr(getattr(policy, "config", None), "_name_or_path", None)
        if not model_path:
            raise ValueError(
                "VLLMEngine needs a model folder or hub id to build the engine from: the policy has no "
                "config._name_or_path, so pass --model.init_args.engine.init_args.model PATH"
            )
        policy_device = next(policy.parameters()).device
        self.device_indices = engine_gpus(
            self.device,
            colocate=self.options.colocate,
            num_gpus=torch.cuda.device_count(),
            policy_device_index=policy_device.index if policy_device.type == "cuda" else None,
            ranks=self.ranks,
            tensor_parallel_size=self.options.tensor_parallel_size,
        )
        same_gpu = policy_device.type == "cuda" and policy_device.index in self.device_indices
        if self.options.process == "separate" and same_gpu:
            raise ValueError(f"VLLMEngine process 'separate' needs the engine on another GPU than the policy's "
                             f"({policy_device}): NCCL joins one rank per GPU. Set device to another GPU")
        if not self.options.colocate and same_gpu:
            log.warning(
                "VLLMEngine shares cuda:%d with the policy without colocate=True: the engine keeps its "
                "memory during training; set colocate true (sleep mode) or a lower gpu_memory_utilization",
                self.device_index,
            )
        self.tokenizer = tokenizer
        self._tie_word_embeddings = bool(getattr(policy.config, "tie_word_embeddings", False))
        tokenizer_path = getattr(tokenizer, "name_or_path", None) or model_path
        start = time.perf_counter()
        self.llms = self._build_llms(vllm, model_path, tokenizer_path)
        rank_zero_info(
            f"{self}: {model_path} (policy on {policy_device}"
            f"{', colocated: sleep mode' if self.options.colocate else ''}), built in {time.perf_counter() - start:.0f} s"
        )
        self._sleeping = False
        self._broken = None
        if self.options.process == "separate":
            self._senders = [
                NCCLWeightSender(llm, f"{self}{f' replica {i}' if self.options.replicas > 1 else ''}", self.sync_timeout_s,
                                 self.wire_dtype, engine_workers=self.options.tensor_parallel_size)
                for i, llm in enumerate(self.llms)
            ]

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[Completion]:
        self._require_usable("generate")
        if not prompts:
            return []
        prompt_ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        call_seed = None
        if not self.per_request_seeds:  # one seed for the whole call, set in the workers
            call_seed = sampling.seed if self._reseedable else None
            sampling = dataclasses.replace(sampling, seed=None)
        params = [sampling_params_kwargs(sampling, i) for i in range(len(prompts))]
        if isinstance(self.llm, LLMProcess):  # the front end's per-token work stays in its process
            return generate_on_replicas(self.llms, prompt_ids, params, call_seed)
        self.wake_up()
        with self._on_engine_device():
            completions = generate_completions(self.llm, prompt_ids, params, call_seed)
        if self.options.colocate:
            self.sleep()
        return completions

    def close(self) -> None:
        """End the engine's own processes (`process="separate"`; otherwise they end with this one)."""
        for llm in self.llms:
            if isinstance(llm, LLMProcess):
                llm.close()
        self.llms = []

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy (Hugging Face name, tensor) pairs into the engine's model, in place: by reference
        in process, over NCCL to an engine in processes of its own.

        The tensors may live on another GPU (copied device to device) and in another dtype
        (cast on copy). vLLM's `load_weights` fuses q/k/v and gate/up itself. Raises
        `WeightSyncError` if the weights may not all have arrived, and the engine then refuses to
        generate or sync again (`_broken`).
        """
        self._require_usable("sync weights")
        weights = list(engine_weights(named_tensors, self._tie_word_embeddings))
        try:
            if self._senders:
                for sender in self._senders:
                    sender.send(weights)
            else:
                self._load_in_process(weights)
        except BaseException as error:
            self._broken = " ".join(str(error).split()) or type(error).__name__
            if isinstance(error, Exception) and not isinstance(error, WeightSyncError):
                raise WeightSyncError(f"{self}: weight sync failed: {type(error).__name__}: {self._broken}") from error
            raise

    def _load_in_process(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        waking = self.options.colocate and self._sleeping
        if waking:
            self._wake(tags=["weights"])  # LLM.wake_up(tags): weights first, KV cache after
        with torch.no_grad(), self._on_engine_device():
            # LLM.apply_model(func) -> [func(model) per worker]; in-process there is one worker and
            # `func` runs right here. Qwen2ForCausalLM.load_weights returns the names it loaded.
            loaded = self.llm.apply_model(lambda model: model.load_weights(weights))
            torch.cuda.synchronize()  # the copies are done when we return (and a timer around us is honest)
        if all(isinstance(names, set) and not names for names in loaded):
            raise RuntimeError(
                "vLLM's load_weights loaded no parameter: do the tensor names match the model?"
            )
        if waking:
            self._wake(tags=["kv_cache"])
            self._sleeping = False
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights

    def sleep(self) -> None:
        """Colocated mode: give the GPU memory back to training (LLM.sleep(level=1))."""
        if self.options.colocate and not self._sleeping and self.llm is not None:
            self.llm.sleep(level=1)
            self._sleeping = True

    def wake_up(self) -> None:
        """Colocated mode: take the weights and the KV cache back (LLM.wake_up())."""
        if self._sleeping:
            self._wake(tags=None)
            self._sleeping = False

    def _wake(self, tags: list[str] | None) -> None:
        # vLLM maps its memory back with the CUDA driver, outside torch's allocator: the blocks torch
        # still caches from the update (free, but held) must go back to the driver first, or a policy
        # whose optimizer states and cache fill the GPU leaves the engine too little to wake into.
        torch.cuda.empty_cache()
        self.llm.wake_up(tags=tags)

    # -- helpers ---------------------------------------------------------------------------------

    def _build_llms(self, vllm, model_path: str, tokenizer_path: str) -> list:
        """The in-process `LLM`, or each replica's `LLMProcess`, built one after another: vLLM sizes its
        KV cache from the memory it sees, which must not be changing under another build."""
        launch_env = engine_launch_env(self.options.process, self.ranks, self.device_index)
        engine_args = build.llm_engine_args(self.options, vllm, model_path, tokenizer_path, ranks=self.ranks,
                                            device_indices=self.device_indices, launch_env=launch_env, name=str(self))
        self._reseedable = "worker_extension_cls" in engine_args
        if self.options.process == "separate":  # each LLM in a process of its own, its engine core in another
            env = {**launch_env, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
            return [LLMProcess(engine_args, env=env, build=f"{build.__name__}:build_llm")
                    for _ in range(self.options.replicas)]
        with self._on_engine_device(), build.in_process_env(vllm), scoped_env(launch_env):
            return [build.build_llm(**engine_args)]

    @contextlib.contextmanager
    def _on_engine_device(self):
        """Run vLLM calls with the engine's GPU as the current CUDA device, then restore the
        caller's: the in-process worker sets the thread's current device, and tensors vLLM makes
        with a bare "cuda" must land on its GPU, while the trainer's must stay on the policy's. An
        engine core in its own process needs none of it (and the trainer no CUDA context on its GPU)."""
        if self.options.process == "separate":
            yield
            return
        with torch.cuda.device(self.device_index):
            yield

    def _require_attached(self) -> None:
        if self.llm is None:
            raise RuntimeError("VLLMEngine used before attach(policy, tokenizer)")

    def _require_usable(self, action: str) -> None:
        self._require_attached()
        if self._broken is not None:
            raise WeightSyncError(
                f"{self} refuses to {action}: a weight sync failed ({self._broken}), so its weights are a mix of "
                "two versions. Restart the run from its last checkpoint (--ckpt_path last)"
            )


# -- pure helpers (no vLLM needed; unit-tested on the CPU) -----------------------------------------


def engine_weights(
    named_tensors: Iterable[tuple[str, torch.Tensor]], tie_word_embeddings: bool
) -> Iterator[tuple[str, torch.Tensor]]:
    """The pairs vLLM's loader should see. A tied model has no lm_head parameter in vLLM (its
    loader skips the name too); dropping it here also saves the copy."""
    for name, tensor in named_tensors:
        if tie_word_embeddings and name == "lm_head.weight":
            continue
        yield name, tensor
