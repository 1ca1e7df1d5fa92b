"""The functional core: pure tensor functions for SFT, expert iteration and GRPO-family training.

Names, arguments and semantics follow the Stanford CS336 alignment assignment (DESIGN.md §3), so
each piece is testable on plain tensors. Beyond that API:

- `pack_prompt_and_output_ids`: the same batch dict from token ids (rollout engines give ids).
- `aggregate_loss`: GRPO (`seq_mean_token_mean`), DAPO/BNPO (`token_mean`) and Dr. GRPO
  (`seq_mean_token_sum_norm`) loss aggregation, safe on rows with no response token.
- policy-loss extras, all keyword arguments whose defaults reproduce CS336 exactly: asymmetric
  clipping (DAPO clip-higher), sequence-level importance ratios (GSPO), a k3 KL penalty to a
  reference policy, truncated importance sampling (TIS) against the rollout engine's log-probs.
- `response_log_probs_from_hidden`: log-probs and entropies from the last hidden states, chunk by
  chunk, so the `(B, T, vocab)` float32 logits are never materialized (Qwen's vocab is 151,936).
- `sft_microbatch_loss` / `grpo_microbatch_loss`: the microbatch losses without `backward()`, for
  Lightning modules that call `manual_backward` themselves; the `*_train_step` functions are these
  plus `backward()`.

Shapes: B = batch (sequences), T = sequence length (tokens), V = vocabulary, H = hidden size,
N = flattened tokens (B·T).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

LOSS_TYPES = ("no_baseline", "reinforce_with_baseline", "grpo_clip")
LOSS_AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")
IMPORTANCE_LEVELS = ("token", "sequence")

# Config attributes of models whose head does more than `hidden @ W.T + b` (Gemma 2/3 soft-cap the
# logits, Cohere scales them, Granite divides them). The chunked head does not replicate these,
# so such models take the naive path.
_LOGIT_POSTPROCESSING_CONFIG_KEYS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


# ------------------------------------------------------------------------------- tokenization
def pack_prompt_and_output_ids(
    prompt_ids: Sequence[Sequence[int]], output_ids: Sequence[Sequence[int]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Concatenate prompt and output token ids, right-pad, and shift into inputs and labels.

    Args:
        prompt_ids, output_ids: B lists of token ids each (no special tokens are added).
        pad_token_id: fills the padding of both `input_ids` and `labels` (pad ids, not -100).

    Returns:
        input_ids (B, L-1) long: every token of the padded sequence but the last.
        labels (B, L-1) long: every token but the first (the next token at each input position).
        response_mask (B, L-1) bool: True exactly where the label is an output token.
        L is the longest prompt+output length in the batch.
    """
    if len(prompt_ids) != len(output_ids):
        raise ValueError(f"got {len(prompt_ids)} prompts but {len(output_ids)} outputs")
    if not prompt_ids:
        raise ValueError("cannot pack an empty batch")
    if pad_token_id is None:
        raise ValueError("pad_token_id is None: give the tokenizer a pad token (e.g. its EOS token)")
    lengths = [len(p) + len(o) for p, o in zip(prompt_ids, output_ids)]
    max_len = max(lengths)
    tokens = torch.full((len(prompt_ids), max_len), pad_token_id, dtype=torch.long)
    # Indexed like `tokens`; shifted by one below, like the labels.
    is_output = torch.zeros((len(prompt_ids), max_len), dtype=torch.bool)
    for i, (prompt, output) in enumerate(zip(prompt_ids, output_ids)):
        tokens[i, : lengths[i]] = torch.tensor(list(prompt) + list(output), dtype=torch.long)
        is_output[i, len(prompt) : lengths[i]] = True
    return {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:], "response_mask": is_output[:, 1:]}


def split_by_token_budget(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Cut length-sorted sequences into consecutive microbatches of at most `max_tokens` padded tokens.

    lengths: the sequences' token counts, in the order they will be packed (ascending, so each
    microbatch pads to its own last and longest one). Returns lists of indices into `lengths`;
    a microbatch's cost is len(microbatch) * max(length in it). A sequence longer than the budget
    gets a microbatch of its own. Fewer, fuller microbatches mean fewer forward/backward passes.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, length in enumerate(lengths):
        if current and (len(current) + 1) * max(longest, length) > max_tokens:
            groups.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, length)
    if current:
        groups.append(current)
    return groups


