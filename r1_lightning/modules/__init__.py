"""LightningModules: one per phase. All use manual optimization and losses from `functional`.

`SFTModule` (supervised fine-tuning), `ExpertIterationModule`, `GRPOModule`; their shared bases
`PolicyModule` (the policy, AdamW, one optimizer update by hand) and `RolloutModule` (a rollout
engine, a reward function and evaluation), which on its own is the module of zero-shot evaluation
(`r1-lightning validate --config configs/eval.yaml`); `PassRateModule` estimates each training
problem's pass rate for difficulty filtering (`r1-lightning predict --config configs/difficulty.yaml`).
`GRPOModule`'s option groups (`BatchConfig`, `DAPOConfig`, `AsyncRolloutConfig`, with
`functional.PolicyLossConfig`) are exported here too.
"""

from r1_lightning.modules.base import PolicyModule
from r1_lightning.modules.grpo import GRPOModule
from r1_lightning.modules.grpo_config import AsyncRolloutConfig, BatchConfig, DAPOConfig
from r1_lightning.modules.pass_rate import PassRateModule
from r1_lightning.modules.rollout import RolloutModule
from r1_lightning.modules.sft import ExpertIterationModule, SFTModule

__all__ = [
    "AsyncRolloutConfig",
    "BatchConfig",
    "DAPOConfig",
    "ExpertIterationModule",
    "GRPOModule",
    "PassRateModule",
    "PolicyModule",
    "RolloutModule",
    "SFTModule",
]
