"""The SFT microbatch loss: masked NLL of the response tokens."""

from __future__ import annotations

import torch

from r1_lightning.functional.masked import aggregate_loss


def sft_microbatch_loss(
    policy_log_probs: torch.Tensor, response_mask: torch.Tensor, loss_divisor: float,
    normalize_constant: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The SFT microbatch loss, without backward (for `manual_backward`).

    policy_log_probs (B, T), response_mask (B, T) -> scalar loss =
    masked sum of -log_probs / normalize_constant / B / loss_divisor (the number of microbatches
    of the update, or its sequences / this microbatch's: the microbatch losses then sum to the update's),
    and metadata {"token_nll": mean NLL per response token, "response_tokens": count} (detached).
    """
    nll = -policy_log_probs
    loss = aggregate_loss(nll, response_mask, "seq_mean_token_sum_norm", normalize_constant)
    loss = loss / loss_divisor
    metadata = {
        "token_nll": aggregate_loss(nll.detach(), response_mask, "token_mean"),
        "response_tokens": response_mask.sum(),
    }
    return loss, metadata


def sft_microbatch_train_step(
    policy_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    gradient_accumulation_steps: int,
    normalize_constant: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CS336: `sft_microbatch_loss` with `gradient_accumulation_steps` as its `loss_divisor`, then
    `loss.backward()`. Gradients accumulate over calls (never zeroed).

    policy_log_probs (B, T), response_mask (B, T) -> (scalar loss, metadata).
    """
    loss, metadata = sft_microbatch_loss(
        policy_log_probs, response_mask, gradient_accumulation_steps, normalize_constant
    )
    loss.backward()
    return loss, metadata
