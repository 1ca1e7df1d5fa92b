"""Group-normalized advantages (GRPO): each response scored against the other samples of its prompt."""

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
