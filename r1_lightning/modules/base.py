"""What every r1-lightning module shares: the policy, its tokenizer, AdamW + schedule, and one
optimizer update done by hand (manual optimization), plus the engine plumbing of the modules
that sample (GRPO, expert iteration, evaluation)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.strategies import ParallelStrategy
from torch.nn.attention import SDPBackend, sdpa_kernel

from r1_lightning.callbacks.weight_sync import RolloutWeightSync
from r1_lightning.evaluation import grade_completions, summarize, val_metrics, write_eval_outputs
from r1_lightning.models import compile_decoder_layers, load_causal_lm, load_tokenizer
from r1_lightning.rollout import Completion, HFEngine, RolloutEngine, SamplingConfig

RANK_SEED_STRIDE = 1_000_000_007  # far beyond any step count, so no two (rank, step) share a seed
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
        compile: torch.compile the decoder layers (True: inductor; or a backend name, e.g.
            "aot_eager"). An option to measure, not a default.
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
            exactly what the straight run did).
        max_consecutive_skipped_updates: stop with an error when this many optimizer updates in a
            row had a non-finite loss or gradient norm (each is skipped, see `optimizer_update`).
            10: more than the 8 updates the off-policy ablation takes from one rollout batch, so a
            single poisoned batch does not end a run, while a cause that persists (weights already
            broken, a learning rate far too high) fails every update and stops the run within 10.
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
        seed: int = 0,
        tokenizer_name_or_path: str | None = None,
        compile: bool | str = False,
        microbatch_max_tokens: int | None = None,
        sdpa_backends: list[str] | None = None,
        max_consecutive_skipped_updates: int = 10,
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
        self.seed = seed
        self.policy: torch.nn.Module | None = None
        # The tokenizer is cheap and needed before the model (e.g. to validate data), so load it now.
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.compile_backend = ("inductor" if compile is True else compile) or None
        self.microbatch_max_tokens = microbatch_max_tokens
        self.sdpa_backends = list(sdpa_backends) if sdpa_backends else None
        self.tokenizer = load_tokenizer(tokenizer_name_or_path or model_name_or_path)
        # Bumped after every optimizer update that changed the weights; a rollout engine with its own
        # copy of the weights compares it to the version it last received (`RolloutModule.sync_engine`).
        self.policy_version = 0
        self.max_consecutive_skipped_updates = max_consecutive_skipped_updates
        self.skipped_updates = 0  # updates skipped for a non-finite loss or gradient norm, in all
        self.consecutive_skipped_updates = 0  # ... and in a row, up to now

    # ----------------------------------------------------------------------------- model, optim
    def configure_model(self) -> None:
        if self.policy is not None:  # Lightning may call this more than once (e.g. fit then validate)
            return
        self.policy = load_causal_lm(
            self.model_name_or_path, self.dtype_name, self.attn_implementation, self.gradient_checkpointing
        )
        if self.compile_backend:
            compile_decoder_layers(self.policy, self.compile_backend)
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
        grads = [p.grad for p in self.policy.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        loss = grad_norm if loss is None else loss
        grad_norm_value, loss_value = torch.stack([grad_norm.float(), loss.detach().float().to(grad_norm.device)]).tolist()
        finite = math.isfinite(grad_norm_value) and math.isfinite(loss_value)
        finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)  # ranks must agree
        lr = optimizer.param_groups[0]["lr"]
        if finite:
            self.consecutive_skipped_updates = 0
            if self.max_grad_norm and self.max_grad_norm > 0:
                self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
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
        if finite:
            self.policy_version += 1
        return {"train/grad_norm": grad_norm_value, "train/lr": lr, "train/skipped_updates": float(self.skipped_updates)}

    # ----------------------------------------------------------------------------- data parallel
    def backward_microbatch(self, loss: torch.Tensor, ends_update: bool) -> None:
        """`manual_backward` of one microbatch of an update. Under DDP, only the update's last
        microbatch all-reduces the gradients (DDP's `no_sync` before it: the gradients accumulate
        locally and the last backward averages their sum over the ranks), so an update costs one
        all-reduce however many microbatches it has."""
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

    def export_hf(self, folder: str) -> None:
        """Write the policy and tokenizer as a Hugging Face folder (for vLLM and the hub)."""
        self.policy.save_pretrained(folder, safe_serialization=True)
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


class RolloutModule(PolicyModule):
    """A policy module that samples with a rollout engine and grades with a reward function.

    The engine holds the policy's current weights before every rollout and every evaluation, and
    after a checkpoint restore: the module brings its own `RolloutWeightSync` (`configure_callbacks`,
    so no config can leave it out, and one a config lists is replaced by it), `MathEvalCallback`
    syncs before it evaluates, and `rollout` refuses to sample from weights the engine does not hold.

    Sampling settings are named `<use>_<SamplingConfig field>` and built once into a
    `SamplingConfig` per use: `sampling_*` (the CS336 names) into `self.sampling`, for the training
    rollouts of GRPO and expert iteration (`n` = their `group_size`, seeded per step by
    `step_sampling`); `eval_*` into `self.eval_sampling`, for evaluation (one greedy answer by default).

    Args (beyond `PolicyModule`'s):
        engine: the `RolloutEngine` (default `HFEngine()`: generation on the policy itself).
        reward_fn: a registered reward function ("r1_zero", "question_only", "gsm8k"), an import
            path `package.module.fn`, or a weighted combination {name: weight}.
        stop: stop strings, kept in the text (both uses).
        sampling_temperature, sampling_top_p, sampling_min_tokens, sampling_max_tokens: training rollouts.
        eval_temperature, eval_max_tokens: evaluation.
        eval_output_dir: where `validate` writes its jsonl and summary (default: the log folder).
    """

    def __init__(
        self,
        model_name_or_path: str,
        engine: RolloutEngine | None = None,
        reward_fn: str | dict[str, float] = "r1_zero",
        stop: list[str] | None = None,
        sampling_temperature: float = 1.0,
        sampling_top_p: float = 1.0,
        sampling_min_tokens: int = 4,
        sampling_max_tokens: int = 1024,
        eval_temperature: float = 0.0,
        eval_max_tokens: int = 1024,
        eval_output_dir: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(model_name_or_path, **kwargs)
        from r1_lightning.rewards import resolve_reward_fn

        self.reward_fn = resolve_reward_fn(reward_fn)
        self.engine = engine if engine is not None else HFEngine()
        self.stop = list(stop) if stop is not None else ["</answer>"]
        try:
            self.sampling = SamplingConfig(
                temperature=sampling_temperature, top_p=sampling_top_p, min_tokens=sampling_min_tokens,
                max_tokens=sampling_max_tokens, stop=self.stop,
            )
            self.eval_sampling = SamplingConfig(
                temperature=eval_temperature, max_tokens=eval_max_tokens, min_tokens=0, stop=self.stop,
                seed=seed_for_eval(self.seed),
            )
        except ValueError as error:  # name the module's options, not the dataclass's fields
            raise ValueError(f"{type(self).__name__} sampling_* / eval_* options: {error}") from None
        self.eval_output_dir = eval_output_dir
        self._eval_records: list[dict] = []
        # The `policy_version` whose weights the engine holds; None: not known to be any (a fresh
        # engine, or a run that may have restored a checkpoint into the policy).
        self.engine_version: int | None = None

    def configure_model(self) -> None:
        already = self.policy is not None
        super().configure_model()
        if not already:
            self.engine.attach(self.policy, self.tokenizer)

    def configure_callbacks(self) -> list[L.Callback]:
        return [RolloutWeightSync()]

    def setup(self, stage: str) -> None:
        # The grader's worker processes take seconds to start: start them now, not in the first step.
        from r1_lightning.rewards import start_grader

        start_grader()

    def grade(self, batch: dict, completions: list[Completion]) -> tuple[list[dict], dict[str, float]]:
        """Grade each completion against its prompt's ground truth (one record per completion) and
        return the grading metrics: its seconds, and how many answers the grader scored 0 because
        they ran out of time (`train/grader_timeouts`: never silent, a rise means a policy found
        expressions that are slow to grade)."""
        from r1_lightning.rewards import grader_timeouts

        start, timeouts_before = time.perf_counter(), grader_timeouts()
        records = grade_completions(batch, completions, self.reward_fn)
        return records, {
            "perf/reward_seconds": time.perf_counter() - start,
            "train/grader_timeouts": float(grader_timeouts() - timeouts_before),
        }

    def sync_engine(self) -> float | None:
        """Push the policy's weights into the engine (in place, no disk round trip) unless it holds
        them already or generates with the policy itself. Returns the seconds it took, or None."""
        if self.engine.shares_policy_weights or self.engine_version == self.policy_version:
            return None
        start = time.perf_counter()
        self.engine.load_weights(self.policy.named_parameters())
        self.engine_version = self.policy_version
        return time.perf_counter() - start

    def set_group_size(self, group_size: int) -> None:
        """Training rollouts sample `group_size` answers per prompt (GRPO's group, EI's candidates)."""
        self.group_size = group_size
        self.sampling = dataclasses.replace(self.sampling, n=group_size)

    def step_sampling(self, **overrides) -> SamplingConfig:
        """`self.sampling` seeded by the global step and the rank (`step_seed`)."""
        return dataclasses.replace(self.sampling, seed=self.step_seed(), **overrides)

    def step_seed(self) -> int:
        """The seed of this step's rollouts: seed + global step (a resumed run samples what the
        straight run did), plus a large stride per data-parallel rank. The ranks sample different
        prompts, but with one seed they would draw the same random numbers for them, so the answers
        of prompt i on every rank would be correlated (same uniforms through similar distributions);
        the stride makes the ranks' streams independent and is the same on resume at the same world
        size. Rank 0 keeps seed + step, so one process samples as before."""
        return self.seed + self.global_step + RANK_SEED_STRIDE * self.global_rank

    def rollout(self, prompts: Sequence[str], sampling: SamplingConfig) -> tuple[list[Completion], dict[str, float]]:
        """Sample with the engine; return completions and throughput metrics."""
        if not self.engine.shares_policy_weights and self.engine_version != self.policy_version:
            raise RuntimeError(
                f"the rollout engine holds policy version {self.engine_version}, the policy is at version "
                f"{self.policy_version}: call sync_engine() before sampling (RolloutWeightSync does in a Trainer)"
            )
        start = time.perf_counter()
        completions = self.engine.generate(list(prompts), sampling)
        seconds = time.perf_counter() - start
        n_tokens = sum(len(c.token_ids) for c in completions)
        return completions, {"perf/rollout_seconds": seconds, "perf/rollout_tokens_per_s": n_tokens / max(seconds, 1e-9)}

    # ----------------------------------------------------------------------------- evaluation
    def evaluate_examples(self, batch: dict) -> list[dict]:
        """Generate greedily for a batch of prompts and grade each answer: one record per example."""
        completions, _ = self.rollout(batch["prompt"], self.eval_sampling)
        return grade_completions(batch, completions, self.reward_fn)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_records.extend(self.evaluate_examples(batch))

    def on_validation_epoch_start(self) -> None:
        self._eval_records = []

    def on_validation_epoch_end(self) -> None:
        # On several ranks each graded its shard (Lightning's distributed sampler): pool them, and
        # write once. The sampler repeats a few examples to even the shards out when the set does
        # not divide by the world size; they are graded and counted twice.
        records = self.pool_across_ranks(self._eval_records)
        log_dir = self.trainer.log_dir  # on every rank: a collective (a broadcast)
        folder = self.eval_output_dir or (log_dir or ".")
        tag = f"step_{self.global_step}"
        summary = write_eval_outputs(records, folder, tag) if self.trainer.is_global_zero else summarize(records)
        # the same pooled values on every rank: the sync averages equal numbers (and silences
        # Lightning's warning about unsynced epoch-level metrics)
        self.log_dict(val_metrics(summary), sync_dist=self.trainer.world_size > 1)


def seed_for_eval(seed: int) -> int:
    # Evaluation is greedy by default; a fixed seed keeps sampled evaluation reproducible too.
    return seed + 1_000_003
