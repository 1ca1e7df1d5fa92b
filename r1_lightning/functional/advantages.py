"""Group-normalized advantages (GRPO): each response scored against the other samples of its prompt."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def compute_group_normalized_rewards(
    reward_fn: Callable[[str, str], dict[str, float]],
    rollout_responses: Sequence[str],
    repeated_ground_truths: Sequence[str],
    group_size: int,
    advantage_eps: float,
    normalize_by_std: bool,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Reward each response and normalize within its group of `group_size` consecutive responses.

    advantage = reward - group mean, divided by (group sample std (unbiased) + advantage_eps)
    when `normalize_by_std` (a group of equal rewards gets advantage 0, not NaN).

    Returns:
        advantages (N,) float32, raw_rewards (N,) float32, and metadata: reward mean/std/min/max
        and the mean of every other numeric key the reward function returns (e.g. format_reward).
    """
    n = len(rollout_responses)
    if n != len(repeated_ground_truths):
        raise ValueError(f"got {n} responses but {len(repeated_ground_truths)} ground truths")
    if group_size < 1 or n % group_size:
        raise ValueError(f"{n} responses cannot be split into groups of group_size={group_size}")
    if normalize_by_std and group_size < 2:
        raise ValueError("normalize_by_std needs group_size >= 2 (the sample std of one reward is undefined)")
    scores = [
        reward_fn(response, truth) for response, truth in zip(rollout_responses, repeated_ground_truths)
    ]
    raw_rewards = torch.tensor([float(s["reward"]) for s in scores], dtype=torch.float32)
    groups = raw_rewards.view(-1, group_size)
    advantages = groups - groups.mean(dim=1, keepdim=True)
    if normalize_by_std:
        advantages = advantages / (groups.std(dim=1, keepdim=True) + advantage_eps)
    metadata = {
        "reward_mean": raw_rewards.mean().item(),
        "reward_std": raw_rewards.std().item() if n > 1 else 0.0,
        "reward_min": raw_rewards.min().item(),
        "reward_max": raw_rewards.max().item(),
    }
    for key in scores[0] if scores else ():
        if key != "reward" and isinstance(scores[0][key], (int, float)):
            metadata[f"{key}_mean"] = sum(float(s[key]) for s in scores) / n
    return advantages.reshape(-1), raw_rewards, metadata