def microbatch_groups(
    lengths: Sequence[int], micro_size: int, max_tokens: int | None = None, sort_by_length: bool = True
) -> list[list[int]]:
    """The microbatches of one optimizer update, as lists of indices into `lengths`.

    lengths: each sequence's packed row length (prompt + response - 1). With `max_tokens`, the
    length-sorted sequences are cut by `split_by_token_budget`; otherwise into consecutive slices of
    `micro_size`, in length order if `sort_by_length` (less padding) or in the given order.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__) if sort_by_length or max_tokens else list(range(len(lengths)))
    if max_tokens:
        return [[order[j] for j in group] for group in split_by_token_budget([lengths[i] for i in order], max_tokens)]
    return [order[m : m + micro_size] for m in range(0, len(order), micro_size)]


def tokenize_prompt_and_output(
    prompt_strs: Sequence[str], output_strs: Sequence[str], tokenizer
) -> dict[str, torch.Tensor]:
    """Tokenize prompts and outputs separately (no special tokens) and pack them.

    Returns the dict of `pack_prompt_and_output_ids`: input_ids, labels (B, L-1) long and
    response_mask (B, L-1) bool, padded with `tokenizer.pad_token_id`.
    """
    prompt_ids = tokenizer(list(prompt_strs), add_special_tokens=False)["input_ids"]
    output_ids = tokenizer(list(output_strs), add_special_tokens=False)["input_ids"]
    return pack_prompt_and_output_ids(prompt_ids, output_ids, tokenizer.pad_token_id)


# ------------------------------------------------------------------------ log-probs, entropy
def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    # bf16/fp16 logits are upcast for an accurate log-softmax; float64 stays float64.
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _log_probs_and_entropy(
    logits: torch.Tensor, labels: torch.Tensor, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(label) and entropy from float logits, differentiable (the naive path).

    logits (..., V), labels (...) -> log_probs (...), entropy (...) or None. log p(label) is
    logit - logsumexp: no (..., V) log-softmax tensor is made for it.
    """
    lse = torch.logsumexp(logits, dim=-1)
    log_probs = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - lse
    entropy = _entropy_given_logsumexp(logits, lse) if with_entropy else None
    return log_probs, entropy


