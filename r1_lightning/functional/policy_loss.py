"""The GRPO-family policy-gradient losses, per token and per microbatch."""

from __future__ import annotations

from typing import Any

import torch

from r1_lightning.functional.masked import aggregate_loss, row_mean_or_zero

LOSS_TYPES = ("no_baseline", "reinforce_with_baseline", "grpo_clip")
IMPORTANCE_LEVELS = ("token", "sequence")



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


def compute_grpo_clip_loss(
    advantages: torch.Tensor,
    policy_log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    cliprange: float | None,
    *,
    cliprange_low: float | None = None,
    cliprange_high: float | None = None,
    importance_level: str = "token",
    response_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO/GRPO clipped surrogate: -min(r·A, clip(r, 1-ε_low, 1+ε_high)·A).

    Args:
        advantages (B, 1) (or (B,)); policy_log_probs, old_log_probs (B, T).
        cliprange: ε for both sides; cliprange_low / cliprange_high override one side each
            (DAPO clip-higher: e.g. low 0.2, high 0.28).
        importance_level: "token": r = exp(log π - log π_old) per token (GRPO/PPO).
            "sequence" (GSPO-token): s_i = exp(masked mean over the response of
            (log π - log π_old)); each token uses r = sg(s_i) · exp(log π - sg(log π)), whose value
            is s_i (so clipping is decided per sequence) and whose gradient flows per token.
            Needs response_mask (B, T); a row with no response token gets s_i = 1.

    Returns:
        loss (B, T) and metadata (detached): "clipped" (B, T) bool, True where the clipped term
        was the one taken (the min picked it strictly); "ratio" (B, T).
    """
    low = cliprange if cliprange_low is None else cliprange_low
    high = cliprange if cliprange_high is None else cliprange_high
    if low is None or high is None:
        raise ValueError("grpo_clip needs cliprange (or both cliprange_low and cliprange_high)")
    advantages = _as_column(advantages)
    log_ratio = policy_log_probs - old_log_probs
    if importance_level == "token":
        ratio = torch.exp(log_ratio)
    elif importance_level == "sequence":
        if response_mask is None:
            raise ValueError("importance_level='sequence' (GSPO) needs response_mask")
        seq_ratio = torch.exp(row_mean_or_zero(log_ratio, response_mask)).unsqueeze(-1)  # (B, 1)
        ratio = seq_ratio.detach() * torch.exp(policy_log_probs - policy_log_probs.detach())
    else:
        raise ValueError(f"unknown importance_level {importance_level!r}; choose one of {IMPORTANCE_LEVELS}")
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - low, 1.0 + high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    metadata = {"clipped": (clipped < unclipped).detach(), "ratio": ratio.detach()}
    return loss, metadata


def compute_k3_kl(policy_log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(π || π_ref) per token: exp(ref - log π) - (ref - log π) - 1 >= 0.

    policy_log_probs, ref_log_probs (B, T) -> (B, T); differentiable w.r.t. policy_log_probs.
    """
    log_ratio = ref_log_probs - policy_log_probs
    return torch.exp(log_ratio) - log_ratio - 1.0


def compute_policy_gradient_loss(
    policy_log_probs: torch.Tensor,
    loss_type: str,
    raw_rewards: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None,
    cliprange: float | None = None,
    *,
    cliprange_low: float | None = None,
    cliprange_high: float | None = None,
    importance_level: str = "token",
    response_mask: torch.Tensor | None = None,
    ref_log_probs: torch.Tensor | None = None,
    beta: float = 0.0,
    rollout_log_probs: torch.Tensor | None = None,
    tis_cap: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The per-token policy loss for `loss_type`, plus optional KL penalty and TIS correction.

    Args:
        policy_log_probs (B, T): log π of the sampled tokens (differentiable).
        loss_type: "no_baseline" (-raw_rewards·log π), "reinforce_with_baseline"
            (-advantages·log π), or "grpo_clip" (see `compute_grpo_clip_loss`; needs
            advantages, old_log_probs and a cliprange).
        raw_rewards, advantages (B, 1) (or (B,)); old_log_probs (B, T).
        cliprange_low, cliprange_high, importance_level, response_mask: see `compute_grpo_clip_loss`
            (grpo_clip only; the sequence level needs response_mask).
        ref_log_probs (B, T), beta: adds beta · k3 KL(π || π_ref) per token. With beta 0 and
            ref_log_probs given the KL is only reported.
        rollout_log_probs (B, T), tis_cap: truncated importance sampling for the gap between the
            rollout engine and the trainer: the policy-gradient loss (not the KL) is multiplied per
            token by w = min(exp(log π_old - rollout_log_probs), tis_cap), detached, where
            log π_old is old_log_probs when given, else log π detached.
        The defaults (no extras) reproduce the CS336 function exactly.

    Returns:
        loss (B, T) and metadata of detached per-token tensors: "clipped" and "ratio" (grpo_clip),
        "kl" (when ref_log_probs is given), "tis_weight" (when TIS is on).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
    if importance_level not in IMPORTANCE_LEVELS:
        raise ValueError(f"unknown importance_level {importance_level!r}; choose one of {IMPORTANCE_LEVELS}")
    if importance_level == "sequence" and loss_type != "grpo_clip":
        raise ValueError("importance_level='sequence' (GSPO) needs loss_type='grpo_clip'")
    if beta and ref_log_probs is None:
        raise ValueError(f"beta={beta} needs ref_log_probs for the KL penalty")
    if tis_cap is not None and (rollout_log_probs is None or tis_cap <= 0):
        raise ValueError(f"tis_cap={tis_cap} needs rollout_log_probs and a cap > 0")

    metadata: dict[str, torch.Tensor] = {}
    if loss_type == "no_baseline":
        if raw_rewards is None:
            raise ValueError("loss_type='no_baseline' needs raw_rewards")
        loss = compute_naive_policy_gradient_loss(raw_rewards, policy_log_probs)
    elif loss_type == "reinforce_with_baseline":
        if advantages is None:
            raise ValueError("loss_type='reinforce_with_baseline' needs advantages")
        loss = compute_naive_policy_gradient_loss(advantages, policy_log_probs)
    else:
        if advantages is None or old_log_probs is None:
            raise ValueError("loss_type='grpo_clip' needs advantages and old_log_probs")
        loss, metadata = compute_grpo_clip_loss(
            advantages,
            policy_log_probs,
            old_log_probs,
            cliprange,
            cliprange_low=cliprange_low,
            cliprange_high=cliprange_high,
            importance_level=importance_level,
            response_mask=response_mask,
        )

    if tis_cap is not None:
        behaviour = old_log_probs if old_log_probs is not None else policy_log_probs
        tis_weight = torch.exp(behaviour.detach() - rollout_log_probs).clamp(max=tis_cap).detach()
        loss = loss * tis_weight
        metadata["tis_weight"] = tis_weight
    if ref_log_probs is not None:
        kl = compute_k3_kl(policy_log_probs, ref_log_probs)
        if beta:
            loss = loss + beta * kl
        metadata["kl"] = kl.detach()
    return loss, metadata


# ----------------------------------------------------------------------------- GRPO microbatch
# Per-token metadata of `compute_policy_gradient_loss` -> the name of its mean over response tokens.
_TOKEN_METRICS = {
    "clipped": "clip_fraction",
    "ratio": "ratio_mean",
    "kl": "kl_mean",
    "tis_weight": "tis_weight_mean",
}


def grpo_microbatch_loss(
    policy_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    gradient_accumulation_steps: float,
    loss_type: str,
    raw_rewards: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None,
    cliprange: float | None = None,
    *,
    loss_agg: str = "seq_mean_token_mean",
    normalize_constant: float | None = None,
    cliprange_low: float | None = None,
    cliprange_high: float | None = None,
    importance_level: str = "token",
    ref_log_probs: torch.Tensor | None = None,
    beta: float = 0.0,
    rollout_log_probs: torch.Tensor | None = None,
    tis_cap: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO-family microbatch loss, without backward (for `manual_backward`).

    per-token loss (`compute_policy_gradient_loss`) -> `aggregate_loss(loss_agg, normalize_constant)`
    -> divided by gradient_accumulation_steps, EXCEPT for loss_agg="token_mean" with a
    normalize_constant: that constant is already the token count of the whole optimizer step, so
    the microbatch losses already sum to the step's token mean and dividing again would shrink it.

    policy_log_probs, response_mask (B, T); other tensors as in `compute_policy_gradient_loss`.
    Returns the scalar loss and detached scalar metadata: "loss_per_token" (token mean of the
    per-token loss), and the response-token means "clip_fraction", "ratio_mean", "kl_mean",
    "tis_weight_mean" where they apply.
    """
    per_token_loss, token_metadata = compute_policy_gradient_loss(
        policy_log_probs,
        loss_type,
        raw_rewards,
        advantages,
        old_log_probs,
        cliprange,
        cliprange_low=cliprange_low,
        cliprange_high=cliprange_high,
        importance_level=importance_level,
        response_mask=response_mask,
        ref_log_probs=ref_log_probs,
        beta=beta,
        rollout_log_probs=rollout_log_probs,
        tis_cap=tis_cap,
    )
    loss = aggregate_loss(per_token_loss, response_mask, loss_agg, normalize_constant)
    step_global_constant = loss_agg == "token_mean" and normalize_constant is not None
    if not step_global_constant:
        loss = loss / gradient_accumulation_steps
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
    **extras: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`grpo_microbatch_loss`, then `loss.backward()`. Gradients accumulate over calls (never zeroed).

    The CS336 signature; `extras` are `grpo_microbatch_loss`'s keyword arguments (loss_agg,
    normalize_constant, cliprange_low/high, importance_level, ref_log_probs, beta,
    rollout_log_probs, tis_cap). With loss_agg="token_mean" and a normalize_constant, the loss is
    NOT divided by gradient_accumulation_steps (the constant already counts the whole step).
    policy_log_probs, response_mask (B, T) -> (scalar loss, metadata).
    """
    loss, metadata = grpo_microbatch_loss(
        policy_log_probs,
        response_mask,
        gradient_accumulation_steps,
        loss_type,
        raw_rewards,
        advantages,
        old_log_probs,
        cliprange,
        **extras,
    )
    loss.backward()
    return loss, metadata
