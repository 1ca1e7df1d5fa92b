"""`GRPOModule`'s option groups: frozen dataclasses, each checked once where it is declared (an
error names the group: `batching: ...`).

In a config each group is a nested mapping under `model.init_args` (jsonargparse builds the
dataclass), the loss's being `functional.PolicyLossConfig`:

    batching: {rollout_batch_size: 256, group_size: 8, train_batch_size: 256, gradient_accumulation_steps: 128}
    loss: {loss_type: grpo_clip, cliprange: 0.2}
    dapo: {overlong_filter: true, dynamic_sampling: true}
    async_rollouts: {enabled: true}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

Config = TypeVar("Config")


@dataclass(frozen=True)
class BatchConfig:
    """The batch sizes of a GRPO step, with their CS336 names and defaults.

    rollout_batch_size: rollouts per GRPO step (per rank under DDP), `group_size` per question.
    group_size: rollouts per question, the group whose rewards normalize the advantages.
    epochs_per_rollout_batch: passes over the step's rollouts.
    train_batch_size: rollouts per optimizer update (a divisor of rollout_batch_size).
    gradient_accumulation_steps: microbatches per update (a divisor of train_batch_size; the
        module's `microbatch_max_tokens`, when set, cuts by a token budget instead).
    """

    rollout_batch_size: int = 256
    group_size: int = 8
    epochs_per_rollout_batch: int = 1
    train_batch_size: int = 256
    gradient_accumulation_steps: int = 128

    def __post_init__(self) -> None:
        rollout, group, train, accum = (self.rollout_batch_size, self.group_size, self.train_batch_size,
                                        self.gradient_accumulation_steps)
        if min(rollout, group, train, accum, self.epochs_per_rollout_batch) < 1:
            raise ValueError("batching: the batch sizes, group_size, epochs_per_rollout_batch and "
                             "gradient_accumulation_steps must be >= 1")
        if rollout % group:
            raise ValueError(f"batching: rollout_batch_size ({rollout}) must be divisible by group_size ({group})")
        if rollout % train:
            raise ValueError(f"batching: rollout_batch_size ({rollout}) must be divisible by train_batch_size ({train})")
        if train % accum:
            raise ValueError(f"batching: train_batch_size ({train}) must be divisible by "
                             f"gradient_accumulation_steps ({accum})")

    @property
    def prompts_per_step(self) -> int:
        return self.rollout_batch_size // self.group_size

    @property
    def updates_per_rollout(self) -> int:
        """Optimizer updates per GRPO step (Lightning's global step counts these)."""
        return self.epochs_per_rollout_batch * (self.rollout_batch_size // self.train_batch_size)

    @property
    def sequences_per_microbatch(self) -> int:
        return self.train_batch_size // self.gradient_accumulation_steps


@dataclass(frozen=True)
class DAPOConfig:
    """DAPO's overlong handling and dynamic sampling (all off by default).

    overlong_filter: samples cut off at `sampling_max_tokens` (finish reason "length") get no
        loss, as if they had not been sampled, since their reward judges an unfinished answer. They
        still count in their group's advantage baseline. Exact for `token_mean` (they leave its
        token count); the seq_mean aggregations still divide by the train batch size. Logs
        `train/overlong_filtered` (the share dropped; `train/truncated_fraction` is the share cut off).
    overlong_penalty, overlong_buffer: the soft overlong punishment, added to each reward before the
        advantages: 0 up to `sampling_max_tokens - overlong_buffer` tokens, then linearly down to
        -`overlong_penalty` at the limit (`functional.overlong_penalty`; DAPO uses 1.0 and a buffer
        of 4,096 of 20,480 tokens). `train/reward_mean` stays the reward function's;
        `train/overlong_penalty` logs the mean penalty. The buffer must fit `sampling_max_tokens`
        (checked by `GRPOModule`, which knows it).
    dynamic_sampling, dynamic_sampling_max_rounds: train only on groups whose rewards (with any
        overlong penalty) vary, sampling further slices of `prompts_per_step` questions until
        `prompts_per_step` such groups are found, at most `dynamic_sampling_max_rounds` slices; then
        groups without variance fill what is still missing (a fixed batch shape, the same on every
        rank). The data batches then hold `dynamic_sampling_max_rounds x prompts_per_step`
        questions (see `grpo.py`). Logs `train/frac_groups_zero_std_before` (the first slice's share;
        the trained batch's is `train/frac_groups_zero_std`) and `train/dynamic_sampling_prompts`.
    """

    overlong_filter: bool = False
    overlong_penalty: float | None = None
    overlong_buffer: int | None = None
    dynamic_sampling: bool = False
    dynamic_sampling_max_rounds: int = 3

    def __post_init__(self) -> None:
        if self.overlong_penalty is not None and not (
            self.overlong_penalty >= 0 and self.overlong_buffer is not None and self.overlong_buffer >= 1
        ):
            raise ValueError(f"dapo: overlong_penalty ({self.overlong_penalty}) must be >= 0 and needs overlong_buffer "
                             f">= 1, got {self.overlong_buffer}")
        if self.dynamic_sampling_max_rounds < 1:
            raise ValueError(f"dapo: dynamic_sampling_max_rounds must be >= 1, got {self.dynamic_sampling_max_rounds}")

    @property
    def rounds(self) -> int:
        """Slices of `prompts_per_step` questions a step may sample."""
        return self.dynamic_sampling_max_rounds if self.dynamic_sampling else 1


@dataclass(frozen=True)
class AsyncRolloutConfig:
    """One-step-off asynchronous rollouts (`async_rollouts.py`; off by default).

    enabled: the engine samples the next step's batch while the policy trains on this one, with the
        weights before this step's updates, so every batch but the first is one step old
        (`train/policy_lag`: the optimizer updates in between, 1 with the CS336 batch sizes;
        `perf/rollout_wait_seconds`: what the step still waited for the engine). Needs an engine
        with its own weights (VLLMEngine, or HFEngine with own_weights). TIS corrects for the lag:
        the loss's `tis_cap` defaults to `ASYNC_TIS_CAP` unless `engine_logprobs` is false, and
        `train/engine_logprob_gap` then measures the lag plus any sync error. A checkpoint saves the
        batch sampled ahead (resume is exact).
    rollout_lag: 1 (one-step-off) or 0: the next batch is sampled after the update instead, which
        reproduces the synchronous run with the same `tis_cap` exactly (a check).
    warmup_steps: the first GRPO steps sampled synchronously (`train/policy_lag` 0) before one step
        off begins.
    """

    enabled: bool = False
    rollout_lag: int = 1
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.rollout_lag not in (0, 1):
            raise ValueError(f"async_rollouts: rollout_lag must be 0 or 1, got {self.rollout_lag}")
        if self.warmup_steps < 0 or (self.warmup_steps and not self.enabled):
            raise ValueError(f"async_rollouts: warmup_steps ({self.warmup_steps}) must be >= 0, and needs enabled true")



def as_config(config_class: type[Config], value: Config | dict) -> Config:
    """`value`, or the `config_class` built from a mapping of its fields (a checkpoint's hparams)."""
    return config_class(**value) if isinstance(value, dict) else value
