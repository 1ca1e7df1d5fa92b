"""What every r1-lightning module shares: the policy, its tokenizer, AdamW + schedule, and one
optimizer update done by hand (manual optimization). The engine plumbing of the modules that
sample (GRPO, expert iteration, evaluation) is `RolloutModule`, in `rollout.py`."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import ParallelStrategy
from torch.nn.attention import SDPBackend, sdpa_kernel

from r1_lightning.distributed import (
    compile_under_fsdp2_error,
    full_state_dict,
    gather_full_weights,
    is_sharded,
    reshard,
    set_gradient_sync,
    shard_policy,
    total_norm,
)
from r1_lightning.lora import ADAPTER_FOLDER, LoRAConfig, add_lora, merged_state_dict, save_adapter
from r1_lightning.models import (
    compile_backend,
    compile_decoder_layers,
    load_causal_lm,
    load_tokenizer,
    resolve_dtype,
)
from r1_lightning.modules.grpo_config import as_config
from r1_lightning.seeding import seed_or_global

LR_SCHEDULES = ("constant", "cosine", "linear")
SDPA_BACKENDS = {  # the `sdpa_backends` names
    "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH,
}


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """The LR factor at optimizer step `step`: linear warmup, then constant / cosine / linear decay
    to `min_lr_ratio` at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