def _entropy_given_logsumexp(logits: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    # H = -sum p log p with log p = z - logsumexp(z): no log of a tiny p is taken. The equal form
    # logsumexp(z) - sum p z cancels catastrophically for large logits (0.03 nats off at z ~ 1000).
    log_p = logits - lse.unsqueeze(-1)
    return -(log_p.exp() * log_p).sum(-1)


def _log_softmax_stats_(
    logits: torch.Tensor, labels: torch.Tensor, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """log p(label), logsumexp and entropy of float logits (C, V), overwriting `logits`.

    The chunked head's forward (no autograd): at most two (C, V) buffers, the logits' own and
    one for the probabilities, where the out-of-place ops above need four.
    Returns log_probs (C,), logsumexp (C,), entropy (C,) or None.
    """
    shift = logits.amax(dim=-1, keepdim=True)
    log_p = logits.sub_(shift)
    probs = log_p.exp()  # unnormalized until divided below
    sum_exp = probs.sum(dim=-1, keepdim=True)
    log_p -= sum_exp.log()
    lse = (shift + sum_exp.log()).squeeze(-1)
    log_probs = log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    entropy = -(probs.div_(sum_exp).mul_(log_p)).sum(-1) if with_entropy else None
    return log_probs, lse, entropy


def compute_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim, computed stably via logsumexp in float32.

    logits (B, T, V) (any leading shape) -> entropy (B, T) float32, in nats.
    """
    logits = _at_least_float32(logits)
    return _entropy_given_logsumexp(logits, torch.logsumexp(logits, dim=-1))


def _aligned_slice_width(width: int, multiple: int = 128) -> int:
    """`width` rounded down to a multiple of `multiple` once it is at least that wide.

    A vocabulary slice of odd width gives the (N, V_s) buffers an odd row stride, and cuBLAS then
    falls back to slow unaligned matmul kernels (on an H200 they took 17% of the GRPO update's GPU
    time). Rounding down keeps every buffer within the forward chunk's size.
    """
    width = max(1, width)
    return width - width % multiple if width >= multiple else width


class _ChunkedLinearLogProbs(torch.autograd.Function):
    """log p(label) and entropy of softmax(hidden @ W.T + b), never holding all (N, V) logits.

    Forward goes chunk by chunk over tokens and keeps only per-token scalars (logsumexp, entropy).
    Backward goes slice by slice over the vocabulary: each slice's logits for all N tokens are
    recomputed, turned into the softmax gradient by hand, and give that slice's rows of the head's
    gradient in one matmul over all tokens, written straight into the head-dtype gradient. So no
    (V, H) float32 accumulator exists (0.93 GB for Qwen2.5's head), a bf16 head's gradient is rounded
    once, as the unchunked matmul's is, and the slices are sized so one slice's (N, V_s) float32
    buffers are no bigger than a forward chunk's (chunk_size, V).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_size, with_entropy):
        # hidden (N, H), weight (V, H), bias (V,) or None, labels (N,) -> log_probs, entropy (N,) fp32
        n_tokens = hidden.shape[0]
        out_dtype = torch.promote_types(hidden.dtype, torch.float32)
        log_probs = hidden.new_empty(n_tokens, dtype=out_dtype)
        lse = hidden.new_empty(n_tokens, dtype=out_dtype)
        entropy = hidden.new_empty(n_tokens, dtype=out_dtype) if with_entropy else None
        for start in range(0, n_tokens, chunk_size):
            rows = slice(start, start + chunk_size)
            logits = _at_least_float32(F.linear(hidden[rows], weight, bias))
            log_probs[rows], lse[rows], chunk_entropy = _log_softmax_stats_(
                logits, labels[rows], with_entropy
            )
            if with_entropy:
                entropy[rows] = chunk_entropy
            del logits  # before the next chunk's logits exist, not after
        ctx.save_for_backward(hidden, weight, bias, labels, lse, entropy)
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)  # entropy is often only logged: then its gradient is None
        if with_entropy:
            return log_probs, entropy
        no_entropy = hidden.new_zeros(0, dtype=out_dtype)
        ctx.mark_non_differentiable(no_entropy)
        return log_probs, no_entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_log_probs, grad_entropy):
        hidden, weight, bias, labels, lse, entropy = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        n_tokens, vocab = hidden.shape[0], weight.shape[0]
        # grad_hidden sums over vocabulary slices: float32 (N, H), small next to one (N, V_s) slice.
        acc_dtype = torch.promote_types(hidden.dtype, torch.float32)
        grad_hidden = hidden.new_zeros(hidden.shape, dtype=acc_dtype) if need_hidden else None
        grad_weight = torch.empty_like(weight) if need_weight else None
        grad_bias = torch.empty_like(bias) if need_bias else None
        slice_width = _aligned_slice_width(ctx.chunk_size * vocab // max(n_tokens, 1))
        lse, entropy = lse.unsqueeze(-1), None if entropy is None else entropy.unsqueeze(-1)
        for start in range(0, vocab, slice_width):
            cols = slice(start, start + slice_width)
            b = None if bias is None else bias[cols]
            # Two (N, V_s) buffers: log p (made in place from the logits) and dz (made from p).
            log_p = _at_least_float32(F.linear(hidden, weight[cols], b))
            log_p -= lse
            grad_logits = log_p.exp()
            if grad_entropy is not None:
                # dH/dz = -p (log p + H), built in log_p's buffer
                log_p += entropy
                log_p *= grad_logits
                log_p *= -grad_entropy.unsqueeze(-1)
            if grad_log_probs is not None:
                # d log p_y / dz = onehot(y) - p; the onehot only where y is inside this slice (a
                # masked scatter, not an index list: no nonzero(), so no wait for the GPU per slice)
                grad_logits *= -grad_log_probs.unsqueeze(-1)
                width = grad_logits.shape[1]
                in_slice = (labels >= start) & (labels < start + width)
                column = (labels - start).clamp_(0, width - 1).unsqueeze(-1)
                onehot = torch.where(in_slice, grad_log_probs, 0.0).to(grad_logits.dtype).unsqueeze(-1)
                grad_logits.scatter_add_(-1, column, onehot)
            else:
                grad_logits.zero_()
            if grad_entropy is not None:
                grad_logits += log_p
            del log_p
            if need_bias:
                grad_bias[cols] = grad_logits.sum(0)
            grad_logits = grad_logits.to(weight.dtype)
            if need_hidden:
                grad_hidden += grad_logits @ weight[cols]
            if need_weight:
                torch.mm(grad_logits.T, hidden, out=grad_weight[cols])
            del grad_logits  # before the next slice's buffers exist, not after
        grad_hidden = grad_hidden.to(hidden.dtype) if need_hidden else None
        return grad_hidden, grad_weight, grad_bias, None, None, None


def response_log_probs_from_hidden(
    hidden_states: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = 512,
    return_token_entropy: bool = False,
    lm_head_bias: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-token log p(label) (and entropy) of a linear LM head, never materializing all logits.

    The B·T tokens are processed `chunk_size` at a time: each chunk's logits are computed in the
    head's dtype (as the model's own `lm_head` would), upcast to float32, reduced to per-token
    scalars and dropped; backward recomputes them chunk by chunk. Peak extra memory is a few
    (chunk_size, V) float32 tensors instead of several (B·T, V) ones.

    Args:
        hidden_states (B, T, H): the decoder's final (normed) hidden states.
        lm_head_weight (V, H), lm_head_bias (V,) or None: the output projection.
        labels (B, T) long: the token whose log-prob is wanted at each position.

    Returns:
        {"log_probs": (B, T) float32, "token_entropy": (B, T) float32 if return_token_entropy}.
        Both are differentiable w.r.t. hidden_states, lm_head_weight and lm_head_bias.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batch_shape = labels.shape
    log_probs, entropy = _ChunkedLinearLogProbs.apply(
        hidden_states.reshape(-1, hidden_states.shape[-1]),
        lm_head_weight,
        lm_head_bias,
        labels.reshape(-1),
        chunk_size,
        return_token_entropy,
    )
    out = {"log_probs": log_probs.view(batch_shape)}
    if return_token_entropy:
        out["token_entropy"] = entropy.view(batch_shape)
    return out


def _decoder_and_linear_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """The decoder body and its linear LM head, or None when the chunked path does not apply."""
    config = getattr(model, "config", None)
    if any(getattr(config, key, None) not in (None, 1.0) for key in _LOGIT_POSTPROCESSING_CONFIG_KEYS):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        return None
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    if decoder is None or decoder is model:
        return None
    return decoder, head


def get_response_log_probs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    return_token_entropy: bool = False,
    chunk_size: int | None = None,
    attention_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-token log p(label | prefix) under a causal LM, unmasked (padding included).

    Args:
        model: a Hugging Face causal LM.
        input_ids, labels (B, T) long; attention_mask (B, T) or None (right padding needs none:
            causal attention never looks at the padding after a token).
        chunk_size: None = naive (the model's full logits, then log-softmax). An int runs the
            decoder body for hidden states and the LM head `chunk_size` tokens at a time (see
            `response_log_probs_from_hidden`); same numbers, far less memory. Models whose head
            post-processes the logits (soft-capping, scaling) or is not a linear layer silently
            take the naive path. Tied embeddings need nothing special: the head's weight is the
            shared parameter, so autograd sums both uses' gradients.

    Returns:
        {"log_probs": (B, T) float32, "token_entropy": (B, T) float32 if return_token_entropy}.
    """
    parts = _decoder_and_linear_head(model) if chunk_size is not None else None
    if parts is None:
        logits = _at_least_float32(
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        )
        log_probs, entropy = _log_probs_and_entropy(logits, labels, return_token_entropy)
        out = {"log_probs": log_probs}
        if return_token_entropy:
            out["token_entropy"] = entropy
        return out
    decoder, head = parts
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return response_log_probs_from_hidden(
        hidden, head.weight, labels, chunk_size, return_token_entropy, lm_head_bias=head.bias
    )


# ------------------------------------------------------------------------------- masked ops
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
        return _row_mean_or_zero(per_token_loss, response_mask).mean()
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


def _row_mean_or_zero(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over the last dim; 0 (not NaN) for a row with nothing unmasked. (B, T) -> (B,)"""
    return masked_normalize(tensor, mask, dim=-1) / mask.sum(-1).clamp(min=1)


# ------------------------------------------------------------------------------------- SFT
def sft_microbatch_loss(
    policy_log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    gradient_accumulation_steps: int,
    normalize_constant: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The SFT microbatch loss, without backward (for `manual_backward`).

    policy_log_probs (B, T), response_mask (B, T) -> scalar loss =
    masked sum of -log_probs / normalize_constant / B / gradient_accumulation_steps,
    and metadata {"token_nll": mean NLL per response token, "response_tokens": count} (detached).
    """
    nll = -policy_log_probs
    loss = aggregate_loss(nll, response_mask, "seq_mean_token_sum_norm", normalize_constant)
    loss = loss / gradient_accumulation_steps
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
    """`sft_microbatch_loss`, then `loss.backward()`. Gradients accumulate over calls (never zeroed).

    policy_log_probs (B, T), response_mask (B, T) -> (scalar loss, metadata).
    """
    loss, metadata = sft_microbatch_loss(
        policy_log_probs, response_mask, gradient_accumulation_steps, normalize_constant
    )
    loss.backward()
    return loss, metadata


# ------------------------------------------------------------------------ rewards, advantages
def compute_group_normalized_rewards(
    reward_fn: Callable[[str, str], dict[str, float]],
    rollout_responses: Sequence[str],
    repeated_ground_truths: Sequence[str],
    group_size: int,
    advantage_eps: float,
    normalize_by_std: bool,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Reward each response and normalize within its group of `group_size` consecutive responses.

    advantage = reward - group mean, divided by (group sample std (unbiased) + advantage_eps)
    when `normalize_by_std` (a group of equal rewards gets advantage 0, not NaN).

    Returns:
        advantages (N,) float32, raw_rewards (N,) float32, and metadata: reward mean/std/min/max
        and the mean of every other numeric key the reward function returns (e.g. format_reward).
    """
    n = len(rollout_responses)
    if n != len(repeated_ground_truths):
        raise ValueError(f"got {n} responses but {len(repeated_ground_truths)} ground truths")
    if group_size < 1 or n % group_size:
        raise ValueError(f"{n} responses cannot be split into groups of group_size={group_size}")
    if normalize_by_std and group_size < 2:
        raise ValueError("normalize_by_std needs group_size >= 2 (the sample std of one reward is undefined)")
    scores = [
        reward_fn(response, truth) for response, truth in zip(rollout_responses, repeated_ground_truths)
    ]
    raw_rewards = torch.tensor([float(s["reward"]) for s in scores], dtype=torch.float32)
    groups = raw_rewards.view(-1, group_size)
    advantages = groups - groups.mean(dim=1, keepdim=True)
    if normalize_by_std:
        advantages = advantages / (groups.std(dim=1, keepdim=True) + advantage_eps)
    metadata = {
        "reward_mean": raw_rewards.mean().item(),
        "reward_std": raw_rewards.std().item() if n > 1 else 0.0,
        "reward_min": raw_rewards.min().item(),
        "reward_max": raw_rewards.max().item(),
    }
    for key in scores[0] if scores else ():
        if key != "reward" and isinstance(scores[0][key], (int, float)):
            metadata[f"{key}_mean"] = sum(float(s[key]) for s in scores) / n
    return advantages.reshape(-1), raw_rewards, metadata


# ------------------------------------------------------------------------- policy-gradient losses
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
        seq_ratio = torch.exp(_row_mean_or_zero(log_ratio, response_mask)).unsqueeze(-1)  # (B, 1)
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
