"""Tests of the functional core. Expected values are computed by hand (in comments) or by an
independent route (plain autograd through a full log-softmax, torch.autograd.gradcheck)."""

import math

import pytest
import torch
from tiny_models import tiny_qwen2, word_level_tokenizer
from torch.utils._python_dispatch import TorchDispatchMode

from r1_lightning.functional import (
    PolicyLossConfig,
    aggregate_loss,
    compute_entropy,
    compute_group_normalized_rewards,
    compute_grpo_clip_loss,
    compute_k3_kl,
    compute_naive_policy_gradient_loss,
    compute_policy_gradient_loss,
    get_response_log_probs,
    group_normalized_advantages,
    grpo_clip_loss,
    grpo_microbatch_loss,
    grpo_microbatch_train_step,
    masked_mean,
    masked_normalize,
    microbatch_groups,
    pack_prompt_and_output_ids,
    policy_gradient_loss,
    response_log_probs_from_hidden,
    sft_microbatch_loss,
    sft_microbatch_train_step,
    split_by_token_budget,
    tokenize_prompt_and_output,
    truncated_importance_weight,
)
from r1_lightning.functional.logprobs import _spans

T = torch.tensor
LN = math.log


def close(actual, expected, **kw):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), **kw)


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tokenizer():
    vocab = {"[PAD]": 0, "a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7, "<s>": 8}
    # A BOS on every encode by default, so that forgetting add_special_tokens=False shows.
    tokenizer = word_level_tokenizer(vocab, "[PAD]", bos_token="<s>", pad_token="[PAD]")
    assert tokenizer("a b")["input_ids"] == [8, 1, 2]
    return tokenizer


def tiny_qwen(tie: bool, vocab: int = 64, seed: int = 0):
    return tiny_qwen2(vocab, seed, tie_word_embeddings=tie)


def max_saved_numel(fn) -> int:
    """The largest tensor autograd saves for backward while `fn` runs."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return max(sizes)


# ------------------------------------------------------------------------------ tokenization
def test_tokenize_prompt_and_output_by_hand(tokenizer):
    out = tokenize_prompt_and_output(["a b", "c"], ["d e f", "g"], tokenizer)
    # sequences: [1,2,4,5,6] and [3,7] padded with 0 to length 5
    assert out["input_ids"].tolist() == [[1, 2, 4, 5], [3, 7, 0, 0]]
    assert out["labels"].tolist() == [[2, 4, 5, 6], [7, 0, 0, 0]]
    assert out["response_mask"].dtype == torch.bool
    assert out["response_mask"].tolist() == [[False, True, True, True], [True, False, False, False]]
    assert out["input_ids"].dtype == out["labels"].dtype == torch.long


def test_tokenize_uses_no_special_tokens_and_matches_pack(tokenizer):
    prompts, outputs = ["a a b", "c d"], ["e", "f g a"]

    def ids(strs):
        return [tokenizer.encode(s, add_special_tokens=False) for s in strs]

    expected = pack_prompt_and_output_ids(ids(prompts), ids(outputs), tokenizer.pad_token_id)
    got = tokenize_prompt_and_output(prompts, outputs, tokenizer)
    for key in expected:
        assert torch.equal(got[key], expected[key])


def test_pack_edge_cases():
    # empty prompt: the first output token has no prefix, so it is never a label
    out = pack_prompt_and_output_ids([[], [1]], [[4, 5], []], pad_token_id=9)
    assert out["input_ids"].tolist() == [[4], [1]]
    assert out["labels"].tolist() == [[5], [9]]
    assert out["response_mask"].tolist() == [[True], [False]]  # an empty output has no response label
    # a single token in all: zero-width tensors, not an error
    out = pack_prompt_and_output_ids([[3]], [[]], pad_token_id=0)
    assert out["input_ids"].shape == out["labels"].shape == out["response_mask"].shape == (1, 0)


@pytest.mark.parametrize(
    "prompts, outputs, pad, match",
    [
        ([[1]], [[2], [3]], 0, "1 prompts but 2 outputs"),
        ([], [], 0, "empty batch"),
        ([[1]], [[2]], None, "pad"),
    ],
)
def test_pack_errors(prompts, outputs, pad, match):
    with pytest.raises(ValueError, match=match):
        pack_prompt_and_output_ids(prompts, outputs, pad)


# --------------------------------------------------------------------------------- entropy
def test_compute_entropy_by_hand():
    # uniform over 5 -> ln 5; p = (1/4, 3/4) from logits (0, ln 3); huge equal logits -> ln 2, stably
    logits = T([[[0.0, 0, 0, 0, 0], [0, LN(3), -1e9, -1e9, -1e9]], [[1000.0, 1000, -1e9, -1e9, -1e9]] * 2])
    h_quarter = -(0.25 * LN(0.25) + 0.75 * LN(0.75))
    close(compute_entropy(logits), [[LN(5), h_quarter], [LN(2), LN(2)]])


def test_compute_entropy_upcasts_bf16():
    out = compute_entropy(torch.zeros(2, 3, 7, dtype=torch.bfloat16))
    assert out.dtype == torch.float32
    close(out, torch.full((2, 3), LN(7)))


# ------------------------------------------------------------------- chunked log-probs (tensors)
def naive_log_probs_and_entropy(hidden, weight, labels, bias=None):
    logits = torch.nn.functional.linear(hidden, weight, bias)
    log_softmax = torch.log_softmax(logits, dim=-1)
    entropy = -(log_softmax.exp() * log_softmax).sum(-1)
    return log_softmax.gather(-1, labels.unsqueeze(-1)).squeeze(-1), entropy


def test_chunked_head_uniform_values_and_hand_gradient():
    # W = 0: every logit is 0, so log p = -ln V and H = ln V for every token.
    # d(sum log p)/dz_n = onehot(y_n) - 1/V  =>  dW[v] = sum_{n: y_n = v} h_n - (1/V) sum_n h_n, dh = 0.
    torch.manual_seed(0)
    V, H = 6, 3
    hidden = torch.randn(2, 5, H, requires_grad=True)
    weight = torch.zeros(V, H, requires_grad=True)
    labels = torch.tensor([[0, 1, 1, 5, 2], [2, 2, 0, 3, 3]])
    out = response_log_probs_from_hidden(hidden, weight, labels, chunk_size=3, return_token_entropy=True)
    close(out["log_probs"], torch.full((2, 5), -LN(V)))
    close(out["token_entropy"], torch.full((2, 5), LN(V)))
    out["log_probs"].sum().backward()
    flat_h, flat_y = hidden.detach().reshape(-1, H), labels.reshape(-1)
    expected = torch.stack([flat_h[flat_y == v].sum(0) for v in range(V)]) - flat_h.sum(0) / V
    close(weight.grad, expected)
    close(hidden.grad, torch.zeros_like(hidden))


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 1000])
def test_chunked_head_matches_naive_values_and_gradients(chunk_size):
    torch.manual_seed(1)
    B, L, H, V = 3, 7, 8, 50  # 21 tokens: chunk sizes that divide, don't divide, exceed
    hidden = torch.randn(B, L, H, requires_grad=True)
    weight = torch.randn(V, H, requires_grad=True)
    bias = torch.randn(V, requires_grad=True)
    labels = torch.randint(0, V, (B, L))
    c_lp, c_h = torch.randn(B, L), torch.randn(B, L)  # arbitrary upstream gradients

    out = response_log_probs_from_hidden(hidden, weight, labels, chunk_size, True, lm_head_bias=bias)
    grads = torch.autograd.grad(
        (out["log_probs"] * c_lp + out["token_entropy"] * c_h).sum(), [hidden, weight, bias]
    )
    ref_lp, ref_h = naive_log_probs_and_entropy(hidden, weight, labels, bias)
    ref_grads = torch.autograd.grad((ref_lp * c_lp + ref_h * c_h).sum(), [hidden, weight, bias])
    close(out["log_probs"], ref_lp, atol=1e-5, rtol=1e-5)
    close(out["token_entropy"], ref_h, atol=1e-5, rtol=1e-5)
    for got, ref in zip(grads, ref_grads):
        close(got, ref, atol=1e-5, rtol=1e-5)


def test_chunked_head_compiled_matches_eager_and_compiles_once_for_all_lengths():
    """`compile_backend`: the same values and gradients as the eager head, and microbatches of new
    token counts (so new vocabulary slice widths and chunk remainders) reuse the compiled graphs.
    aot_eager traces like inductor without a C compiler. Token counts, slice widths and chunk
    remainders unlike the other sizes here, which a first compile would specialize to."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(7)
    H, V, chunk_size = 8, 300, 16
    weight, bias = torch.randn(V, H, requires_grad=True), torch.randn(V, requires_grad=True)
    graphs = []
    # 39, 46, 57 tokens: slices of 123, 104, 84 columns; 33 = 2 x 16 + 1 tokens: no chunk of one row (a shape
    # of its own to a compiler: 0/1 specialization), the last chunk takes 17
    for B, L in [(3, 13), (2, 23), (3, 19), (3, 11)]:
        hidden = torch.randn(B, L, H, requires_grad=True)
        labels = torch.randint(0, V, (B, L))
        c_lp, c_h = torch.randn(B, L), torch.randn(B, L)
        results = []
        for backend in (None, "aot_eager"):
            out = response_log_probs_from_hidden(hidden, weight, labels, chunk_size, True, lm_head_bias=bias,
                                                 compile_backend=backend)
            loss = (out["log_probs"] * c_lp + out["token_entropy"] * c_h).sum()
            results.append([out["log_probs"], out["token_entropy"], *torch.autograd.grad(loss, [hidden, weight, bias])])
        for got, expected in zip(results[1], results[0]):
            close(got, expected, atol=1e-5, rtol=1e-5)
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs == [2, 2, 2, 2], graphs  # one for the forward chunks, one for the backward slices
    assert not torch._dynamo.utils.counters["graph_break"]  # each runs whole, as one graph
    torch._dynamo.reset()


def test_spans_cover_everything_in_order_and_leave_no_piece_of_one():
    assert list(_spans(10, 3)) == [(0, 3), (3, 6), (6, 10)]  # 9 + 1: the last span takes the one
    assert list(_spans(11, 3)) == [(0, 3), (3, 6), (6, 9), (9, 11)]
    assert list(_spans(4, 3)) == [(0, 4)] and list(_spans(3, 3)) == [(0, 3)] and list(_spans(2, 5)) == [(0, 2)]
    assert list(_spans(1, 3)) == [(0, 1)] and list(_spans(0, 3)) == []  # one in all: nothing to merge with


def test_chunked_head_gradcheck_float64():
    torch.manual_seed(2)
    hidden = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (2, 3))

    def both(h, w, b):
        out = response_log_probs_from_hidden(h, w, labels, 4, True, lm_head_bias=b)
        return out["log_probs"], out["token_entropy"]

    def log_probs_only(h, w, b):
        return response_log_probs_from_hidden(h, w, labels, 4, lm_head_bias=b)["log_probs"]

    assert torch.autograd.gradcheck(both, (hidden, weight, bias))
    assert torch.autograd.gradcheck(log_probs_only, (hidden, weight, bias))


