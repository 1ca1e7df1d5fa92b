"""The parts of a GRPO step that need no LightningModule: batch-size checks, the groups of a step's
rollouts (DAPO's dynamic sampling and overlong penalty), its rollout metrics, the packing of graded
rollouts into microbatches with their `token_mean` divisors, and the update's metric sums.

`GRPOModule` (`grpo.py`) calls these with its settings (and, for the all-reduce, its ranks).
Shapes: N = rollouts, G = group size, B = sequences of a microbatch, L-1 = its packed length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from r1_lightning.functional import (
    microbatch_groups,
    overlong_penalty,
    pack_prompt_and_output_ids,
    scatter_response_values,
    varied_groups,
)
from r1_lightning.rollout import Completion


def check_batch_sizes(rollout: int, group: int, train: int, accum: int, epochs: int) -> None:
    """Raise a one-line `ValueError` unless the GRPO batch sizes divide each other."""
    def fail(message: str):
        raise ValueError(f"GRPOModule: {message}")

    if min(rollout, group, train, accum, epochs) < 1:
        fail("batch sizes, group_size, epochs and gradient_accumulation_steps must be >= 1")
    if rollout % group:
        fail(f"rollout_batch_size ({rollout}) must be divisible by group_size ({group})")
    if rollout % train:
        fail(f"rollout_batch_size ({rollout}) must be divisible by train_batch_size ({train})")
    if train % accum:
        fail(f"train_batch_size ({train}) must be divisible by gradient_accumulation_steps ({accum})")


class RolloutGroup(NamedTuple):
    """One question's `group_size` rollouts: whether their rewards vary, and their completions,
    grading records and rewards (G,)."""

    varied: bool
    completions: list[Completion]
    records: list[dict]
    rewards: torch.Tensor


def split_groups(
    completions: list[Completion], records: list[dict], rewards: torch.Tensor, group_size: int
) -> list[RolloutGroup]:
    """Prompt-major rollouts (N of each, rewards (N,)) -> their N / `group_size` groups, in order."""
    n = group_size
    return [RolloutGroup(bool(vary), completions[g * n : (g + 1) * n], records[g * n : (g + 1) * n],
                         rewards[g * n : (g + 1) * n]) for g, vary in enumerate(varied_groups(rewards, n))]


def dynamic_sampling_choice(groups: list[RolloutGroup], per_step: int) -> tuple[list[RolloutGroup], dict[str, float]]:
    """DAPO's dynamic sampling: the first `per_step` groups with varied rewards, then groups without
    variance for any still missing (sampling order otherwise), and the metrics of the choice."""
    metrics = {
        "train/frac_groups_zero_std_before": sum(not group.varied for group in groups[:per_step]) / per_step,
        "train/dynamic_sampling_prompts": float(len(groups)),
    }
    return ([group for group in groups if group.varied] + [group for group in groups if not group.varied])[:per_step], metrics


def join_groups(groups: list[RolloutGroup]) -> tuple[list[Completion], list[dict], torch.Tensor]:
    """Groups -> their completions, records and rewards (N,), flat and in order."""
    return ([c for group in groups for c in group.completions], [r for group in groups for r in group.records],
            torch.cat([group.rewards for group in groups]))


def overlong_penalties(
    completions: Sequence[Completion], max_tokens: int, buffer: int | None, penalty: float | None
) -> torch.Tensor:
    """(N,) DAPO's soft overlong penalty of each completion (`functional.overlong_penalty`); zeros
    when `penalty` is None (off)."""
    if penalty is None:
        return torch.zeros(len(completions))
    lengths = torch.tensor([len(c.token_ids) for c in completions])
    return overlong_penalty(lengths, max_tokens, buffer, penalty)


def rollout_metrics(
    records: list[dict], raw_rewards: torch.Tensor, advantages: torch.Tensor, group_std: torch.Tensor
) -> dict[str, float | None]:
    """The `train/` statistics of one step's graded rollouts (records of `grade_completions`)."""
    lengths = torch.tensor([r["response_tokens"] for r in records], dtype=torch.float32)
    correct = torch.tensor([r["answer_reward"] >= 1.0 for r in records])
    n = len(records)
    metrics = {
        "train/reward_mean": float(raw_rewards.mean()),
        "train/reward_std": float(raw_rewards.std()) if n > 1 else 0.0,
        "train/format_reward": sum(r["format_reward"] for r in records) / n,
        "train/answer_reward": sum(r["answer_reward"] for r in records) / n,
        "train/advantage_mean": float(advantages.mean()),
        "train/advantage_abs_mean": float(advantages.abs().mean()),
        "train/frac_groups_zero_std": float((group_std == 0).float().mean()),
        "train/response_length": float(lengths.mean()),
        "train/truncated_fraction": sum(r["finish_reason"] == "length" for r in records) / n,
    }
    # None when this step (or rank) has no such answer: every rank logs the same names
    metrics["train/response_length_correct"] = float(lengths[correct].mean()) if correct.any() else None
    metrics["train/response_length_incorrect"] = float(lengths[~correct].mean()) if (~correct).any() else None
    return metrics


def train_batch_token_counts(
    completions: Sequence[Completion], in_loss: torch.Tensor, train_batch_size: int
) -> list[int]:
    """Per train batch (consecutive `train_batch_size` rollouts), its response tokens in the loss
    (`in_loss` (N,) bool: the samples that count)."""
    return [sum(len(c.token_ids) for c, kept in zip(completions[s : s + train_batch_size],
                                                    in_loss[s : s + train_batch_size]) if kept)
            for s in range(0, len(completions), train_batch_size)]


