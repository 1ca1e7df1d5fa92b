"""The rollout-engine protocol: what GRPO, expert iteration and evaluation need from a generator.

An engine turns prompts into sampled completions. The trainer never calls `model.generate`
directly; it calls an engine, so the same module runs with `HFEngine` (generation on the policy
itself, the CPU default) or `VLLMEngine` (a vLLM engine on its own GPU).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


@dataclass
class SamplingConfig:
    """How to sample. Field names follow vLLM's `SamplingParams`.

    n: samples per prompt (the GRPO group size). top_k <= 0 and min_p == 0 mean "off".
    stop: strings that end a sample; the stop string is kept in the returned text (R1-Zero
    rewards need the closing `</answer>`). seed: makes sampling reproducible; the trainer derives
    it from its base seed and the global step, so a resumed run samples what the straight run did.
    logprobs: also return the engine's log-prob of each sampled token (under the sampling
    distribution's temperature 1 policy, i.e. the raw model log-softmax).
    logprobs_prompts: with `logprobs`, only the samples of the first this-many prompts carry them
    (None = all). A sample is enough to check a weight sync, and vLLM turns every log-prob into
    Python objects: on SmolLM2 log-probs for all samples halve its rollout throughput.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_tokens: int = 1024
    min_tokens: int = 0
    stop: list[str] = field(default_factory=lambda: ["</answer>"])
    seed: int | None = None
    logprobs: bool = False
    logprobs_prompts: int | None = None

    def __post_init__(self) -> None:
        # A YAML config may give one stop string as a bare string.
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        if self.n < 1:
            raise ValueError(f"SamplingConfig.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"SamplingConfig.min_p must be in [0, 1], got {self.min_p}")
        if any(not s for s in self.stop):
            raise ValueError("SamplingConfig.stop must not contain empty strings")
        if self.logprobs_prompts is not None and self.logprobs_prompts < 0:
            raise ValueError(f"SamplingConfig.logprobs_prompts must be >= 0 or None, got {self.logprobs_prompts}")
        if self.max_tokens < 1 or self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            raise ValueError(
                f"SamplingConfig needs 0 <= min_tokens <= max_tokens and max_tokens >= 1, "
                f"got min_tokens={self.min_tokens}, max_tokens={self.max_tokens}"
            )

    def returns_logprobs(self, prompt_index: int) -> bool:
        """Whether the samples of prompt `prompt_index` (0-based, in call order) carry log-probs."""
        return self.logprobs and (self.logprobs_prompts is None or prompt_index < self.logprobs_prompts)


@dataclass
class Completion:
    """One sampled response.

    prompt_token_ids: the prompt as the engine tokenized it (no special tokens added).
    token_ids: the generated tokens, including a final EOS when the sample ended on one and
    including the tokens of a matched stop string; never padding.
    text: the decoded response (special tokens skipped), ending in the stop string when one matched.
    finish_reason: "stop" (EOS or a stop string) or "length" (hit max_tokens).
    logprobs: per generated token, `len(token_ids)` floats, when `SamplingConfig.logprobs`.
    """

    prompt_index: int
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    logprobs: list[float] | None = None


@dataclass(frozen=True)
class TrainerRanks:
    """Where the calling trainer process sits among the data-parallel ranks (DDP or FSDP2): what an
    engine needs to place itself next to its rank (`VLLMEngine`'s layouts). The default is one process.

    rank: global rank. local_rank: rank on this node. world_size: ranks in all. ranks_per_node:
    trainer ranks on each node (Lightning's `trainer.num_devices`).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    ranks_per_node: int = 1

    def __post_init__(self) -> None:
        if not (0 <= self.local_rank < self.ranks_per_node <= self.world_size and 0 <= self.rank < self.world_size):
            raise ValueError(f"inconsistent TrainerRanks: {self}")


class WeightSyncError(RuntimeError):
    """A weight sync into an engine failed or hung: the engine holds neither the old nor the new
    weights, so it refuses to generate from then on (training on its samples would be training on
    weights nobody knows)."""


@runtime_checkable
class RolloutEngine(Protocol):
    """What every engine implements.

    `generate` returns a flat list of `len(prompts) * sampling.n` completions, prompt-major: the n
    samples of prompt 0, then the n of prompt 1, ... (consecutive groups, as
    `compute_group_normalized_rewards` expects).

    An engine with its own weights may be asked to `generate` on a background thread while the
    policy trains (GRPOModule's `async_rollouts.enabled`); it is never used by two threads at once, and
    `load_weights` never runs during a generation.
    """

    def attach(self, policy: torch.nn.Module, tokenizer, ranks: TrainerRanks | None = None) -> None:
        """Bind the engine to the trainer's policy and tokenizer (called once, in `configure_model`, on
        every rank at the same point); `ranks`: this process's place among the trainer's ranks (None: one
        process)."""

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[Completion]: ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the engine's weights with the policy's (Hugging Face parameter names). Raises
        `WeightSyncError` when they may not have arrived; never returns without them."""

    @property
    def shares_policy_weights(self) -> bool:
        """True when the engine generates with the policy module itself (no sync needed)."""
        ...

    def sleep(self) -> None:
        """Free accelerator memory between rollouts (a no-op where unsupported)."""

    def wake_up(self) -> None:
        """Undo `sleep`."""
