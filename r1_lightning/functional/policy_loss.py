"""The GRPO-family policy-gradient losses, per token and per microbatch.

Every option of the loss lives in one frozen `PolicyLossConfig`, checked once when it is built
(`GRPOModule` builds it from its constructor arguments, whose names it shares) and passed down:

    grpo_microbatch_loss(config)            per-token loss -> aggregation -> / loss_divisor
      └─ policy_gradient_loss(config)       -A·log π | clipped surrogate | CISPO | SAPO; x TIS weight; + β·KL
           ├─ grpo_clip_loss(config)        -min(r·A, clip(r, 1-ε_low, 1+ε_high)·A), token or GSPO ratios
           ├─ cispo_loss(config)            -sg(clip(r, 1-ε_low, 1+ε_high))·A·log π (MiniMax-M1)
           └─ sapo_loss(config)             -σ(τ(r-1))·4/τ·A, τ by the sign of A (SAPO)

The CS336 functions (`compute_naive_policy_gradient_loss`, `compute_grpo_clip_loss`,
`compute_policy_gradient_loss`, `grpo_microbatch_train_step`) keep the assignment's signatures and
are thin adapters over these: a config with only `loss_type` and `cliprange` set reproduces them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from r1_lightning.functional.masked import LOSS_AGGREGATIONS, aggregate_loss, row_mean_or_zero

LOSS_TYPES = ("no_baseline", "reinforce_with_baseline", "grpo_clip", "cispo", "sapo")
# The losses that weigh the policy by a ratio to the policy that sampled (π_old): without old
# log-probs (one update per rollout batch, on-policy) `grpo_microbatch_loss` takes π itself, detached.
RATIO_LOSSES = ("grpo_clip", "cispo", "sapo")
IMPORTANCE_LEVELS = ("token", "sequence")


@dataclass(frozen=True)
class PolicyLossConfig:
    """The options of the GRPO-family loss, named as `GRPOModule`'s arguments (and the configs' keys).

    loss_type: "no_baseline" (-raw reward · log π), "reinforce_with_baseline" (-advantage · log π),
        "grpo_clip" (the clipped surrogate of `grpo_clip_loss`), "cispo" (clipped, detached
        importance weights on every token's REINFORCE term, `cispo_loss`) or "sapo" (a soft,
        sigmoid gate in place of the hard clip, `sapo_loss`).
    loss_agg: how a microbatch's per-token losses become one number (see `aggregate_loss`):
        "seq_mean_token_mean" (GRPO), "token_mean" (DAPO), "seq_mean_token_sum_norm" (Dr. GRPO).
    cliprange: ε of the clip range [1-ε, 1+ε] (grpo_clip, cispo); with `cliprange_high`, the lower
        side only. CISPO with cliprange None clips only from above (MiniMax-M1's setting).
    cliprange_high: the upper ε (DAPO clip-higher, e.g. 0.28 with cliprange 0.2; CISPO's ε_high);
        None: = cliprange.
    importance_level: "token" ratios (GRPO/PPO) or "sequence" ratios (GSPO); grpo_clip only.
    beta: weight of a k3 KL penalty to a reference policy (0: none; the KL is still reported when
        reference log-probs are given).
    tis_cap: truncated importance sampling: each token's policy-gradient loss is weighted by
        min(π_old / π_rollout, tis_cap) against the rollout engine's log-probs (None: off).
    tis_level: "token" (that ratio per token) or "sequence" (one weight per response: the ratio
        of the whole response's probabilities, min(Π_t π_old / π_rollout, tis_cap), on all its
        tokens). A response the policy now finds likelier than the engine did counts more.
    loss_normalize_constant: the Dr. GRPO divisor of "seq_mean_token_sum_norm" (e.g. the most
        tokens a response may have); needed by its loss (`grpo_microbatch_loss` raises without
        it), unused by the other aggregations. `GRPOModule` fills in `sampling_max_tokens`.
    sapo_tau_pos, sapo_tau_neg: SAPO's gate temperatures τ for tokens of positive and of negative
        advantage (the paper's 1.0 and 1.05: a negative token's gate closes a little faster).
    """

    loss_type: str = "reinforce_with_baseline"
    loss_agg: str = "seq_mean_token_mean"
    cliprange: float | None = 0.2
    cliprange_high: float | None = None
    importance_level: str = "token"
    beta: float = 0.0
    tis_cap: float | None = None
    tis_level: str = "token"
    loss_normalize_constant: float | None = None
    sapo_tau_pos: float = 1.0
    sapo_tau_neg: float = 1.05

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {self.loss_type!r}; choose one of {LOSS_TYPES}")
        if self.loss_agg not in LOSS_AGGREGATIONS:
            raise ValueError(f"unknown loss aggregation loss_agg={self.loss_agg!r}; choose one of {LOSS_AGGREGATIONS}")
        if self.importance_level not in IMPORTANCE_LEVELS:
            raise ValueError(
                f"unknown importance_level {self.importance_level!r}; choose one of {IMPORTANCE_LEVELS}"
            )
        if self.tis_level not in IMPORTANCE_LEVELS:
            raise ValueError(f"unknown tis_level {self.tis_level!r}; choose one of {IMPORTANCE_LEVELS}")
        if self.importance_level == "sequence" and self.loss_type != "grpo_clip":
            raise ValueError(f"importance_level='sequence' (GSPO) needs loss_type='grpo_clip', "
                             f"got loss_type={self.loss_type!r}")
        if self.cliprange_high is not None and self.loss_type not in ("grpo_clip", "cispo"):
            raise ValueError(f"cliprange_high needs loss_type='grpo_clip' or 'cispo', got loss_type={self.loss_type!r}")
        if self.loss_type == "grpo_clip" and self.cliprange is None:
            raise ValueError("loss_type='grpo_clip' needs cliprange (the lower ε, and the upper one unless cliprange_high)")
        if self.loss_type == "cispo" and self.cliprange is None and self.cliprange_high is None:
            raise ValueError("loss_type='cispo' needs cliprange_high (ε_high) or cliprange")
        for option in ("sapo_tau_pos", "sapo_tau_neg"):
            if getattr(self, option) <= 0:
                raise ValueError(f"{option} must be > 0, got {getattr(self, option)}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        for option in ("tis_cap", "loss_normalize_constant"):
            if getattr(self, option) is not None and getattr(self, option) <= 0:
                raise ValueError(f"{option} must be > 0 or None, got {getattr(self, option)}")


def _as_column(per_sequence: torch.Tensor) -> torch.Tensor:
    # (B,) would broadcast against (B, T) along the wrong axis (or fail): make it (B, 1).
    return per_sequence.unsqueeze(-1) if per_sequence.dim() == 1 else per_sequence


def compute_naive_policy_gradient_loss(
    raw_rewards_or_advantages: torch.Tensor, policy_log_probs: torch.Tensor
) -> torch.Tensor:
    """REINFORCE per-token loss: -A · log π.

    raw_rewards_or_advantages (B, 1) (or (B,)), policy_log_probs (B, T) -> loss (B, T).
    """
    return -_as_column(raw_rewards_or_advantages) * policy_log_probs


def grpo_clip_loss(
    advantages: torch.Tensor, policy_log_probs: torch.Tensor, old_log_probs: torch.Tensor,
    config: PolicyLossConfig, response_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO/GRPO clipped surrogate: -min(r·A, clip(r, 1-ε_low, 1+ε_high)·A).

    Args:
        advantages (B, 1) (or (B,)); policy_log_probs, old_log_probs (B, T).
        config: ε_low = `cliprange`, ε_high = `cliprange_high` (default: `cliprange`), and
            `importance_level`: "token": r = exp(log π - log π_old) per token (GRPO/PPO).
            "sequence" (GSPO-token): s_i = exp(masked mean over the response of
            (log π - log π_old)); each token uses r = sg(s_i) · exp(log π - sg(log π)), whose value
            is s_i (so clipping is decided per sequence) and whose gradient flows per token.
        response_mask (B, T): needed by the sequence level; a row with no response token gets s_i = 1.

    Returns:
        loss (B, T) and metadata (detached): "clipped" (B, T) bool, True where the clipped term
        was the one taken (the min picked it strictly); "ratio" (B, T).
    """
    low = config.cliprange
    high = low if config.cliprange_high is None else config.cliprange_high
    advantages = _as_column(advantages)
    log_ratio = policy_log_probs - old_log_probs
    if config.importance_level == "token":
        ratio = torch.exp(log_ratio)
    else:
        if response_mask is None:
            raise ValueError("importance_level='sequence' (GSPO) needs response_mask")
        seq_ratio = torch.exp(row_mean_or_zero(log_ratio, response_mask)).unsqueeze(-1)  # (B, 1)
        ratio = seq_ratio.detach() * torch.exp(policy_log_probs - policy_log_probs.detach())
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - low, 1.0 + high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    metadata = {"clipped": (clipped < unclipped).detach(), "ratio": ratio.detach()}
    return loss, metadata


def cispo_loss(
    advantages: torch.Tensor, policy_log_probs: torch.Tensor, old_log_probs: torch.Tensor, config: PolicyLossConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO (MiniMax-M1, arXiv 2506.13585, eq. 4-5): -sg(clip(r, 1-ε_low, 1+ε_high)) · A · log π.

    The importance weight r = π/π_old is clipped and detached; the gradient, -sg(ŵ)·A·∇log π, flows
    through every token, including those whose ratio left the clip range (which `grpo_clip` zeroes).

    Args:
        advantages (B, 1) (or (B,)); policy_log_probs, old_log_probs (B, T).
        config: ε_low = `cliprange` (None: no lower bound), ε_high = `cliprange_high` (None: = cliprange).

    Returns:
        loss (B, T) and metadata (detached): "clipped" (B, T) bool, True where the weight was
        clipped; "ratio" (B, T), the unclipped r.
    """
    high = config.cliprange if config.cliprange_high is None else config.cliprange_high
    low = None if config.cliprange is None else 1.0 - config.cliprange
    ratio = torch.exp(policy_log_probs - old_log_probs).detach()
    weight = torch.clamp(ratio, min=low, max=1.0 + high)
    loss = -weight * _as_column(advantages) * policy_log_probs
    return loss, {"clipped": weight != ratio, "ratio": ratio}


def sapo_loss(
    advantages: torch.Tensor, policy_log_probs: torch.Tensor, old_log_probs: torch.Tensor, config: PolicyLossConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SAPO (Soft Adaptive Policy Optimization, arXiv 2511.20347): -f(r) · A with the soft gate
    f(r) = σ(τ(r - 1)) · 4/τ in place of the hard clip, τ = `sapo_tau_pos` where A > 0, else `sapo_tau_neg`.

    ∇f = 4·σ(τ(r-1))·(1-σ(τ(r-1))) · r·∇log π: exactly the unclipped policy gradient A·∇log π at r = 1,
    fading smoothly (instead of dropping to 0) as r leaves 1, the faster the larger τ.

    advantages (B, 1) (or (B,)); policy_log_probs, old_log_probs (B, T) -> loss (B, T) and metadata
    (detached): "ratio" (B, T), "gate" (B, T): the gradient's scale 4·σ·(1-σ), 1 at r = 1.
    """
    advantages = _as_column(advantages)
    ratio = torch.exp(policy_log_probs - old_log_probs)
    tau = torch.where(advantages > 0, config.sapo_tau_pos, config.sapo_tau_neg).to(ratio.dtype)
    gate = torch.sigmoid(tau * (ratio - 1.0))
    loss = -gate * (4.0 / tau) * advantages
    return loss, {"ratio": ratio.detach(), "gate": (4.0 * gate * (1.0 - gate)).detach()}


def compute_grpo_clip_loss(
    advantages: torch.Tensor,
    policy_log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CS336: `grpo_clip_loss` with ε = `cliprange` on both sides and per-token ratios.

    advantages (B, 1), policy_log_probs, old_log_probs (B, T) -> (loss (B, T), {"clipped", "ratio"}).
    """
    config = PolicyLossConfig(loss_type="grpo_clip", cliprange=cliprange)
    return grpo_clip_loss(advantages, policy_log_probs, old_log_probs, config)


def compute_k3_kl(policy_log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(π || π_ref) per token: exp(ref - log π) - (ref - log π) - 1 >= 0.

    policy_log_probs, ref_log_probs (B, T) -> (B, T); differentiable w.r.t. policy_log_probs.
    """
    log_ratio = ref_log_probs - policy_log_probs
    return torch.exp(log_ratio) - log_ratio - 1.0


def policy_gradient_loss(
    policy_log_probs: torch.Tensor, config: PolicyLossConfig, *,
    raw_rewards: torch.Tensor | None = None, advantages: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None, response_mask: torch.Tensor | None = None,
    ref_log_probs: torch.Tensor | None = None, rollout_log_probs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The per-token policy loss of `config.loss_type`, plus the KL penalty and TIS correction.

    Args:
        policy_log_probs (B, T): log π of the sampled tokens (differentiable).
        config: loss_type ("no_baseline" reads raw_rewards, "reinforce_with_baseline" advantages,
            "grpo_clip", "cispo" and "sapo" advantages and old_log_probs, see their functions),
            beta, tis_cap.
        raw_rewards, advantages (B, 1) (or (B,)); old_log_probs, response_mask (B, T).
        ref_log_probs (B, T): adds beta · k3 KL(π || π_ref) per token (beta 0: the KL is only reported).
        rollout_log_probs (B, T): the engine's log-probs, read only with `tis_cap`: the
            policy-gradient loss (not the KL) is multiplied per token by
            w = min(exp(log π_old - rollout_log_probs), tis_cap), detached, where log π_old is
            old_log_probs when given, else log π detached; with tis_level "sequence", every token
            of response i by w_i = min(exp(Σ_t mask · (log π_old - rollout_log_probs)), tis_cap),
            which needs response_mask.

    Returns:
        loss (B, T) and metadata of detached per-token tensors: "clipped" and "ratio" (grpo_clip,
        cispo), "ratio" and "gate" (sapo),
        "kl" (when ref_log_probs is given), "tis_weight" (when TIS is on).
    """
    if config.beta and ref_log_probs is None:
        raise ValueError(f"beta={config.beta} needs ref_log_probs for the KL penalty")
    if config.tis_cap is not None and rollout_log_probs is None:
        raise ValueError(f"tis_cap={config.tis_cap} needs rollout_log_probs (the engine's log-probs)")
    metadata: dict[str, torch.Tensor] = {}
    if config.loss_type == "no_baseline":
        if raw_rewards is None:
            raise ValueError("loss_type='no_baseline' needs raw_rewards")
        loss = compute_naive_policy_gradient_loss(raw_rewards, policy_log_probs)
    elif config.loss_type == "reinforce_with_baseline":
        if advantages is None:
            raise ValueError("loss_type='reinforce_with_baseline' needs advantages")
        loss = compute_naive_policy_gradient_loss(advantages, policy_log_probs)
    else:
        if advantages is None or old_log_probs is None:
            raise ValueError(f"loss_type={config.loss_type!r} needs advantages and old_log_probs")
        if config.loss_type == "grpo_clip":
            loss, metadata = grpo_clip_loss(advantages, policy_log_probs, old_log_probs, config, response_mask)
        else:
            ratio_loss = cispo_loss if config.loss_type == "cispo" else sapo_loss
            loss, metadata = ratio_loss(advantages, policy_log_probs, old_log_probs, config)

    if config.tis_cap is not None:
        behaviour = old_log_probs if old_log_probs is not None else policy_log_probs
        tis_weight = truncated_importance_weight(behaviour, rollout_log_probs, config, response_mask)
        loss = loss * tis_weight
        metadata["tis_weight"] = tis_weight
    if ref_log_probs is not None:
        kl = compute_k3_kl(policy_log_probs, ref_log_probs)
        if config.beta:
            loss = loss + config.beta * kl
        metadata["kl"] = kl.detach()
    return loss, metadata


def truncated_importance_weight(
    behaviour_log_probs: torch.Tensor, rollout_log_probs: torch.Tensor, config: PolicyLossConfig,
    response_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Detached TIS weights (B, T) of `config.tis_level`, capped at `config.tis_cap` (see `policy_gradient_loss`).

    behaviour_log_probs, rollout_log_probs, response_mask (B, T). The sequence ratio is capped in
    log space, so a long response's sum cannot overflow exp.
    """
    log_ratio = (behaviour_log_probs - rollout_log_probs).detach()  # a weight, never a path for gradients
    if config.tis_level == "token":
        return torch.exp(log_ratio).clamp(max=config.tis_cap)
    if response_mask is None:
        raise ValueError("tis_level='sequence' needs response_mask")
    log_weight = (log_ratio.float() * response_mask).sum(dim=-1, keepdim=True).clamp(max=math.log(config.tis_cap))
    return torch.exp(log_weight).expand_as(log_ratio).to(log_ratio.dtype)


def compute_policy_gradient_loss(
    policy_log_probs: torch.Tensor, loss_type: str, raw_rewards: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None, old_log_probs: torch.Tensor | None = None, cliprange: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CS336: the per-token loss (B, T) of `loss_type` and its metadata (see `policy_gradient_loss`)."""
    config = PolicyLossConfig(loss_type=loss_type, cliprange=cliprange)
    return policy_gradient_loss(
        policy_log_probs, config, raw_rewards=raw_rewards, advantages=advantages, old_log_probs=old_log_probs
    )


# Per-token metadata of `policy_gradient_loss` -> the name of its mean over response tokens.
_TOKEN_METRICS = {
    "clipped": "clip_fraction",
    "ratio": "ratio_mean",
    "kl": "kl_mean",
    "tis_weight": "tis_weight_mean",
    "gate": "sapo_gate_mean",
}


def grpo_microbatch_loss(
    policy_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    loss_divisor: float,
    config: PolicyLossConfig,
    *,
    old_log_probs: torch.Tensor | None = None,
    **tensors: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO-family microbatch loss, without backward (for `manual_backward`).

    per-token loss (`policy_gradient_loss`, given old_log_probs and `tensors`: raw_rewards,
    advantages, ref_log_probs, rollout_log_probs) -> `aggregate_loss` by `config.loss_agg` ->
    divided by `loss_divisor`, the one place where the loss is normalized. `loss_divisor` is what
    makes the microbatch losses of one optimizer update sum to the update's loss:
        "seq_mean_token_mean", "seq_mean_token_sum_norm": the microbatch's mean over its sequences
            is divided by it: the number of microbatches of the update (CS336's
            gradient_accumulation_steps), or the update's sequences / this microbatch's.
        "token_mean": the microbatch's sum over its response tokens is divided by it: the number of
            response tokens of the whole update (the microbatch's own count: its own token mean).

    old_log_probs (B, T): the sampling policy's log-probs, read by the ratio losses (`RATIO_LOSSES`:
    grpo_clip, cispo, sapo) and TIS; None with a ratio loss means on-policy (one update per rollout
    batch): the sampling policy is this one, so its log-probs are `policy_log_probs`, detached
    (every ratio is 1, and the gradient is the loss's at r = 1).

    policy_log_probs, response_mask (B, T). Returns the scalar loss and detached scalar metadata:
    "loss_per_token" (token mean of the per-token loss), and the response-token means
    "clip_fraction", "ratio_mean", "kl_mean", "tis_weight_mean" where they apply.
    """
    if old_log_probs is None and config.loss_type in RATIO_LOSSES:
        old_log_probs = policy_log_probs.detach()
    per_token_loss, token_metadata = policy_gradient_loss(
        policy_log_probs, config, response_mask=response_mask, old_log_probs=old_log_probs, **tensors
    )
    if config.loss_agg == "token_mean":
        loss = aggregate_loss(per_token_loss, response_mask, "token_mean", loss_divisor)
    else:
        constant = config.loss_normalize_constant if config.loss_agg == "seq_mean_token_sum_norm" else None
        loss = aggregate_loss(per_token_loss, response_mask, config.loss_agg, constant) / loss_divisor
    metadata = {"loss_per_token": aggregate_loss(per_token_loss.detach(), response_mask, "token_mean")}
    for key, name in _TOKEN_METRICS.items():
        if key in token_metadata:
            metadata[name] = aggregate_loss(token_metadata[key].float(), response_mask, "token_mean")
    return loss, metadata


def grpo_microbatch_train_step(
    policy_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    gradient_accumulation_steps: int,
    loss_type: str,
    raw_rewards: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None,
    cliprange: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CS336: `grpo_microbatch_loss` (sequence mean of token means) with `gradient_accumulation_steps`
    as its `loss_divisor`, then `loss.backward()`.

    Gradients accumulate over calls (never zeroed). policy_log_probs, response_mask (B, T) ->
    (scalar loss, metadata).
    """
    config = PolicyLossConfig(loss_type=loss_type, cliprange=cliprange)
    loss, metadata = grpo_microbatch_loss(
        policy_log_probs, response_mask, gradient_accumulation_steps, config,
        raw_rewards=raw_rewards, advantages=advantages, old_log_probs=old_log_probs,
    )
    loss.backward()
    return loss, metadata