def test_chunked_head_bf16_matches_bf16_head_upcast():
    torch.manual_seed(3)
    hidden, weight = torch.randn(2, 5, 8).bfloat16(), torch.randn(40, 8).bfloat16()
    labels = torch.randint(0, 40, (2, 5))
    out = response_log_probs_from_hidden(hidden, weight, labels, chunk_size=3, return_token_entropy=True)
    logits = (hidden @ weight.T).float()  # what a bf16 model's lm_head + upcast gives
    assert out["log_probs"].dtype == torch.float32
    close(out["log_probs"], torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0])
    close(out["token_entropy"], compute_entropy(logits))


def test_chunked_head_bf16_weight_gradient_is_summed_in_float32():
    # A bf16 head's gradient is a sum over tokens. Summed in float32 and rounded to bf16 once, it
    # does not depend on the chunking; rounding each token chunk's product to bf16 before adding it
    # up (what a plain `grad += a @ b` does) drifts with the number of chunks.
    torch.manual_seed(4)
    n_tokens, hidden_size, vocab = 256, 16, 32
    hidden = torch.randn(1, n_tokens, hidden_size).bfloat16()
    weight = torch.randn(vocab, hidden_size).bfloat16()
    labels = torch.randint(0, vocab, (1, n_tokens))

    def weight_grad(chunk_size: int) -> torch.Tensor:
        w = weight.clone().requires_grad_(True)
        response_log_probs_from_hidden(hidden, w, labels, chunk_size)["log_probs"].sum().backward()
        return w.grad

    one_chunk, per_token = weight_grad(n_tokens), weight_grad(1)
    assert per_token.dtype == torch.bfloat16
    same = (one_chunk == per_token).float().mean()
    assert same > 0.95, f"only {same:.0%} of the entries agree between 1 and {n_tokens} chunks"