def token_mean_divisors(
    token_counts: list[int], loss_agg: str, world_size: int,
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor],
) -> list[float]:
    """Per train batch (optimizer update), what `token_mean` divides its masked loss sum by:
    the update's response-token count in the loss (`token_counts`, this rank's) over all ranks
    (at least 1), divided by the world size W,
    because DDP averages the ranks' gradients. The rank's loss is then its token sum x W / N,
    and their average is the single-process token mean over the N tokens of the global batch.
    (The other aggregations are means over sequences, which DDP's average already gets right:
    every rank has the same number of sequences.) One all-reduce, for token_mean only."""
    counts = torch.tensor([float(count) for count in token_counts], dtype=torch.float64)
    if loss_agg == "token_mean" and world_size > 1:
        counts = all_reduce_sum(counts).cpu()
    return (counts.clamp(min=1) / world_size).tolist()


def pack_microbatches(
    completions: Sequence[Completion],
    advantages: torch.Tensor,
    raw_rewards: torch.Tensor,
    in_loss: torch.Tensor,
    token_mean_divisors: Sequence[float],
    *,
    train_batch_size: int,
    sequences_per_microbatch: int,
    microbatch_max_tokens: int | None,
    pad_token_id: int,
    tis_cap: float | None,
) -> list[dict]:
    """Split the rollouts into train batches (one optimizer update each), sort each by length
    (less padding; every loss aggregation here is invariant to the order within a train batch)
    and cut it into microbatches padded to their own longest sequence: `sequences_per_microbatch`
    sequences each, or as many as fit `microbatch_max_tokens`.

    advantages, raw_rewards (N,): per rollout. in_loss (N,) bool: False zeroes a sample's response
    mask (no loss, no token in the token count). token_mean_divisors: one per train batch, what
    `token_mean` divides that update's loss sum by.

    Each microbatch is `pack_prompt_and_output_ids`'s (B, L-1) `input_ids` / `labels` /
    `response_mask`, with `advantages` and `raw_rewards` (B, 1) float, `loss_divisor` (train batch
    size / B: the microbatch losses then sum to the train batch's loss however it was cut),
    `ends_update`, `token_mean_divisor`, and where the engine returned log-probs
    `rollout_log_probs` (B, L-1) and `has_rollout_log_probs` (B, 1) bool. CPU tensors, in update order.
    """
    microbatches = []
    for start, token_mean_divisor in zip(range(0, len(completions), train_batch_size), token_mean_divisors):
        train_batch = completions[start : start + train_batch_size]
        # packed rows are one shorter than the sequence (inputs and labels are shifted)
        lengths = [len(c.prompt_token_ids) + len(c.token_ids) - 1 for c in train_batch]
        groups = microbatch_groups(lengths, sequences_per_microbatch, microbatch_max_tokens)
        for position, group in enumerate(groups):
            indices = [start + i for i in group]
            rows = [completions[i] for i in indices]
            prompt_ids = [c.prompt_token_ids for c in rows]
            microbatch = pack_prompt_and_output_ids(prompt_ids, [c.token_ids for c in rows], pad_token_id)
            microbatch["response_mask"] = microbatch["response_mask"] & in_loss[indices].unsqueeze(1)
            microbatch["advantages"] = advantages[indices].unsqueeze(1).float()
            microbatch["raw_rewards"] = raw_rewards[indices].unsqueeze(1).float()
            microbatch["token_mean_divisor"] = token_mean_divisor
            microbatch["loss_divisor"] = train_batch_size / len(rows)
            microbatch["ends_update"] = position == len(groups) - 1
            engine_log_probs = [c.logprobs for c in rows]
            if any(row is not None for row in engine_log_probs):
                microbatch["rollout_log_probs"] = scatter_response_values(
                    [row or [] for row in engine_log_probs], [len(p) for p in prompt_ids],
                    tuple(microbatch["labels"].shape),
                )
                # (B, 1): the rows that have them (all with TIS; a sample for the sync check)
                microbatch["has_rollout_log_probs"] = torch.tensor([[row is not None] for row in engine_log_probs])
                if tis_cap is not None and not microbatch["has_rollout_log_probs"].all():
                    raise RuntimeError("tis_cap needs the engine's log-probs of every sample; the engine left some out")
            microbatches.append(microbatch)
    return microbatches


class MetricSums:
    """Weighted sums of an update's metrics, kept on the GPU until `means`: reading one back
    (`float(x)`, `mask.any()`) makes the CPU wait for the GPU, which then idles while the CPU
    queues the next microbatch."""

    def __init__(self) -> None:
        self.totals: dict[str, torch.Tensor] = {}
        self.weights: dict[str, torch.Tensor | float] = {}

    def add(self, name: str, value: torch.Tensor, weight: torch.Tensor | float = 1.0) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + value
        self.weights[name] = self.weights.get(name, 0.0) + weight

    def add_token_mean(self, name: str, values: torch.Tensor, mask: torch.Tensor) -> None:
        """values, mask (B, T): the mean of `values` over the tokens in `mask`."""
        self.add(name, (values * mask).sum(), mask.sum())

    def means(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> dict[str, float]:
        """Each metric's sum over its weight, both summed over all ranks by one `all_reduce_sum`
        (so token means are over the global batch): the one read-back of the update."""
        names = list(self.totals)
        sums_and_counts = torch.stack(
            [torch.as_tensor(self.totals[n], dtype=torch.float32, device=device) for n in names]
            + [torch.as_tensor(self.weights[n], dtype=torch.float32, device=device) for n in names]
        )
        reduced = all_reduce_sum(sums_and_counts).tolist()
        sums, counts = reduced[: len(names)], reduced[len(names) :]
        return {name: total / max(count, 1.0) for name, total, count in zip(names, sums, counts)}
