"""Masked reductions and the loss aggregations built on them."""

from __future__ import annotations

import torch

LOSS_AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")


def masked_mean(tensor: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `tensor` over the elements where `mask` is 1, along `dim` (all elements if None).

    tensor, mask: same shape (mask bool or 0/1). Returns the reduced tensor. A slice with no
    unmasked element gives NaN (0/0) on purpose: callers that can meet empty responses guard
    there (see `aggregate_loss`).
    """
    if dim is None:
        return (tensor * mask).sum() / mask.sum()
    return (tensor * mask).sum(dim) / mask.sum(dim)


def masked_normalize(
    tensor: torch.Tensor, mask: torch.Tensor, dim: int | None = None, normalize_constant: float = 1.0
) -> torch.Tensor:
    """Masked sum of `tensor` along `dim` (all elements if None), divided by `normalize_constant`.

    tensor, mask: same shape. The Dr. GRPO normalization: a constant (e.g. the max generation
    length) instead of each sequence's own length, so long and short responses weigh per token alike.
    """
    summed = (tensor * mask).sum() if dim is None else (tensor * mask).sum(dim)
    return summed / normalize_constant


def aggregate_loss(
    per_token_loss: torch.Tensor,
    response_mask: torch.Tensor,
    mode: str,
    normalize_constant: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss (B, T) over the response tokens to a scalar.

    Modes:
        seq_mean_token_mean (GRPO): each sequence's mean over its response tokens, then the mean
            over the B sequences.
        token_mean (DAPO / BNPO): masked sum / normalize_constant, where normalize_constant is the
            number of response tokens in the whole optimizer step (all microbatches), so that the
            microbatch losses sum to one token mean over the step. None: this microbatch's own
            token count (a per-microbatch token mean).
        seq_mean_token_sum_norm (Dr. GRPO): each sequence's masked sum / normalize_constant (e.g.
            the max number of generated tokens), then the mean over the B sequences. Required.

    A row with no response token contributes 0, and the seq_mean modes still divide by B (not by
    the number of non-empty rows): every sequence keeps the weight 1/B whatever its neighbours
    are, so microbatches add up to the step's mean consistently, and an empty response (no
    tokens, nothing to credit) simply carries no gradient. Never NaN: the per-row count is clamped
    to 1 (its sum is 0 there), which also keeps the backward pass free of 0/0.
    """
    if mode not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {LOSS_AGGREGATIONS}")
    if normalize_constant is not None and normalize_constant <= 0:
        raise ValueError(f"normalize_constant must be > 0, got {normalize_constant}")
    if mode == "seq_mean_token_mean":
        return row_mean_or_zero(per_token_loss, response_mask).mean()
    if mode == "token_mean":
        count = normalize_constant if normalize_constant is not None else response_mask.sum().clamp(min=1)
        return masked_normalize(per_token_loss, response_mask) / count
    if normalize_constant is None:
        raise ValueError(
            "loss aggregation 'seq_mean_token_sum_norm' needs normalize_constant (e.g. max tokens)"
        )
    return masked_normalize(
        per_token_loss, response_mask, dim=-1, normalize_constant=normalize_constant
    ).mean()


def row_mean_or_zero(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over the last dim; 0 (not NaN) for a row with nothing unmasked. (B, T) -> (B,)"""
    return masked_normalize(tensor, mask, dim=-1) / mask.sum(-1).clamp(min=1)
