"""`fused_kernels`: which ops of the policy Liger's kernels replace, and that the gradient is the same.

Liger's kernels are Triton (CUDA only), so here a stand-in `liger_kernel` package is put in
`sys.modules` whose `LigerRMSNorm`, `LigerSwiGLUMLP` and `liger_rotary_pos_emb` have the real ones'
signatures and compute each op from its definition in plain PyTorch, counting their calls. That
checks our wiring: every RMSNorm, MLP and rotary embedding of the model goes through the
replacement, with the model's own parameters and epsilon, and the gradient is unchanged.
tests/gpu/test_fused_kernels.py compares the real kernels' gradients on a GPU.
"""

from __future__ import annotations

import sys
import types
from collections import Counter
from collections.abc import Callable

import lightning as L
import pytest
import torch
from tiny_models import tiny_qwen2
from transformers.models.qwen2 import modeling_qwen2

from r1_lightning.functional import get_response_log_probs
from r1_lightning.kernels import FUSED_KERNELS, apply_fused_kernels
from r1_lightning.modules import SFTModule

VOCAB, LAYERS = 50, 2


def fake_liger(count: Callable[[str], None]) -> types.ModuleType:
    """A `liger_kernel.transformers` of reference implementations, each calling `count(its name)`."""

    class LigerRMSNorm(torch.nn.Module):
        def __init__(self, hidden_size, eps=1e-6, offset=0.0, casting_mode="llama", init_fn="ones", in_place=True):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(hidden_size))
            self.variance_epsilon = eps

        def forward(self, x):
            count("rms_norm")
            x32 = x.float()
            normed = x32 / torch.sqrt((x32 * x32).mean(-1, keepdim=True) + self.variance_epsilon)
            return self.weight * normed.to(x.dtype)

    class LigerSwiGLUMLP(torch.nn.Module):
        def __init__(self, config, intermediate_size=None):
            super().__init__()
            size = intermediate_size or config.intermediate_size
            self.gate_proj = torch.nn.Linear(config.hidden_size, size, bias=False)
            self.up_proj = torch.nn.Linear(config.hidden_size, size, bias=False)
            self.down_proj = torch.nn.Linear(size, config.hidden_size, bias=False)

        def forward(self, x):
            count("swiglu")
            gate = self.gate_proj(x)
            return self.down_proj(gate * torch.sigmoid(gate) * self.up_proj(x))

    def liger_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        count("rope")
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)

        def rotate(x):  # (x1, x2) -> (-x2, x1) over the two halves of the head dimension
            half = x.shape[-1] // 2
            return torch.cat([-x[..., half:], x[..., :half]], dim=-1)

        return q * cos + rotate(q) * sin, k * cos + rotate(k) * sin

    module = types.ModuleType("liger_kernel.transformers")
    module.LigerRMSNorm, module.LigerSwiGLUMLP, module.liger_rotary_pos_emb = (
        LigerRMSNorm, LigerSwiGLUMLP, liger_rotary_pos_emb)
    return module


def install_fake_liger(monkeypatch, count: Callable[[str], None]) -> None:
    """The stand-in Liger importable for this test; Qwen2's rotary function restored after it."""
    package = types.ModuleType("liger_kernel")
    package.transformers = fake_liger(count)
    monkeypatch.setitem(sys.modules, "liger_kernel", package)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", package.transformers)
    monkeypatch.setattr(modeling_qwen2, "apply_rotary_pos_emb", modeling_qwen2.apply_rotary_pos_emb)


@pytest.fixture
def calls(monkeypatch) -> Counter:
    """The stand-in Liger installed; the number of calls of each of its ops."""
    counter = Counter()
    install_fake_liger(monkeypatch, lambda name: counter.update([name]))
    return counter


def gradients(model, ids) -> dict[str, torch.Tensor]:
    """The gradient of a weighted sum of per-token log-probs (the chunked LM head, as in training)."""
    out = get_response_log_probs(model, ids[:, :-1], ids[:, 1:], return_token_entropy=True, chunk_size=5)
    weights = torch.linspace(-1.0, 1.0, out["log_probs"].numel()).view_as(out["log_probs"])
    ((weights * out["log_probs"]).sum() + 0.1 * out["token_entropy"].sum()).backward()
    return {name: p.grad for name, p in model.named_parameters()}