class PolicyModule(L.LightningModule):
    """A causal-LM policy trained with manual optimization.

    Args:
        model_name_or_path: a hub id, a local Hugging Face folder, or `builtin:quickstart`.
        tokenizer_name_or_path: where the tokenizer lives, if not with the model (as TRL's
            `processing_class`); the rollout engine loads it from there too.
        learning_rate, weight_decay, betas, adam_eps: AdamW (CS336 GRPO: 1e-5, 0.0, (0.9, 0.95)).
        lr_schedule: "constant", "cosine" or "linear" after `warmup_steps` of linear warmup; the
            total is the trainer's `max_steps` (optimizer updates).
        max_grad_norm: global-norm gradient clipping; None or <= 0 turns it off.
        dtype: "auto" (bf16 where the GPU has it, else fp32), "bfloat16", "float32".
        gradient_checkpointing: trade compute for activation memory.
        compile: torch.compile the decoder layers and the chunked LM head's work around its matmuls
            (True: inductor; or a backend name, e.g. "aot_eager"). Off by default; configs/grpo.yaml and
            configs/leaderboard.yaml turn it on for the GPU, where it was measured faster.
        logprob_chunk_size: compute log-probs from hidden states in chunks of this many tokens so
            the (B, T, vocab) float32 log-softmax is never materialized; None = naive.
        fused_adamw: use the fused CUDA AdamW kernel (ignored on the CPU).
        sdpa_backends: the PyTorch SDPA kernels attention may use while fitting, in order of
            preference, from "flash", "efficient", "cudnn", "math" (None: PyTorch's choice). On an
            H200 PyTorch 2.11 picks cuDNN attention, whose ~2 ms of CPU per call slows the 1.5B GRPO
            update; ["flash", "efficient", "math"] leaves it out (what the configs set). Applies to
            the training passes (`attention_kernels`).
        microbatch_max_tokens: token-budget microbatches (GRPO, SFT, expert iteration): cut each
            update's length-sorted sequences into microbatches of at most this many padded tokens
            instead of equal slices of `gradient_accumulation_steps`. Same gradient (each
            microbatch's loss is weighted by its share of the update), fewer and fuller passes.
        seed: base seed for rollouts (sampling seed = seed + global step, so a resumed run samples
            exactly what the straight run did); None: `seed_everything`'s (`seeding.seed_or_global`).
        max_consecutive_skipped_updates: stop with an error when this many optimizer updates in a
            row had a non-finite loss or gradient norm (each is skipped, see `optimizer_update`).
            10: more than the 8 updates the off-policy ablation takes from one rollout batch, so a
            single poisoned batch does not end a run, while a cause that persists (weights already
            broken, a learning rate far too high) fails every update and stops the run within 10.
        lora: train LoRA adapters instead of the whole policy (`LoRAConfig`: rank, alpha, dropout,
            target_modules; None: full fine-tuning). Only the adapters get gradients and AdamW
            state; the engine is sent, and the export holds, the merged weights (`r1_lightning.lora`).
    """

    def __init__(
        self,
        model_name_or_path: str,
        learning_rate: float = 1e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        adam_eps: float = 1e-8,
        lr_schedule: str = "constant",
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        max_grad_norm: float | None = 1.0,
        dtype: str = "auto",
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = None,
        logprob_chunk_size: int | None = None,
        fused_adamw: bool = True,
        seed: int | None = None,
        tokenizer_name_or_path: str | None = None,
        compile: bool | str = False,
        microbatch_max_tokens: int | None = None,
        sdpa_backends: list[str] | None = None,
        max_consecutive_skipped_updates: int = 10,
        lora: LoRAConfig | dict | None = None,
    ) -> None:
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if microbatch_max_tokens is not None and microbatch_max_tokens < 1:
            raise ValueError(f"microbatch_max_tokens must be >= 1 or None, got {microbatch_max_tokens}")
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        if max_consecutive_skipped_updates < 1:
            raise ValueError(f"max_consecutive_skipped_updates must be >= 1, got {max_consecutive_skipped_updates}")
        unknown = sorted(set(sdpa_backends or ()) - set(SDPA_BACKENDS))
        if unknown or sdpa_backends == []:
            raise ValueError(f"sdpa_backends: choose one or more of {list(SDPA_BACKENDS)} (or null), got {sdpa_backends!r}")
        self.automatic_optimization = False
        self.model_name_or_path = model_name_or_path
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.betas = tuple(betas)
        self.adam_eps = adam_eps
        self.lr_schedule = lr_schedule
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.max_grad_norm = max_grad_norm
        self.dtype_name = dtype
        self.gradient_checkpointing = gradient_checkpointing
        self.attn_implementation = attn_implementation
        self.logprob_chunk_size = logprob_chunk_size
        self.fused_adamw = fused_adamw
        self.seed = seed_or_global(seed)
        self.policy: torch.nn.Module | None = None
        # The tokenizer is cheap and needed before the model (e.g. to validate data), so load it now.
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.compile_backend = compile_backend(compile)
        self.microbatch_max_tokens = microbatch_max_tokens
        self.sdpa_backends = list(sdpa_backends) if sdpa_backends else None
        self.tokenizer = load_tokenizer(tokenizer_name_or_path or model_name_or_path)
        # Bumped after every optimizer update that changed the weights; a rollout engine with its own
        # copy of the weights compares it to the version it last received (`RolloutModule.sync_engine`).
        self.policy_version = 0
        self.max_consecutive_skipped_updates = max_consecutive_skipped_updates
        self.skipped_updates = 0  # updates skipped for a non-finite loss or gradient norm, in all
        self.consecutive_skipped_updates = 0  # ... and in a row, up to now
        self.lora = as_config(LoRAConfig, lora) if lora is not None else None

    def save_hyperparameters(self, *args, **kwargs) -> None:
        """Lightning's, with every option group (a dataclass, e.g. `lora`) kept as a plain mapping: the
        logger's hparams.yaml stays plain YAML and checkpoints load with `weights_only=True`; the
        constructors accept the mappings back (`as_config`)."""
        kwargs.setdefault("frame", inspect.currentframe().f_back)
        super().save_hyperparameters(*args, **kwargs)
        for hparams in (self._hparams, self._hparams_initial):
            for name, value in hparams.items():
                if dataclasses.is_dataclass(value) and not isinstance(value, type):
                    hparams[name] = dataclasses.asdict(value)

    # ----------------------------------------------------------------------------- model, optim
    def configure_model(self) -> None:
        if self.policy is not None:  # Lightning may call this more than once (e.g. fit then validate)
            return
        if self.device_mesh is not None and self.compile_backend:
            raise ValueError(compile_under_fsdp2_error(self.compile_backend))
        if self.device_mesh is not None and self.lora is not None:
            raise ValueError("model.init_args.lora: LoRA under FSDP2 (ModelParallelStrategy) is not supported; "
                             "use DDP (strategy: ddp), whose replicas an adapter-sized model fits anyway")
        self.policy = load_causal_lm(
            self.model_name_or_path, self.dtype_name, self.attn_implementation, self.gradient_checkpointing
        )
        if self.lora is not None:
            add_lora(self.policy, self.lora, self.seed)
        if self.compile_backend:
            compile_decoder_layers(self.policy, self.compile_backend)
        if self.device_mesh is not None:  # ModelParallelStrategy: FSDP2 (see r1_lightning.distributed)
            shard_policy(self.policy, self.device_mesh, resolve_dtype(self.dtype_name))
        self.policy.train()

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        fused = self.fused_adamw and all(p.is_cuda for p in params)
        optimizer = torch.optim.AdamW(
            params, lr=self.learning_rate, betas=self.betas, eps=self.adam_eps,
            weight_decay=self.weight_decay, fused=fused or None,
        )
        total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else 0
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_multiplier(step, self.warmup_steps, total, self.lr_schedule, self.min_lr_ratio),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_update(self, loss: torch.Tensor | None = None) -> dict[str, float]:
        """Check, clip, step, zero the gradients and advance the schedule: one update after the
        caller's `manual_backward` calls have accumulated gradients. `loss` is the update's loss
        (the sum of its microbatch losses, detached). Returns metrics for logging.

        A non-finite `loss` or gradient norm skips the update: the gradients are dropped and AdamW
        steps with none, which leaves the weights and the moments as they were (it only visits
        parameters that have a gradient). Lightning still counts the step, and the LR scheduler
        steps, as they do when mixed precision's GradScaler skips a step: the global step, the
        schedule, `max_steps` and the step-derived sampling seeds stay aligned with the updates
        attempted, so a run with a skip resumes and decays like any other. `policy_version` does
        not advance (the weights did not change, so the engine needs no sync). Skips are counted
        (`train/skipped_updates`, cumulative, saved in checkpoints), and the run stops with an
        error at `max_consecutive_skipped_updates` in a row. The check costs no extra device-to-host
        read: the gradient norm was read back for logging anyway, now together with the loss.
        """
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        reshard(self.policy)  # under FSDP2 the optimizer holds the shards, and their gradients
        with_grad = [p for p in self.policy.parameters() if p.grad is not None]
        grad_norm = (total_norm(torch.nn.utils.get_total_norm([p.grad for p in with_grad])) if with_grad
                     else torch.zeros((), device=self.device))
        loss = grad_norm if loss is None else loss
        grad_norm_value, loss_value = torch.stack([grad_norm.float(), loss.detach().float().to(grad_norm.device)]).tolist()
        finite = math.isfinite(grad_norm_value) and math.isfinite(loss_value)
        finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)  # ranks must agree
        lr = optimizer.param_groups[0]["lr"]
        if finite:
            self.consecutive_skipped_updates = 0
            if self.max_grad_norm and self.max_grad_norm > 0:
                self.clip_to_max_norm(optimizer, with_grad, grad_norm)
        else:
            self.skipped_updates += 1
            self.consecutive_skipped_updates += 1
            optimizer.zero_grad(set_to_none=True)
            if self.consecutive_skipped_updates >= self.max_consecutive_skipped_updates:
                raise RuntimeError(
                    f"model.init_args.max_consecutive_skipped_updates: {self.consecutive_skipped_updates} optimizer "
                    f"updates in a row had a non-finite loss or gradient norm (at step {self.global_step}: loss "
                    f"{loss_value}, grad_norm {grad_norm_value}), so none of them changed the weights. Lower the "
                    f"learning rate or check the rewards and data"
                )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        gather_full_weights(self.policy)  # the updated ones
        if finite:
            self.policy_version += 1
        return {"train/grad_norm": grad_norm_value, "train/lr": lr, "train/skipped_updates": float(self.skipped_updates)}

    def clip_to_max_norm(self, optimizer, with_grad: list[torch.Tensor], grad_norm: torch.Tensor) -> None:
        """Scale the gradients to a global norm of at most `max_grad_norm`, as `clip_grad_norm_`
        does, with the norm `optimizer_update` has already computed. Lightning's own
        `clip_gradients` refuses the fused AdamW under bf16-mixed (it guards against unscaling
        twice, which only fp16's GradScaler does), so it is kept only where a GradScaler exists."""
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:  # fp16: unscale first
            self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
        elif with_grad:
            torch.nn.utils.clip_grads_with_norm_(with_grad, self.max_grad_norm, grad_norm)

    # ----------------------------------------------------------------------------- data parallel
    def backward_microbatch(self, loss: torch.Tensor, ends_update: bool) -> None:
        """`manual_backward` of one microbatch of an update. Under DDP, only the update's last
        microbatch all-reduces the gradients (DDP's `no_sync` before it: the gradients accumulate
        locally and the last backward averages their sum over the ranks), so an update costs one
        all-reduce however many microbatches it has. Under FSDP2 the same, with a reduce-scatter
        (`set_gradient_sync`); the ranks may then run different numbers of microbatches."""
        set_gradient_sync(self.policy, ends_update)
        strategy = self.trainer.strategy
        local = not ends_update and isinstance(strategy, ParallelStrategy)
        with strategy.block_backward_sync() if local else contextlib.nullcontext():
            self.manual_backward(loss)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over the data-parallel ranks (itself on one process)."""
        if self.trainer.world_size == 1:
            return tensor
        return self.trainer.strategy.reduce(tensor.to(self.device), reduce_op="sum")

    def pool_across_ranks(self, items: list) -> list:
        """The concatenation of every rank's `items` (picklable), in rank order (`items` itself on
        one process). Every rank must call it."""
        if self.trainer.world_size == 1:
            return items
        gathered: list[list] = [[] for _ in range(self.trainer.world_size)]
        torch.distributed.all_gather_object(gathered, items)
        return [item for rank_items in gathered for item in rank_items]

    # ----------------------------------------------------------------------------- attention kernels
    def attention_kernels(self):
        """The context of every training forward and backward: PyTorch SDPA limited to
        `sdpa_backends` (nothing, when None). Backward must be inside it too, for the gradient
        checkpointing recomputes."""
        if not self.sdpa_backends:
            return contextlib.nullcontext()
        return sdpa_kernel([SDPA_BACKENDS[name] for name in self.sdpa_backends])

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        gather_full_weights(self.policy)  # under FSDP2: after a checkpoint restore or save, sharded

    def on_validation_start(self) -> None:
        gather_full_weights(self.policy)

    # ----------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["r1_lightning"] = {
            "policy_version": self.policy_version, "skipped_updates": self.skipped_updates,
            "consecutive_skipped_updates": self.consecutive_skipped_updates,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("r1_lightning", {})
        self.policy_version = state.get("policy_version", 0)
        self.skipped_updates = state.get("skipped_updates", 0)
        self.consecutive_skipped_updates = state.get("consecutive_skipped_updates", 0)

    def model_weights(self) -> dict[str, torch.Tensor]:
        """The policy's full weights under its Hugging Face names, LoRA adapters merged: what a rollout
        engine is sent and the export writes. Under FSDP2 every rank must call it (`full_state_dict`)."""
        state = full_state_dict(self.policy)
        return merged_state_dict(self.policy, state) if self.lora is not None else state

    def export_hf(self, folder: str, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write the policy and tokenizer as a Hugging Face folder (for vLLM and the hub); with LoRA,
        the merged model, and the adapter alone in its `adapter/` subfolder. `state_dict`: the full
        weights (`full_state_dict`, which every rank must gather) when the policy is sharded; the
        policy's own state otherwise."""
        if state_dict is None and is_sharded(self.policy):
            raise ValueError("export_hf of a sharded (FSDP2) policy needs its full_state_dict, gathered on every rank")
        if self.lora is not None:
            state_dict = self.model_weights()
            save_adapter(self.policy, self.lora, Path(folder) / ADAPTER_FOLDER, self.model_name_or_path)
        self.policy.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)

    # ----------------------------------------------------------------------------- helpers
    def log_metrics(self, metrics: dict[str, float | None], prog_bar: Sequence[str] = ()) -> None:
        """Log step metrics; a value of None is a metric this rank has no sample of (e.g. the length
        of correct answers when none was). On several ranks, each metric is the mean over the ranks
        that have it, in one all-reduce (every rank must pass the same names, in the same order)."""
        if self.trainer.world_size > 1:
            values = [float(metrics[name]) if metrics[name] is not None else 0.0 for name in metrics]
            present = [float(metrics[name] is not None) for name in metrics]
            reduced = self.all_reduce_sum(torch.tensor(values + present, dtype=torch.float64)).tolist()
            n = len(metrics)
            metrics = {name: s / c if c else None for name, s, c in zip(metrics, reduced[:n], reduced[n:])}
        for name, value in metrics.items():
            if value is not None:
                self.log(name, float(value), prog_bar=name in prog_bar, on_step=True, on_epoch=False)

    def peak_memory_metrics(self) -> dict[str, float]:
        if self.device.type != "cuda":
            return {}
        return {"perf/gpu_peak_memory_gb": torch.cuda.max_memory_allocated(self.device) / 2**30}
