"""Advantages from rewards: each response scored against the other samples of its prompt.

Three estimators (`ADVANTAGE_ESTIMATORS`, chosen by `estimate_advantages`):
- "grpo": group-normalized (DeepSeekMath): reward - group mean, optionally / group std;
- "rloo": leave-one-out (Ahmadian et al. 2024): reward - the mean of the group's *other* rewards;
- "reinforce_pp": REINFORCE++ with a group baseline (Hu 2025): reward - group mean, then whitened
  over the whole batch — every rank's responses together under DDP/FSDP — instead of per group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def group_normalized_advantages(
    raw_rewards: torch.Tensor, group_size: int, advantage_eps: float, normalize_by_std: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalize rewards within groups of `group_size` consecutive responses (one prompt's samples).

    advantage = reward - group mean, divided by (group sample std (unbiased) + advantage_eps) when
    `normalize_by_std` (a group of equal rewards gets advantage 0, not NaN).

    raw_rewards (N,) -> advantages (N,) float32 and group_std (N / group_size,): each group's
    sample std (NaN for groups of one), for statistics such as the share of groups with no signal.
    """
    n = raw_rewards.numel()
    if group_size < 1 or n % group_size:
        raise ValueError(f"{n} responses cannot be split into groups of group_size={group_size}")
    if normalize_by_std and group_size < 2:
        raise ValueError("normalize_by_std needs group_size >= 2 (the sample std of one reward is undefined)")
    groups = raw_rewards.float().view(-1, group_size)
    group_std = groups.std(dim=1) if group_size > 1 else torch.full((n,), float("nan"))
    advantages = groups - groups.mean(dim=1, keepdim=True)
    if normalize_by_std:
        advantages = advantages / (group_std.unsqueeze(1) + advantage_eps)
    return advantages.reshape(-1), group_std


ADVANTAGE_ESTIMATORS = ("grpo", "rloo", "reinforce_pp")


def rloo_advantages(raw_rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024, "Back to Basics", eq. 5): A_i = r_i - 1/(G-1) · Σ_{j≠i} r_j.

    Each sample's baseline is the mean of the other G-1 samples of its prompt, which does not depend
    on the sample itself (so the estimate is unbiased); it equals G/(G-1) · (r_i - group mean).

    raw_rewards (N,) in groups of `group_size` consecutive responses -> advantages (N,) float32.
    """
    if group_size < 2 or raw_rewards.numel() % group_size:
        raise ValueError(f"RLOO needs groups of >= 2 responses; cannot split {raw_rewards.numel()} into "
                         f"groups of group_size={group_size}")
    groups = raw_rewards.float().view(-1, group_size)
    others_mean = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others_mean).reshape(-1)


def batch_whitened(
    values: torch.Tensor, eps: float, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """(values - mean) / (std + eps) with the mean and sample std (unbiased) of the whole batch.

    `all_reduce_sum` (e.g. a sum over DDP ranks) makes the batch every rank's values together: one
    reduction of (count, sum, sum of squares), so every rank divides by the same global statistics.

    values (N,) -> (N,) float32. A batch of one value (or of equal values) gets 0, not NaN.
    """
    values = values.float()
    moments = torch.stack([torch.tensor(float(values.numel()), device=values.device), values.sum(),
                           values.square().sum()]).double()
    if all_reduce_sum is not None:
        moments = all_reduce_sum(moments).to(values.device)
    count, total, squares = moments.unbind()
    mean = total / count
    variance = ((squares - count * mean * mean) / (count - 1)).clamp(min=0.0) if count > 1 else torch.zeros_like(mean)
    return ((values - mean) / (variance.sqrt() + eps)).float()


def check_advantage_estimator(estimator: str, group_size: int) -> None:
    """Raise ValueError unless `estimator` is one of `ADVANTAGE_ESTIMATORS` and fits `group_size`
    (RLOO's and REINFORCE++'s baselines come from the other samples of a group: at least 2)."""
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage_estimator {estimator!r}; choose one of {ADVANTAGE_ESTIMATORS}")
    if estimator != "grpo" and group_size < 2:
        raise ValueError(f"advantage_estimator={estimator!r} needs group_size >= 2 (a baseline from the other samples)")


def estimate_advantages(
    raw_rewards: torch.Tensor, group_size: int, estimator: str, advantage_eps: float, normalize_by_std: bool,
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The advantages of `estimator` (see the module docstring) and each group's reward std.

    `normalize_by_std` applies to "grpo" only (RLOO is never scaled; REINFORCE++ always divides by
    the batch's std); `all_reduce_sum` to "reinforce_pp" only (the others are per group).

    raw_rewards (N,) -> advantages (N,) float32 and group_std (N / group_size,) (see
    `group_normalized_advantages`).
    """
    check_advantage_estimator(estimator, group_size)
    centered, group_std = group_normalized_advantages(
        raw_rewards, group_size, advantage_eps, normalize_by_std and estimator == "grpo"
    )
    if estimator == "rloo":
        return rloo_advantages(raw_rewards, group_size), group_std
    if estimator == "reinforce_pp":
        return batch_whitened(centered, advantage_eps, all_reduce_sum), group_std
    return centered, group_std