class _OpSpy(TorchDispatchMode):
    """Records the ops run and the largest float32 tensor any op creates while active."""

    def __init__(self):
        super().__init__()
        self.largest, self.ops, self.matmul_shapes = 0, set(), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in ("mm", "addmm"):
            self.matmul_shapes.append(tuple(out.shape))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_head_backward_buffers_are_bounded_by_one_chunk():
    # Backward's float32 buffers stay within a forward chunk's (chunk_size, V), whatever N is: in
    # particular no float32 (V, H) accumulator for a bf16 head (0.93 GB for Qwen2.5-1.5B's).
    torch.manual_seed(5)
    n_tokens, hidden_size, vocab, chunk_size = 64, 16, 1000, 8  # V·H = 2 chunks' worth
    hidden = torch.randn(1, n_tokens, hidden_size).bfloat16().requires_grad_(True)
    weight = torch.randn(vocab, hidden_size).bfloat16().requires_grad_(True)
    labels = torch.randint(0, vocab, (1, n_tokens))
    out = response_log_probs_from_hidden(hidden, weight, labels, chunk_size, return_token_entropy=True)
    loss = (out["log_probs"] + 0.1 * out["token_entropy"]).sum()
    with _OpSpy() as spy:
        loss.backward()
    assert 0 < spy.largest <= chunk_size * vocab < vocab * hidden_size
    assert weight.grad.dtype == hidden.grad.dtype == torch.bfloat16
    # and no op whose output size depends on the data: on a GPU each one waits for the device
    assert "mm" in spy.ops and not spy.ops & {"nonzero", "_local_scalar_dense", "masked_select"}


def test_chunked_head_backward_slices_are_whole_multiples_of_128_columns():
    # An odd-width vocabulary slice gives its (N, V_s) buffers an odd row stride, and cuBLAS then
    # takes slow unaligned kernels. The raw width here is 16 * 1000 // 50 = 320: slices of 256
    # columns (the last takes the 232 left), and the gradients are still the unchunked head's.
    torch.manual_seed(6)
    n_tokens, hidden_size, vocab, chunk_size = 50, 8, 1000, 16
    hidden = torch.randn(1, n_tokens, hidden_size, requires_grad=True)
    weight = torch.randn(vocab, hidden_size, requires_grad=True)
    labels = torch.randint(0, vocab, (1, n_tokens))
    out = response_log_probs_from_hidden(hidden, weight, labels, chunk_size, return_token_entropy=True)
    with _OpSpy() as spy:
        grads = torch.autograd.grad((out["log_probs"] - 0.3 * out["token_entropy"]).sum(), [hidden, weight])
    slice_logits = [shape[1] for shape in spy.matmul_shapes if shape[0] == n_tokens and shape[1] != hidden_size]
    assert slice_logits == [256, 256, 256, 232]
    ref_lp, ref_h = naive_log_probs_and_entropy(hidden, weight, labels)
    for got, ref in zip(grads, torch.autograd.grad((ref_lp - 0.3 * ref_h).sum(), [hidden, weight])):
        close(got, ref, atol=1e-5, rtol=1e-5)


def test_chunked_head_saves_no_full_logits():
    B, L, H, V = 4, 16, 8, 100  # N·V = 6400 > V·H = 800: the weight is not the largest saved tensor
    hidden = torch.randn(B, L, H, requires_grad=True)
    weight = torch.randn(V, H, requires_grad=True)
    labels = torch.randint(0, V, (B, L))
    chunked = max_saved_numel(lambda: response_log_probs_from_hidden(hidden, weight, labels, 16, True))
    naive = max_saved_numel(lambda: naive_log_probs_and_entropy(hidden, weight, labels))
    assert naive >= B * L * V  # the check can fail: the naive route does keep (B, T, V)
    assert chunked == V * H


def test_chunked_head_is_stable_for_huge_logits():
    # logits (1000, 1000, -1000): p = (1/2, 1/2, 0), log p(label 0) = -ln 2, H = ln 2
    hidden = T([[[1000.0]]])
    out = response_log_probs_from_hidden(hidden, T([[1.0], [1.0], [-1.0]]), T([[0]]), 4, True)
    close(out["log_probs"], [[-LN(2)]])
    close(out["token_entropy"], [[LN(2)]])


def test_chunked_head_rejects_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size"):
        response_log_probs_from_hidden(
            torch.zeros(1, 2, 3), torch.zeros(4, 3), torch.zeros(1, 2, dtype=torch.long), 0
        )


# ------------------------------------------------------------------- get_response_log_probs
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_get_response_log_probs_uniform_model(chunk_size):
    model = tiny_qwen(tie=False)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: log p = -ln 64, H = ln 64
    ids = torch.randint(0, 64, (2, 6))
    out = get_response_log_probs(model, ids, torch.randint(0, 64, (2, 6)), True, chunk_size=chunk_size)
    close(out["log_probs"], torch.full((2, 6), -LN(64)))
    close(out["token_entropy"], torch.full((2, 6), LN(64)))
    assert "token_entropy" not in get_response_log_probs(model, ids, ids, chunk_size=chunk_size)


@pytest.mark.parametrize("tie", [False, True])
def test_get_response_log_probs_chunked_equals_naive_with_gradients(tie):
    model = tiny_qwen(tie)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    ids, labels = torch.randint(0, 64, (3, 9)), torch.randint(0, 64, (3, 9))
    attention_mask = torch.ones(3, 9, dtype=torch.long)
    attention_mask[1, 6:] = 0  # right padding
    results = []
    for chunk_size in (None, 5):
        model.zero_grad()
        out = get_response_log_probs(
            model, ids, labels, True, chunk_size=chunk_size, attention_mask=attention_mask
        )
        (out["log_probs"].sum() + 0.3 * out["token_entropy"].sum()).backward()
        results.append((out, {name: p.grad.clone() for name, p in model.named_parameters()}))
    (naive, naive_grads), (chunked, chunked_grads) = results
    close(chunked["log_probs"], naive["log_probs"], atol=1e-5, rtol=1e-5)
    close(chunked["token_entropy"], naive["token_entropy"], atol=1e-5, rtol=1e-5)
    assert naive_grads.keys() == chunked_grads.keys()
    for name in naive_grads:
        close(chunked_grads[name], naive_grads[name], atol=1e-5, rtol=1e-4)


