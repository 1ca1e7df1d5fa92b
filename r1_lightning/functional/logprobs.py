"""Per-token log-probs and entropies under a causal LM.

`get_response_log_probs` is the CS336 function: log p(label | prefix) for every position, unmasked.
The naive path takes the model's full logits; with `chunk_size` it runs the decoder body for hidden
states and hands them to `response_log_probs_from_hidden`, a linear LM head evaluated chunk by chunk
(`_ChunkedLinearLogProbs`, a custom autograd function): the `(B, T, V)` float32 logits of a
151,936-token vocabulary never exist, forward or backward, and the numbers are the same.

Log-softmax and entropy are always computed in at least float32, from `z - logsumexp(z)`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Config attributes of models whose head does more than `hidden @ W.T + b` (Gemma 2/3 soft-cap the
# logits, Cohere scales them, Granite divides them). The chunked head does not replicate these,
# so such models take the naive path.
_LOGIT_POSTPROCESSING_CONFIG_KEYS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


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
    falls back to slow unaligned matmul kernels (on an H200 they took a sixth of the GRPO update's
    GPU time). Rounding down keeps every buffer within the forward chunk's size.
    """
    width = max(1, width)
    return width - width % multiple if width >= multiple else width


def _spans(total: int, size: int) -> Iterator[tuple[int, int]]:
    """[start, end) pieces of range(total), `size` long but the last, which is never 1 long unless
    `total` is: it takes the one left over instead. Under torch.compile a dimension of 1 is a shape of
    its own (0/1 specialization), so a piece of one row or column would compile the chunk's work anew."""
    start = 0
    while start < total:
        end = total if total - (start + size) <= 1 else start + size
        yield start, end
        start = end


def _chunk_log_softmax_stats(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """log p(label), logsumexp and entropy (C,) of one chunk's logits hidden (C, H) @ weight.T + bias,
    upcast to float32; the logits are freed on return, before the next chunk's exist."""
    return _log_softmax_stats_(_at_least_float32(F.linear(hidden, weight, bias)), labels, with_entropy)


def _logits_grad_slice(
    hidden, weight, bias, labels, start: int, lse, grad_log_probs, entropy, grad_entropy, need_bias: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The loss gradient w.r.t. one vocabulary slice of the logits, z = hidden (N, H) @ weight.T
    (V_s, H) + bias: (N, V_s) in the head's dtype, and its column sums in float32 when `need_bias`.
    The slice's columns are vocabulary ids start .. start + V_s - 1; lse, entropy (N, 1);
    grad_log_probs, grad_entropy (N,) or None."""
    # Two (N, V_s) buffers: log p (made in place from the logits) and dz (made from p).
    log_p = _at_least_float32(F.linear(hidden, weight, bias))
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
    grad_bias = grad_logits.sum(0) if need_bias else None
    return grad_logits.to(weight.dtype), grad_bias


@functools.cache
def _compiled(fn, backend: str):
    return torch.compile(fn, backend=backend, dynamic=True)


def _maybe_compiled(fn, backend: str | None):
    """`fn`, or `fn` under torch.compile with `backend`: the elementwise work around the head's
    matmuls (upcast, softmax, its gradient, downcast) then runs as a few fused kernels instead of
    one pass over an (N, V_s) float32 buffer per op. Token counts and slice widths vary per
    microbatch, hence dynamic shapes."""
    return fn if backend is None else _compiled(fn, backend)


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
    def forward(ctx, hidden, weight, bias, labels, chunk_size, with_entropy, compile_backend):
        # hidden (N, H), weight (V, H), bias (V,) or None, labels (N,) -> log_probs, entropy (N,) fp32
        n_tokens = hidden.shape[0]
        out_dtype = torch.promote_types(hidden.dtype, torch.float32)
        log_probs = hidden.new_empty(n_tokens, dtype=out_dtype)
        lse = hidden.new_empty(n_tokens, dtype=out_dtype)
        entropy = hidden.new_empty(n_tokens, dtype=out_dtype) if with_entropy else None
        chunk_stats = _maybe_compiled(_chunk_log_softmax_stats, compile_backend)
        for start, end in _spans(n_tokens, chunk_size):
            rows = slice(start, end)
            log_probs[rows], lse[rows], chunk_entropy = chunk_stats(
                hidden[rows], weight, bias, labels[rows], with_entropy
            )
            if with_entropy:
                entropy[rows] = chunk_entropy
        ctx.save_for_backward(hidden, weight, bias, labels, lse, entropy)
        ctx.chunk_size, ctx.compile_backend = chunk_size, compile_backend
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
        slice_grad = _maybe_compiled(_logits_grad_slice, ctx.compile_backend)
        for start, end in _spans(vocab, slice_width):
            cols = slice(start, end)
            grad_logits, slice_grad_bias = slice_grad(
                hidden, weight[cols], None if bias is None else bias[cols], labels, start, lse,
                grad_log_probs, entropy, grad_entropy, need_bias,
            )
            if need_bias:
                grad_bias[cols] = slice_grad_bias
            if need_hidden:
                grad_hidden += grad_logits @ weight[cols]
            if need_weight:
                torch.mm(grad_logits.T, hidden, out=grad_weight[cols])
            del grad_logits  # before the next slice's buffers exist, not after
        grad_hidden = grad_hidden.to(hidden.dtype) if need_hidden else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def response_log_probs_from_hidden(
    hidden_states: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = 512,
    return_token_entropy: bool = False,
    lm_head_bias: torch.Tensor | None = None,
    compile_backend: str | None = None,
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
        compile_backend: torch.compile each chunk's and each vocabulary slice's work with this
            backend (e.g. "inductor"); None: eager. The same numbers up to float rounding.

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
        compile_backend,
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
    compile_backend: str | None = None,
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
        compile_backend: the chunked head's work under torch.compile with this backend (see
            `response_log_probs_from_hidden`); the naive path ignores it.

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
        hidden, head.weight, labels, chunk_size, return_token_entropy, lm_head_bias=head.bias,
        compile_backend=compile_backend,
    )
