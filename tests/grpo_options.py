"""GRPOModule's options by their flat names (`rollout_batch_size=8, loss_type="grpo_clip"`), gathered
into the option groups its constructor takes (`batching=BatchConfig(...)`, `loss=...`): tests set a
few options of several groups at once. tests/ is on the import path, as for `toy_rewards`."""

from __future__ import annotations

import dataclasses

from r1_lightning.functional import PolicyLossConfig
from r1_lightning.modules.grpo_config import AsyncRolloutConfig, BatchConfig, DAPOConfig

GROUPS = {"batching": BatchConfig, "loss": PolicyLossConfig, "dapo": DAPOConfig, "async_rollouts": AsyncRolloutConfig}
# flat name -> the field of AsyncRolloutConfig (the others keep their names inside their group)
ASYNC_FIELDS = {"async_rollouts": "enabled", "rollout_lag": "rollout_lag", "async_warmup_steps": "warmup_steps"}


def grpo_options(**options) -> dict:
    """`options` with every group field among them moved into its group's dataclass."""
    grouped = {}
    for group, config in GROUPS.items():
        names = ASYNC_FIELDS if config is AsyncRolloutConfig else {f.name: f.name for f in dataclasses.fields(config)}
        fields = {field: options.pop(flat) for flat, field in names.items() if flat in options}
        if fields:
            grouped[group] = config(**fields)
    return {**options, **grouped}