def test_get_response_log_probs_chunked_avoids_full_logits_and_falls_back_on_softcapping():
    model = tiny_qwen(tie=True, vocab=128)
    ids = torch.randint(0, 128, (2, 40))  # N·V = 10240 > V·H = 4096 and any activation

    def run(chunk_size):
        return get_response_log_probs(model, ids, ids, True, chunk_size=chunk_size)

    assert max_saved_numel(lambda: run(None)) >= 2 * 40 * 128
    assert max_saved_numel(lambda: run(16)) < 2 * 40 * 128
    model.config.final_logit_softcapping = 30.0  # a head the chunked path does not replicate
    assert max_saved_numel(lambda: run(16)) >= 2 * 40 * 128


# ------------------------------------------------------------------------------- masked ops
def test_masked_mean_and_normalize_by_hand():
    x = T([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = T([[True, True, False], [False, False, False]])
    close(masked_mean(x, mask), 1.5)
    close(masked_mean(x, mask, dim=0), [1.0, 2.0, float("nan")], equal_nan=True)
    row = masked_mean(x, mask, dim=1)
    close(row[0], 1.5)
    assert torch.isnan(row[1])  # a mean over nothing: NaN, by design
    close(masked_mean(x, mask.float(), dim=-1)[0], 1.5)  # 0/1 float masks work too
    close(masked_normalize(x, mask), 3.0)
    close(masked_normalize(x, mask, dim=1, normalize_constant=2.0), [1.5, 0.0])
    close(masked_normalize(x, mask, dim=0, normalize_constant=4.0), [0.25, 0.5, 0.0])


# ---------------------------------------------------------------------------- aggregate_loss
LOSS = T([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = T([[True, True, False], [False, False, False]])  # row 1 has no response token


@pytest.mark.parametrize(
    "mode, constant, expected, grad_on_token",
    [
        ("seq_mean_token_mean", None, 1.5 / 2, 1 / 2 / 2),  # row means (1.5, 0), batch of 2
        ("token_mean", None, 3 / 2, 1 / 2),  # 2 tokens in this microbatch
        ("token_mean", 6.0, 3 / 6, 1 / 6),  # 6 tokens in the whole step
        ("seq_mean_token_sum_norm", 3.0, (3 / 3 + 0) / 2, 1 / 3 / 2),
    ],
)
def test_aggregate_loss_by_hand_with_empty_row(mode, constant, expected, grad_on_token):
    loss = LOSS.clone().requires_grad_()
    out = aggregate_loss(loss, MASK, mode, constant)
    close(out, expected)
    out.backward()
    close(loss.grad, MASK.float() * grad_on_token)  # finite everywhere, 0 off the response


def test_aggregate_loss_all_empty_is_zero_not_nan():
    loss = LOSS.clone().requires_grad_()
    for mode, constant in [
        ("seq_mean_token_mean", None),
        ("token_mean", None),
        ("seq_mean_token_sum_norm", 4.0),
    ]:
        out = aggregate_loss(loss, torch.zeros_like(MASK), mode, constant)
        out.backward()
        assert out.item() == 0.0 and torch.equal(loss.grad, torch.zeros_like(loss))


@pytest.mark.parametrize(
    "mode, constant, match",
    [
        ("sum", None, "unknown loss aggregation"),
        ("seq_mean_token_sum_norm", None, "needs normalize_constant"),
        ("token_mean", 0.0, "> 0"),
    ],
)
def test_aggregate_loss_errors(mode, constant, match):
    with pytest.raises(ValueError, match=match):
        aggregate_loss(LOSS, MASK, mode, constant)


# ---------------------------------------------------------------------------------------- SFT
def test_sft_microbatch_train_step_value_gradient_and_accumulation():
    log_probs = T([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]], requires_grad=True)
    mask = T([[False, True, True], [True, False, False]])
    # masked NLL sums (5, 4) / constant 2 -> (2.5, 2); mean over B=2 -> 2.25; / GA 2 -> 1.125
    loss, meta = sft_microbatch_train_step(
        log_probs, mask, gradient_accumulation_steps=2, normalize_constant=2.0
    )
    close(loss, 1.125)
    close(meta["token_nll"], 9 / 3)
    assert meta["response_tokens"].item() == 3
    expected_grad = -mask.float() / (2 * 2 * 2)  # -1 / (constant · B · GA) on response tokens
    close(log_probs.grad, expected_grad)
    sft_microbatch_train_step(log_probs, mask, 2, 2.0)
    close(log_probs.grad, 2 * expected_grad)  # accumulated, never zeroed


def test_sft_microbatch_loss_does_not_backward():
    log_probs = torch.zeros(1, 2, requires_grad=True)
    loss, _ = sft_microbatch_loss(log_probs, torch.ones(1, 2, dtype=torch.bool), 1)
    assert log_probs.grad is None and loss.requires_grad


# ------------------------------------------------------------------------- group rewards
def exact_match_reward(response, truth):
    return {"reward": float(response == truth), "format_reward": 1.0}


def test_group_normalized_rewards_by_hand():
    responses = ["1", "2", "3", "7", "7", "7"]
    truths = ["1"] * 3 + ["7"] * 3
    adv, raw, meta = compute_group_normalized_rewards(exact_match_reward, responses, truths, 3, 1e-6, True)
    # group 1: rewards (1, 0, 0), mean 1/3, unbiased var ((2/3)^2 + 2 (1/3)^2) / 2 = 1/3
    std = math.sqrt(1 / 3)
    close(raw, [1.0, 0, 0, 1, 1, 1])
    close(adv, [(2 / 3) / (std + 1e-6), (-1 / 3) / (std + 1e-6), (-1 / 3) / (std + 1e-6), 0, 0, 0])
    assert adv.shape == raw.shape == (6,) and not torch.isnan(adv).any()  # identical group: 0, not NaN
    assert meta["reward_mean"] == pytest.approx(4 / 6) and meta["format_reward_mean"] == 1.0
    assert meta["reward_max"] == 1.0 and meta["reward_min"] == 0.0
    adv, _, _ = compute_group_normalized_rewards(exact_match_reward, responses, truths, 3, 1e-6, False)
    close(adv, [2 / 3, -1 / 3, -1 / 3, 0, 0, 0])


def test_group_normalized_advantages_from_a_reward_tensor():
    # groups (1, 0, 0, 0) and (1, 1, 1, 1): means 1/4 and 1; sample stds sqrt(1/4) = 1/2 and 0
    adv, group_std = group_normalized_advantages(T([1.0, 0, 0, 0, 1, 1, 1, 1]), 4, 1e-6, True)
    close(group_std, [0.5, 0.0])
    close(adv, [1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0])  # (r - 1/4) / (1/2 + eps); an equal group: 0, not NaN
    adv, _ = group_normalized_advantages(T([1.0, 0, 0, 0, 1, 1, 1, 1]), 4, 1e-6, False)
    close(adv, [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])


@pytest.mark.parametrize(
    "n_truths, group_size, by_std, match",
    [(3, 2, False, "groups of"), (2, 3, False, "ground truths"), (3, 1, True, "group_size >= 2")],
)
def test_group_normalized_rewards_errors(n_truths, group_size, by_std, match):
    with pytest.raises(ValueError, match=match):
        compute_group_normalized_rewards(
            exact_match_reward, ["a"] * 3, ["a"] * n_truths, group_size, 1e-6, by_std
        )


# --------------------------------------------------------------------- policy-gradient losses
def test_naive_policy_gradient_loss_by_hand():
    log_probs = T([[-1.0, -2.0], [-3.0, -4.0]])
    close(compute_naive_policy_gradient_loss(T([[2.0], [-1.0]]), log_probs), [[2.0, 4.0], [-3.0, -4.0]])
    close(compute_naive_policy_gradient_loss(T([2.0, -1.0]), log_probs), [[2.0, 4.0], [-3.0, -4.0]])  # (B,)


# ratio r and advantage A per token; ε = 0.2: (loss, clipped)
CLIP_CASES = [
    (1.5, 1.0, -1.2, True),  # r above 1+ε, A > 0: the clipped 1.2 is taken
    (1.5, -1.0, 1.5, False),  # r above 1+ε, A < 0: min picks the unclipped -1.5
    (0.5, 1.0, -0.5, False),  # r below 1-ε, A > 0: unclipped 0.5 < 0.8
    (0.5, -1.0, 0.8, True),  # r below 1-ε, A < 0: clipped -0.8 < -0.5
    (1.1, 1.0, -1.1, False),  # inside the range
    (1.5, 0.0, 0.0, False),  # A = 0: both terms equal
]


def test_grpo_clip_loss_bounds_and_gradient():
    ratio = T([[c[0] for c in CLIP_CASES]])
    adv = T([[c[1] for c in CLIP_CASES]]).T  # one sequence per case
    old = torch.full((len(CLIP_CASES), 1), -1.0)
    policy = (old + torch.log(ratio.T)).requires_grad_()
    loss, meta = compute_grpo_clip_loss(adv, policy, old, cliprange=0.2)
    close(loss[:, 0], [c[2] for c in CLIP_CASES])
    assert meta["clipped"][:, 0].tolist() == [c[3] for c in CLIP_CASES]
    close(meta["ratio"][:, 0], ratio[0])
    loss.sum().backward()
    # d(-r A)/d log π = -r A where the unclipped term is taken, 0 where the clipped one is
    expected = [0.0 if clipped or a == 0 else -r * a for r, a, _, clipped in CLIP_CASES]
    close(policy.grad[:, 0], expected)


def test_grpo_clip_loss_asymmetric_bounds():
    old = torch.zeros(2, 1)
    policy = torch.log(T([[1.25], [0.75]]))
    adv = T([[1.0], [-1.0]])
    loss, meta = compute_grpo_clip_loss(adv, policy, old, cliprange=0.2)  # symmetric: both clipped
    close(loss[:, 0], [-1.2, 0.8])
    assert meta["clipped"].all()
    loss, meta = grpo_clip_loss(adv, policy, old, PolicyLossConfig("grpo_clip", cliprange=0.2, cliprange_high=0.28))
    close(loss[:, 0], [-1.25, 0.8])  # 1.25 < 1.28 passes the higher ceiling; the floor still binds
    assert meta["clipped"][:, 0].tolist() == [False, True]
    loss, _ = grpo_clip_loss(adv, policy, old, PolicyLossConfig("grpo_clip", cliprange=0.3, cliprange_high=0.2))
    close(loss[:, 0], [-1.2, 0.75])  # a wider floor only


def test_gspo_sequence_ratio_and_per_token_gradient():
    old = torch.zeros(3, 3)
    # row 0: log-ratios 0.1, 0.3 on the response (the masked 5.0 must not count) -> s = exp(0.2)
    # row 1: log-ratio 0.6 everywhere -> s = exp(0.6) > 1.25: clipped for A > 0 (ε = 0.25)
    # row 2: no response token -> s = 1, no NaN
    policy = T([[0.1, 0.3, 5.0], [0.6, 0.6, 0.6], [2.0, 2.0, 2.0]], requires_grad=True)
    mask = T([[True, True, False], [True, True, True], [False, False, False]])
    adv = T([[2.0], [1.0], [1.0]])
    gspo = PolicyLossConfig("grpo_clip", cliprange=0.25, importance_level="sequence")
    loss, meta = grpo_clip_loss(adv, policy, old, gspo, response_mask=mask)
    s0 = math.exp(0.2)  # 1.221 < 1.25: not clipped
    close(meta["ratio"], [[s0] * 3, [math.exp(0.6)] * 3, [1.0] * 3])
    close(loss[0], [-2 * s0] * 3)
    close(loss[1], [-1.25] * 3)
    assert meta["clipped"][1].all() and not meta["clipped"][0].any()
    (loss * mask).sum().backward()
    # GSPO-token: d(-A sg(s) π/sg(π))/d log π_t = -A s on each response token of an unclipped row
    close(policy.grad, [[-2 * s0, -2 * s0, 0.0], [0.0] * 3, [0.0] * 3])


def test_grpo_clip_loss_errors():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="cliprange"):
        grpo_clip_loss(torch.zeros(1, 1), x, x, PolicyLossConfig("grpo_clip", cliprange=None, cliprange_high=0.2))
    with pytest.raises(ValueError, match="cliprange"):
        compute_grpo_clip_loss(torch.zeros(1, 1), x, x, None)
    with pytest.raises(ValueError, match="response_mask"):
        grpo_clip_loss(torch.zeros(1, 1), x, x, PolicyLossConfig("grpo_clip", importance_level="sequence"))
    with pytest.raises(ValueError, match="importance_level"):
        grpo_clip_loss(torch.zeros(1, 1), x, x, PolicyLossConfig("grpo_clip", importance_level="seq"))


def test_k3_kl_by_hand():
    policy = T([[-1.0, -2.0, -0.5]])
    close(compute_k3_kl(policy, policy), [[0.0, 0.0, 0.0]])
    ref = policy + T([[0.5, -1.0, 0.0]])  # gaps d = ref - log π: e^d - d - 1
    close(compute_k3_kl(policy, ref), [[math.exp(0.5) - 1.5, math.exp(-1.0), 0.0]])


def test_policy_gradient_loss_dispatch():
    log_probs = T([[-1.0, -2.0]])
    raw, adv = T([[3.0]]), T([[-0.5]])
    loss, meta = compute_policy_gradient_loss(log_probs, "no_baseline", raw_rewards=raw, advantages=adv)
    close(loss, [[3.0, 6.0]])  # -3 · (-1, -2)
    assert meta == {}
    loss, _ = compute_policy_gradient_loss(
        log_probs, "reinforce_with_baseline", raw_rewards=raw, advantages=adv
    )
    close(loss, [[-0.5, -1.0]])
    old = T([[-1.0, -1.0]])  # ratios (1, e^-1): the second is below 0.8, A < 0 -> clipped at -0.8·A
    loss, meta = compute_policy_gradient_loss(log_probs, "grpo_clip", None, adv, old, 0.2)
    close(loss, [[0.5, 0.4]])
    assert meta["clipped"].tolist() == [[False, True]]


def test_policy_gradient_loss_kl_penalty_value_and_gradient():
    policy = T([[-1.0, -2.0]], requires_grad=True)
    ref = T([[-0.5, -3.0]])  # gaps 0.5, -1
    adv = T([[1.0]])
    kl_penalty = PolicyLossConfig("reinforce_with_baseline", beta=0.1)
    loss, meta = policy_gradient_loss(policy, kl_penalty, advantages=adv, ref_log_probs=ref)
    kl = [math.exp(0.5) - 1.5, math.exp(-1.0)]
    close(meta["kl"], [kl])
    close(loss, [[1.0 + 0.1 * kl[0], 2.0 + 0.1 * kl[1]]])
    loss.sum().backward()
    # d/dlogπ: -A + β (1 - e^(ref - logπ))
    close(policy.grad, [[-1 + 0.1 * (1 - math.exp(0.5)), -1 + 0.1 * (1 - math.exp(-1.0))]])
    # ref == policy: KL 0 and the loss is the plain one; beta 0 only reports the KL
    loss, meta = policy_gradient_loss(policy, kl_penalty, advantages=adv, ref_log_probs=policy.detach())
    close(loss, [[1.0, 2.0]])
    close(meta["kl"], [[0.0, 0.0]])
    loss, meta = policy_gradient_loss(policy, PolicyLossConfig("reinforce_with_baseline"), advantages=adv, ref_log_probs=ref)
    close(loss, [[1.0, 2.0]])
    assert "kl" in meta


def test_policy_gradient_loss_tis_weights_capped_and_detached():
    policy = T([[-1.0, -1.0, -1.0]], requires_grad=True)
    # π/π_rollout = 1, 1.5, 3 -> capped at 2. A rollout tensor that carries a graph must get no gradient.
    rollout = (policy.detach() - T([[0.0, LN(1.5), LN(3.0)]])).requires_grad_()
    adv = T([[1.0]])
    tis = PolicyLossConfig("reinforce_with_baseline", tis_cap=2.0)
    loss, meta = policy_gradient_loss(policy, tis, advantages=adv, rollout_log_probs=rollout)
    close(meta["tis_weight"], [[1.0, 1.5, 2.0]])
    close(loss, [[1.0, 1.5, 2.0]])  # -A log π = 1 per token, times w
    loss.sum().backward()
    close(policy.grad, [[-1.0, -1.5, -2.0]])  # -A·w: no gradient through the weight
    assert rollout.grad is None
    # with old_log_probs, the weight is π_old / π_rollout
    old = rollout.detach() + T([[LN(1.25), 0.0, 0.0]])
    clip_tis = PolicyLossConfig("grpo_clip", cliprange=0.2, tis_cap=2.0)
    _, meta = policy_gradient_loss(policy, clip_tis, advantages=adv, old_log_probs=old, rollout_log_probs=rollout)
    close(meta["tis_weight"], [[1.25, 1.0, 1.0]])


def test_policy_gradient_loss_sequence_tis_weights_each_response_by_its_capped_probability_ratio():
    policy = T([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]], requires_grad=True)
    # per-token log ratios log π/π_rollout; the third token of row 0 is padding and must not count
    log_ratio = T([[LN(1.5), LN(1.2), LN(100.0)], [LN(0.5), LN(0.5), LN(0.5)], [LN(3.0), LN(3.0), 0.0]])
    mask = T([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    rollout = policy.detach() - log_ratio
    adv = T([[1.0], [1.0], [-1.0]])
    tis = PolicyLossConfig("reinforce_with_baseline", tis_cap=2.0, tis_level="sequence")
    loss, meta = policy_gradient_loss(policy, tis, advantages=adv, rollout_log_probs=rollout, response_mask=mask)
    # row 0: 1.5 * 1.2 = 1.8; row 1: 0.5^3 = 0.125; row 2: 9 -> capped at 2; every token of a row alike
    close(meta["tis_weight"], [[1.8, 1.8, 1.8], [0.125, 0.125, 0.125], [2.0, 2.0, 2.0]])
    close(loss, [[1.8, 1.8, 1.8], [0.125, 0.125, 0.125], [-2.0, -2.0, -2.0]])  # -A log π = A per token, times w
    loss.sum().backward()
    close(policy.grad, [[-1.8, -1.8, -1.8], [-0.125, -0.125, -0.125], [2.0, 2.0, 2.0]])
    # a response thousands of tokens long whose ratio overflows exp gets the cap, not inf
    long = T([[1.0] * 4000])
    weight = truncated_importance_weight(long, T([[0.0] * 4000]), tis, torch.ones(1, 4000))
    close(weight, [[2.0] * 4000])
    with pytest.raises(ValueError, match="tis_level='sequence' needs response_mask"):
        policy_gradient_loss(policy, tis, advantages=adv, rollout_log_probs=rollout)
    with pytest.raises(ValueError, match="unknown tis_level"):
        PolicyLossConfig("reinforce_with_baseline", tis_cap=2.0, tis_level="geometric")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"loss_type": "ppo"}, "unknown loss_type"),
        ({"loss_type": "no_baseline"}, "needs raw_rewards"),
        ({"loss_type": "reinforce_with_baseline"}, "needs advantages"),
        ({"loss_type": "grpo_clip", "advantages": torch.zeros(1, 1), "cliprange": 0.2}, "old_log_probs"),
        (
            {"loss_type": "grpo_clip", "advantages": torch.zeros(1, 1), "old_log_probs": torch.zeros(1, 2)},
            "cliprange",
        ),
    ],
)
def test_policy_gradient_loss_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_policy_gradient_loss(torch.zeros(1, 2), **kwargs)


