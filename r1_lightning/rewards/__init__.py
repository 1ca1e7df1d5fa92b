"""Verifiable math rewards: answer extraction, a time-bounded grader, and CS336-style reward functions."""

from r1_lightning.rewards.extract import (
    extract_answer_tag,
    extract_boxed_answer,
    extract_last_number,
    unwrap_boxed,
)
from r1_lightning.rewards.grader import grade, start_grader
from r1_lightning.rewards.normalize import normalize_answer
from r1_lightning.rewards.pool import GraderStats, grader_stats, grader_timeouts
from r1_lightning.rewards.reward_fns import (
    REWARD_FNS,
    CheckedRewardFn,
    RewardFn,
    combine_reward_fns,
    get_reward_fn,
    gsm8k_format_reward_fn,
    gsm8k_reward_fn,
    question_only_reward_fn,
    r1_zero_format_reward_fn,
    r1_zero_reward_fn,
    resolve_reward_fn,
)

__all__ = [
    "REWARD_FNS",
    "CheckedRewardFn",
    "GraderStats",
    "RewardFn",
    "combine_reward_fns",
    "extract_answer_tag",
    "extract_boxed_answer",
    "extract_last_number",
    "get_reward_fn",
    "grade",
    "grader_stats",
    "grader_timeouts",
    "gsm8k_format_reward_fn",
    "gsm8k_reward_fn",
    "normalize_answer",
    "question_only_reward_fn",
    "r1_zero_format_reward_fn",
    "r1_zero_reward_fn",
    "resolve_reward_fn",
    "start_grader",
    "unwrap_boxed",
]
