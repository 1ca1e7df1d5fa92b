"""`compile`: the chunked LM head under inductor (Triton kernels) gives the eager head's log-probs,
entropies and gradients on a GPU, bf16 as in training, for several token counts without recompiling.
tests/test_functional.py checks the same on the CPU with aot_eager.

    pytest tests/gpu/test_compiled_head.py      # 1 GPU; the first compile takes a minute at most
"""

from __future__ import annotations

import torch
import torch._dynamo

from r1_lightning.functional import response_log_probs_from_hidden


def test_inductor_head_matches_eager_in_bf16():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    H, V, chunk_size = 256, 5000, 512  # V: not a multiple of the 128-column slices
    weight = (0.05 * torch.randn(V, H, device="cuda")).bfloat16().requires_grad_(True)
    graphs = []
    for n_tokens in (1500, 2300, 3100):
        hidden = torch.randn(1, n_tokens, H, device="cuda").bfloat16().requires_grad_(True)
        labels = torch.randint(0, V, (1, n_tokens), device="cuda")
        upstream = torch.randn(1, n_tokens, device="cuda")
        results = []
        for backend in (None, "inductor"):
            out = response_log_probs_from_hidden(hidden, weight, labels, chunk_size, True, compile_backend=backend)
            loss = (out["log_probs"] * upstream - 0.1 * out["token_entropy"]).sum()
            results.append([out["log_probs"], out["token_entropy"], *torch.autograd.grad(loss, [hidden, weight])])
        for name, got, expected in zip(("log_probs", "entropy", "grad hidden", "grad weight"), *results):
            error = (got.float() - expected.float()).norm() / expected.float().norm()
            assert error < 1e-2, f"{name} at {n_tokens} tokens: relative error {error:.2e}"
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs == [graphs[0]] * 3, graphs  # new token counts and slice widths: no recompile
    torch._dynamo.reset()