@pytest.mark.parametrize(
    "options, tensors, match",
    [
        ({"loss_type": "reinforce_with_baseline", "importance_level": "sequence"}, {"advantages": torch.zeros(1, 1)},
         "needs loss_type='grpo_clip'"),
        ({"loss_type": "reinforce_with_baseline", "cliprange_high": 0.28}, {"advantages": torch.zeros(1, 1)},
         "needs loss_type='grpo_clip'"),
        ({"loss_type": "no_baseline", "importance_level": "word"}, {"raw_rewards": torch.zeros(1, 1)}, "importance_level"),
        ({"loss_type": "no_baseline", "beta": 0.1}, {"raw_rewards": torch.zeros(1, 1)}, "ref_log_probs"),
        ({"loss_type": "no_baseline", "tis_cap": 2.0}, {"raw_rewards": torch.zeros(1, 1)}, "rollout_log_probs"),
        ({"loss_type": "no_baseline", "tis_cap": 0.0}, {"raw_rewards": torch.zeros(1, 1)}, "tis_cap must be > 0"),
    ],
)
def test_policy_loss_options_errors(options, tensors, match):
    with pytest.raises(ValueError, match=match):
        policy_gradient_loss(torch.zeros(1, 2), PolicyLossConfig(**options), **tensors)