def test_fused_kernels_replace_every_norm_mlp_and_rotary_and_keep_the_gradient(calls):
    # eps far from the default, so a replacement that drops the model's own epsilon shows
    plain, fused = (tiny_qwen2(VOCAB, seed=0, rms_norm_eps=0.1) for _ in range(2))
    plain.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    fused.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(0))
    expected = gradients(plain, ids)  # first: `rope` replaces Qwen2's function for every Qwen2 model
    before = {name: p for name, p in fused.named_parameters()}
    apply_fused_kernels(fused, list(FUSED_KERNELS))
    assert {name: p for name, p in fused.named_parameters()} == before  # the same tensors, same names
    assert list(fused.state_dict()) == list(plain.state_dict())
    assert not calls
    got = gradients(fused, ids)
    # forward + the checkpointing recompute: 2 norms and 1 MLP and rotary per layer, the final norm
    assert calls == {"rms_norm": 2 * (2 * LAYERS) + 1, "swiglu": 2 * LAYERS, "rope": 2 * LAYERS}
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_fused_kernels_only_the_ones_named(calls):
    model = tiny_qwen2(VOCAB)
    apply_fused_kernels(model, ["swiglu"])
    model(torch.zeros(1, 4, dtype=torch.long))
    assert calls == {"swiglu": LAYERS}
    assert modeling_qwen2.apply_rotary_pos_emb is not sys.modules["liger_kernel.transformers"].liger_rotary_pos_emb


def test_fused_kernels_without_liger_fail_naming_the_option(monkeypatch):
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # as if not installed (import raises)
    with pytest.raises(ImportError, match=r"^fused_kernels needs Liger Kernel.*r1-lightning\[kernels\]") as error:
        apply_fused_kernels(tiny_qwen2(VOCAB), ["rms_norm"])
    assert "\n" not in str(error.value)


def test_fused_kernels_on_the_cpu_fail_naming_the_option(tiny_model_dir, calls):
    module = SFTModule(tiny_model_dir, fused_kernels=["rms_norm"])
    module.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(RuntimeError, match=r"^fused_kernels: Liger's kernels are Triton, CUDA only.*cpu"):
        module.configure_model()
    assert not calls


@pytest.mark.parametrize("kernels", [["cross_entropy"], ["rope", "rope"]])
def test_fused_kernels_unknown_or_repeated_names_are_refused(tiny_model_dir, kernels):
    with pytest.raises(ValueError, match=r"^fused_kernels: choose each of \['rms_norm', 'swiglu', 'rope'\]"):
        SFTModule(tiny_model_dir, fused_kernels=kernels)


def test_fused_kernels_refuse_other_architectures(calls):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=VOCAB))
    with pytest.raises(ValueError, match=r"^fused_kernels: .*\['llama', 'qwen2'\] models, not 'gpt2'"):
        apply_fused_kernels(model, ["rms_norm"])



def test_fused_kernels_under_torch_compile_same_gradient_and_no_recompile_across_lengths(monkeypatch):
    """The module swaps the kernels in before `compile` compiles the decoder layers: compiled, the
    stand-in kernels give the eager gradient, and new sequence lengths reuse the compiled graph.
    (The stand-in counts nothing here: compile would guard on the counts and recompile.)"""
    import torch._dynamo

    from r1_lightning.models import compile_decoder_layers

    install_fake_liger(monkeypatch, lambda name: None)
    torch._dynamo.reset()
    plain, fused = (tiny_qwen2(VOCAB, seed=0) for _ in range(2))
    # lengths unlike any of the tiny model's sizes, which a first compile would specialize to (duck sizing)
    batches = [torch.randint(0, VOCAB, (3, n), generator=torch.Generator().manual_seed(n)) for n in (12, 19, 27)]
    expected = []
    for ids in batches:
        expected.append(gradients(plain, ids))
        plain.zero_grad(set_to_none=True)
    apply_fused_kernels(fused, list(FUSED_KERNELS))
    compile_decoder_layers(fused, "aot_eager")
    torch._dynamo.utils.counters.clear()
    for ids, want in zip(batches, expected):
        got = gradients(fused, ids)
        for name, grad in want.items():
            torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6, msg=name)
        fused.zero_grad(set_to_none=True)
    assert modeling_qwen2.apply_rotary_pos_emb is sys.modules["liger_kernel.transformers"].liger_rotary_pos_emb
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # all layers, all three lengths
    torch._dynamo.reset()