def varied_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """rewards (N,) in groups of `group_size` consecutive responses -> (N / group_size,) bool: the
    groups whose rewards are not all equal, the only ones with a nonzero advantage (DAPO's dynamic
    sampling keeps these)."""
    groups = rewards.view(-1, group_size)
    return (groups != groups[:, :1]).any(dim=1)


def overlong_penalty(lengths: torch.Tensor, max_tokens: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment, a reward term for responses near the length limit.

    With L_max = `max_tokens` and L_cache = `buffer`, a response of |y| tokens gets
        0                                   if |y| <= L_max - L_cache
        ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
        -1                                  if |y| > L_max
    times `factor`: a penalty growing linearly through the last `buffer` tokens, so the policy
    learns to finish before the limit without a cliff between one token short of it and at it.

    lengths (N,) response token counts -> (N,) float32 penalties in [-factor, 0].
    """
    if not 1 <= buffer <= max_tokens:
        raise ValueError(f"overlong buffer must be in [1, max_tokens={max_tokens}], got {buffer}")
    excess = (lengths.float() - (max_tokens - buffer)) / buffer
    return -factor * excess.clamp(min=0.0, max=1.0)


def compute_group_normalized_rewards(
    reward_fn: Callable[[str, str], dict[str, float]],
    rollout_responses: Sequence[str],
    repeated_ground_truths: Sequence[str],
    group_size: int,
    advantage_eps: float,
    normalize_by_std: bool,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """CS336: reward each response, then `group_normalized_advantages`.

    Returns:
        advantages (N,) float32, raw_rewards (N,) float32, and metadata: reward mean/std/min/max
        and the mean of every other numeric key the reward function returns (e.g. format_reward).
    """
    n = len(rollout_responses)
    if n != len(repeated_ground_truths):
        raise ValueError(f"got {n} responses but {len(repeated_ground_truths)} ground truths")
    scores = [
        reward_fn(response, truth) for response, truth in zip(rollout_responses, repeated_ground_truths)
    ]
    raw_rewards = torch.tensor([float(s["reward"]) for s in scores], dtype=torch.float32)
    advantages, _ = group_normalized_advantages(raw_rewards, group_size, advantage_eps, normalize_by_std)
    metadata = {
        "reward_mean": raw_rewards.mean().item(),
        "reward_std": raw_rewards.std().item() if n > 1 else 0.0,
        "reward_min": raw_rewards.min().item(),
        "reward_max": raw_rewards.max().item(),
    }
    for key in scores[0] if scores else ():
        if key != "reward" and isinstance(scores[0][key], (int, float)):
            metadata[f"{key}_mean"] = sum(float(s[key]) for s in scores) / n
    return advantages, raw_rewards, metadata