# ------------------------------------------------------------------------- GRPO microbatch step
def test_grpo_microbatch_train_step_hand_gradient_and_accumulation():
    log_probs = T([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]], requires_grad=True)
    mask = T([[True, True, True], [True, False, False]])
    adv = T([[2.0], [-1.0]])
    loss, meta = grpo_microbatch_train_step(log_probs, mask, 4, "reinforce_with_baseline", advantages=adv)
    # row losses: mean(2, 4, 6) = 4 and -1; batch mean 1.5; / GA 4 = 0.375
    close(loss, 0.375)
    close(meta["loss_per_token"], (2 + 4 + 6 - 1) / 4)
    expected = T([[-2 / 3, -2 / 3, -2 / 3], [1.0, 0.0, 0.0]]) / 2 / 4  # -A / n_tokens / B / GA
    close(log_probs.grad, expected)
    grpo_microbatch_train_step(log_probs, mask, 4, "reinforce_with_baseline", advantages=adv)
    close(log_probs.grad, 2 * expected)


def test_grpo_token_mean_with_step_constant_equals_big_batch_token_mean():
    torch.manual_seed(4)
    log_probs = torch.randn(4, 5)
    mask = torch.rand(4, 5) > 0.4
    mask[3] = False  # one empty response too
    adv = torch.randn(4, 1)
    # one big batch: the mean over all response tokens of -A log π
    big = log_probs.clone().requires_grad_()
    expected = (-(adv * big))[mask].mean()
    expected.backward()
    step = log_probs.clone().requires_grad_()
    total = 0.0
    for rows in (slice(0, 2), slice(2, 4)):  # two microbatches, each divided by the step's token count
        loss, _ = grpo_microbatch_loss(
            step[rows],
            mask[rows],
            float(mask.sum()),
            PolicyLossConfig("reinforce_with_baseline", loss_agg="token_mean"),
            advantages=adv[rows],
        )
        loss.backward()
        total += loss.item()
    assert total == pytest.approx(expected.item(), abs=1e-6)  # the microbatch sums add up to the step's mean
    close(step.grad, big.grad)


