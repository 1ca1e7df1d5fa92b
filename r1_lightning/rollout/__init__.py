"""Rollout engines: what turns prompts into sampled completions for GRPO, expert iteration and
evaluation. `HFEngine` generates with the policy itself; `VLLMEngine` runs vLLM on its own GPU
(all of it in `rollout/vllm/`; vLLM itself is imported only when a `VLLMEngine` is attached)."""

from r1_lightning.rollout.base import Completion, RolloutEngine, SamplingConfig, TrainerRanks, WeightSyncError
from r1_lightning.rollout.hf import HFEngine
from r1_lightning.rollout.vllm import VLLMEngine

__all__ = ["Completion", "HFEngine", "RolloutEngine", "SamplingConfig", "TrainerRanks", "VLLMEngine", "WeightSyncError"]
