"""LightningModules: one per phase. All use manual optimization and losses from `functional`."""

from r1_lightning.modules.base import PolicyModule, RolloutModule
from r1_lightning.modules.grpo import GRPOModule
from r1_lightning.modules.sft import ExpertIterationModule, SFTModule


class EvalModule(RolloutModule):
    """Zero-shot (or any checkpoint's) evaluation with `r1-lightning validate`: greedy answers from
    the engine on the validation prompts, graded; writes per-example jsonl and a summary with
    format rate and accuracy by level and subject."""


__all__ = ["EvalModule", "ExpertIterationModule", "GRPOModule", "PolicyModule", "RolloutModule", "SFTModule"]
