"""The parts of a GRPO step that need no LightningModule: the groups of a step's
rollouts (DAPO's dynamic sampling and overlong penalty), its rollout metrics, the packing of graded
rollouts into typed `Microbatch`es with their loss divisors, and the update's metric sums.

`GRPOModule` (`grpo.py`) calls these with its settings (and, for the all-reduce, its ranks).
Shapes: N = rollouts, G = group size, B = sequences of a microbatch, L-1 = its packed length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    token_counts: list[int], world_size: int, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor],
) -> list[float]:
    """Per train batch (optimizer update), the `loss_divisor` of `token_mean`: the update's
    response-token count in the loss (`token_counts`, this rank's) over all ranks (at least 1),
    divided by the world size W, because DDP averages the ranks' gradients. The rank's loss is then
    its token sum x W / N, and their average is the single-process token mean over the N tokens of
    the global batch. (The other aggregations are means over sequences, which DDP's average already
    gets right: every rank has the same number of sequences.) One all-reduce on several ranks."""
    counts = torch.tensor([float(count) for count in token_counts], dtype=torch.float64)
    if world_size > 1:
        counts = all_reduce_sum(counts).cpu()
    return (counts.clamp(min=1) / world_size).tolist()


@dataclass(frozen=True)
class Microbatch:
    """One microbatch of a GRPO update, as `pack_microbatches` cuts it and the loss reads it.

    B = its sequences, L-1 = its packed length (the longest prompt + response, less one: inputs and
    labels are shifted).

    input_ids, labels: (B, L-1) long (`pack_prompt_and_output_ids`).
    response_mask: (B, L-1) bool, True on the response tokens in the loss (a sample left out of the
        loss, e.g. by DAPO's overlong filter, has none).
    advantages, raw_rewards: (B, 1) float32, per sequence.
    loss_divisor: what `grpo_microbatch_loss` divides this microbatch's aggregated loss by, so that
        the update's microbatch losses sum to its loss (see there): the update's sequences / B for
        the sequence means, the update's response tokens (over ranks, / world size) for `token_mean`.
    ends_update: the update's last microbatch (the optimizer steps after it).
    rollout_log_probs: (B, L-1) float32, the engine's log-probs of the response tokens (0
        elsewhere), or None when the engine returned none.
    has_rollout_log_probs: (B, 1) bool, the rows that have them (all with TIS; a sample for the
        engine/trainer gap check), or None.
    old_log_probs, ref_log_probs: (B, L-1) float32, the log-probs under the policy before the
        update and under the KL reference, when the loss needs them (`GRPOModule` adds them on the
        device); None otherwise.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    response_mask: torch.Tensor
    advantages: torch.Tensor
    raw_rewards: torch.Tensor
    loss_divisor: float
    ends_update: bool
    rollout_log_probs: torch.Tensor | None = None
    has_rollout_log_probs: torch.Tensor | None = None
    old_log_probs: torch.Tensor | None = None
    ref_log_probs: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Microbatch:
        """A copy with every tensor on `device`."""
        return dataclasses.replace(self, **{
            field.name: value.to(device) for field in dataclasses.fields(self)
            if isinstance(value := getattr(self, field.name), torch.Tensor)
        })


def pack_microbatches(
    completions: Sequence[Completion],
    advantages: torch.Tensor,
    raw_rewards: torch.Tensor,
    in_loss: torch.Tensor,
    token_mean_divisors: Sequence[float] | None,
    *,
    train_batch_size: int,
    sequences_per_microbatch: int,
    microbatch_max_tokens: int | None,
    pad_token_id: int,
    tis_cap: float | None,
) -> list[Microbatch]:
    """Split the rollouts into train batches (one optimizer update each), sort each by length
    (less padding; every loss aggregation here is invariant to the order within a train batch)
    and cut it into `Microbatch`es padded to their own longest sequence: `sequences_per_microbatch`
    sequences each, or as many as fit `microbatch_max_tokens`.

    advantages, raw_rewards (N,): per rollout. in_loss (N,) bool: False zeroes a sample's response
    mask (no loss, no token in the token count). token_mean_divisors: for `token_mean`, one per
    train batch (`token_mean_divisors`), every microbatch's `loss_divisor`; None for the sequence
    means, whose divisor is the train batch size / the microbatch's sequences. CPU tensors, in
    update order.
    """
    microbatches = []
    for update, start in enumerate(range(0, len(completions), train_batch_size)):
        train_batch = completions[start : start + train_batch_size]
        # packed rows are one shorter than the sequence (inputs and labels are shifted)
        lengths = [len(c.prompt_token_ids) + len(c.token_ids) - 1 for c in train_batch]
        groups = microbatch_groups(lengths, sequences_per_microbatch, microbatch_max_tokens)
        for position, group in enumerate(groups):
            indices = [start + i for i in group]
            divisor = train_batch_size / len(indices) if token_mean_divisors is None else token_mean_divisors[update]
            microbatches.append(_pack_microbatch(
                [completions[i] for i in indices], advantages[indices], raw_rewards[indices], in_loss[indices],
                divisor, position == len(groups) - 1, pad_token_id, tis_cap,
            ))
    return microbatches


def _pack_microbatch(
    rows: list[Completion], advantages: torch.Tensor, raw_rewards: torch.Tensor, in_loss: torch.Tensor,
    loss_divisor: float, ends_update: bool, pad_token_id: int, tis_cap: float | None,
) -> Microbatch:
    """The `Microbatch` of `rows` (advantages, raw_rewards, in_loss (B,): theirs)."""
    prompt_ids = [c.prompt_token_ids for c in rows]
    tokens = pack_prompt_and_output_ids(prompt_ids, [c.token_ids for c in rows], pad_token_id)
    engine_log_probs = [c.logprobs for c in rows]
    rollout_log_probs = has_rollout_log_probs = None
    if any(row is not None for row in engine_log_probs):
        rollout_log_probs = scatter_response_values(
            [row or [] for row in engine_log_probs], [len(p) for p in prompt_ids], tuple(tokens["labels"].shape)
        )
        has_rollout_log_probs = torch.tensor([[row is not None] for row in engine_log_probs])
        if tis_cap is not None and not has_rollout_log_probs.all():
            raise RuntimeError("tis_cap needs the engine's log-probs of every sample; the engine left some out")
    return Microbatch(
        input_ids=tokens["input_ids"], labels=tokens["labels"],
        response_mask=tokens["response_mask"] & in_loss.unsqueeze(1),
        advantages=advantages.unsqueeze(1).float(), raw_rewards=raw_rewards.unsqueeze(1).float(),
        loss_divisor=loss_divisor, ends_update=ends_update,
        rollout_log_probs=rollout_log_probs, has_rollout_log_probs=has_rollout_log_probs,
    )


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