def test_grpo_seq_mean_token_sum_norm_and_no_nan_on_empty_rows():
    log_probs = T([[-1.0, -2.0], [-5.0, -5.0]], requires_grad=True)
    mask = T([[True, True], [False, False]])
    adv = T([[1.0], [1.0]])
    old = log_probs.detach()
    config = PolicyLossConfig(
        "grpo_clip", loss_agg="seq_mean_token_sum_norm", loss_normalize_constant=4.0, importance_level="sequence"
    )
    loss, meta = grpo_microbatch_loss(log_probs, mask, 2, config, advantages=adv, old_log_probs=old)
    loss.backward()
    # ratio 1 everywhere: row 0 sums -1 -1 = -2, / 4 = -0.5; row 1 empty: 0; batch mean -0.25; / GA -0.125
    close(loss, -0.125)
    close(log_probs.grad, [[-1 / 4 / 2 / 2] * 2, [0.0, 0.0]])
    close(meta["clip_fraction"], 0.0)
    close(meta["ratio_mean"], 1.0)


def test_grpo_microbatch_metadata_by_hand():
    policy = T([[0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    old = T([[0.0, -1.0, 1.0, 5.0]])  # ratios 1, e, 1/e, (masked)
    mask = T([[True, True, True, False]])
    ref = T([[0.5, 0.0, 0.0, 0.0]])
    rollout = old - T([[0.0, 0.0, LN(3.0), 0.0]])
    loss, meta = grpo_microbatch_loss(
        policy,
        mask,
        1,
        PolicyLossConfig("grpo_clip", cliprange=0.2, beta=0.0, tis_cap=2.0),
        advantages=T([[1.0]]),
        old_log_probs=old,
        ref_log_probs=ref,
        rollout_log_probs=rollout,
    )
    assert policy.grad is None  # the loss function does not call backward
    close(meta["clip_fraction"], 1 / 3)  # only ratio e (> 1.2, A > 0) is clipped; 1/e is not (A > 0)
    close(meta["ratio_mean"], (1 + math.e + 1 / math.e) / 3)
    close(meta["kl_mean"], (math.exp(0.5) - 1.5) / 3)
    close(meta["tis_weight_mean"], (1 + 1 + 2) / 3)
    # per-token: -min(r, clip r)·w = -(1·1, 1.2·1, e^-1·2); mean over 3 tokens
    close(loss, -(1 + 1.2 + 2 / math.e) / 3)


def test_grpo_clip_without_old_log_probs_is_on_policy():
    """One update per rollout batch: the sampling policy is this one, so the loss takes log π,
    detached, as the old log-probs: every ratio 1, the gradient that of -A·r at r = 1."""
    log_probs = T([[-1.0, -2.0]], requires_grad=True)
    mask = T([[True, True]])
    loss, meta = grpo_microbatch_loss(log_probs, mask, 1, PolicyLossConfig("grpo_clip", cliprange=0.2),
                                      advantages=T([[2.0]]))
    loss.backward()
    close(loss, -2.0)  # -min(1·2, clip(1)·2) per token, mean over 2
    close(log_probs.grad, [[-1.0, -1.0]])  # -A·r / 2 tokens, dr/dlog π = r = 1
    close(meta["ratio_mean"], 1.0)
    close(meta["clip_fraction"], 0.0)


def test_grpo_microbatch_errors():
    x, mask = torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        grpo_microbatch_loss(x, mask, 1, PolicyLossConfig("no_baseline", loss_agg="mean"), raw_rewards=torch.zeros(1, 1))
    with pytest.raises(ValueError, match="unknown loss_type"):
        grpo_microbatch_train_step(x, mask, 1, "dpo")
    with pytest.raises(ValueError, match="needs normalize_constant"):
        grpo_microbatch_loss(x, mask, 1, PolicyLossConfig(loss_agg="seq_mean_token_sum_norm"), advantages=torch.zeros(1, 1))


# ---------------------------------------------------------------------------------- token budget
def test_split_by_token_budget_counts_padded_tokens():
    # [3, 3] -> 2 x 3 = 6; adding 4 would pad to 3 x 4 = 12 > 10; [4, 5] -> 2 x 5 = 10; 9 alone
    assert split_by_token_budget([3, 3, 4, 5, 9], 10) == [[0, 1], [2, 3], [4]]
    assert split_by_token_budget([2, 2, 2, 2, 2], 10) == [[0, 1, 2, 3, 4]]
    assert split_by_token_budget([12, 13], 10) == [[0], [1]]  # longer than the budget: alone
    assert split_by_token_budget([], 10) == []
    with pytest.raises(ValueError, match="max_tokens"):
        split_by_token_budget([1], 0)


def test_split_by_token_budget_leaves_no_last_microbatch_of_one_when_it_can():
    # greedy: [10, 10, 10] then 50 alone; 50 takes the third 10 (2 x 50 = 100 fits): no batch of one
    assert split_by_token_budget([10, 10, 10, 50], 100) == [[0, 1], [2, 3]]
    assert split_by_token_budget([10, 10, 10, 50], 99) == [[0, 1, 2], [3]]  # 2 x 50 would not fit
    assert split_by_token_budget([10, 50], 100) == [[0, 1]]  # fits whole: unchanged
    assert split_by_token_budget([40, 60], 100) == [[0], [1]]  # the one before has nothing to give
    for lengths in ([3, 5, 7, 7, 8, 30, 31, 40], list(range(1, 60))):  # every sequence once, in order, in budget
        groups = split_by_token_budget(lengths, 64)
        assert [i for group in groups for i in group] == list(range(len(lengths)))
        assert all(len(group) * max(lengths[i] for i in group) <= 64 or len(group) == 1 for group in groups)
        assert len(groups[-1]) > 1 or 2 * lengths[-1] > 64


def test_microbatch_groups_fixed_slices_or_token_budget():
    lengths = [5, 3, 4, 3]
    assert microbatch_groups(lengths, 2) == [[1, 3], [2, 0]]  # length order (ties keep their order)
    assert microbatch_groups(lengths, 2, sort_by_length=False) == [[0, 1], [2, 3]]
    # budget 8: [3, 3] -> 6; + 4 would pad to 12; [4] + 5 would pad to 10; [5]
    assert microbatch_groups(lengths, 2, max_tokens=8) == [[1, 3], [2], [0]]
    assert microbatch_groups(lengths, 2, max_tokens=8, sort_by_length=False) == [[1, 3], [2], [0]]  # budgets sort


def test_cs336_functions_keep_the_assignment_signatures():
    """The CS336 API is an adapter over `PolicyLossConfig`; its own signatures carry no extra option."""
    import inspect

    from r1_lightning import functional

    expected = {
        "compute_grpo_clip_loss": "advantages, policy_log_probs, old_log_probs, cliprange",
        "compute_policy_gradient_loss":
            "policy_log_probs, loss_type, raw_rewards=None, advantages=None, old_log_probs=None, cliprange=None",
        "grpo_microbatch_train_step": "policy_log_probs, response_mask, gradient_accumulation_steps, loss_type, "
                                      "raw_rewards=None, advantages=None, old_log_probs=None, cliprange=None",
        "sft_microbatch_train_step":
            "policy_log_probs, response_mask, gradient_accumulation_steps, normalize_constant=1.0",
        "compute_group_normalized_rewards": "reward_fn, rollout_responses, repeated_ground_truths, group_size, "
                                            "advantage_eps, normalize_by_std",
    }
    for name, parameters in expected.items():
        signature = inspect.signature(getattr(functional, name))
        assert ", ".join(str(p).split(":")[0] + ("=" + repr(p.default) if p.default is not p.empty else "")
                         for p in signature.parameters.values()) == parameters, name
