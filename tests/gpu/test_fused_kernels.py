"""`fused_kernels`: Liger Kernel's real Triton kernels give the policy the gradient it had without them.

A small Qwen2 on cuda:0, the gradient of a weighted sum of per-token log-probs and entropies (the
chunked LM head, gradient checkpointing on, as in training) with and without RMSNorm, SwiGLU and
rotary swapped for Liger's; then one SFT update through the module's option. tests/test_kernels.py
checks the same wiring on the CPU with a stand-in for Liger.

    pytest tests/gpu/test_fused_kernels.py      # 1 GPU, liger-kernel installed; seconds
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from tiny_models import tiny_qwen2
from transformers.models.qwen2 import modeling_qwen2

from r1_lightning.functional import get_response_log_probs
from r1_lightning.kernels import FUSED_KERNELS, apply_fused_kernels

liger = pytest.importorskip("liger_kernel.transformers", reason="needs liger-kernel: pip install 'r1-lightning[kernels]'")

VOCAB = 512
SHAPE = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 3, "num_attention_heads": 8,
         "num_key_value_heads": 2, "rms_norm_eps": 1e-6}


def gradients(model, ids) -> dict[str, torch.Tensor]:
    out = get_response_log_probs(model, ids[:, :-1], ids[:, 1:], return_token_entropy=True, chunk_size=64)
    weights = torch.linspace(-1.0, 1.0, out["log_probs"].numel(), device=ids.device).view_as(out["log_probs"])
    ((weights * out["log_probs"]).sum() + 0.1 * out["token_entropy"].sum()).backward()
    return {name: p.grad.float() for name, p in model.named_parameters()}


@pytest.mark.parametrize(("dtype", "max_relative_error"), [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_liger_kernels_keep_the_gradient(dtype, max_relative_error, monkeypatch):
    monkeypatch.setattr(modeling_qwen2, "apply_rotary_pos_emb", modeling_qwen2.apply_rotary_pos_emb)  # restored after
    plain, fused = (tiny_qwen2(VOCAB, seed=0, **SHAPE).to("cuda", dtype) for _ in range(2))
    for model in (plain, fused):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(0, VOCAB, (4, 300), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    expected = gradients(plain, ids)  # first: `rope` replaces Qwen2's rotary function for every Qwen2 model
    apply_fused_kernels(fused, list(FUSED_KERNELS))
    layer = fused.model.layers[0]
    assert isinstance(layer.input_layernorm, liger.LigerRMSNorm) and isinstance(fused.model.norm, liger.LigerRMSNorm)
    assert isinstance(layer.mlp, liger.LigerSwiGLUMLP)
    assert modeling_qwen2.apply_rotary_pos_emb is liger.liger_rotary_pos_emb
    got = gradients(fused, ids)
    # Relative to each gradient's norm, floored at a thousandth of the whole gradient's: some are
    # rounding noise around zero (softmax ignores the key bias, so k_proj.bias's gradient is ~0).
    floor = 1e-3 * torch.stack([g.norm() for g in expected.values()]).norm()
    for name, grad in expected.items():
        error = (got[name] - grad).norm() / torch.maximum(grad.norm(), floor)
        assert error < max_relative_error, f"{name}: relative gradient error {error:.2e} ({dtype})"


def test_sft_update_with_fused_kernels(tiny_model_dir, toy_task_dir, tmp_path, monkeypatch):
    from r1_lightning.data import SFTDataModule
    from r1_lightning.modules import SFTModule

    monkeypatch.setattr(modeling_qwen2, "apply_rotary_pos_emb", modeling_qwen2.apply_rotary_pos_emb)
    module = SFTModule(tiny_model_dir, gradient_accumulation_steps=2, gradient_checkpointing=True,
                       logprob_chunk_size=64, fused_kernels=list(FUSED_KERNELS))
    trainer = L.Trainer(max_steps=2, accelerator="gpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=SFTDataModule(str(toy_task_dir / "sft.jsonl"), batch_size=8, shuffle=False))
    assert isinstance(module.policy.model.norm, liger.LigerRMSNorm)
    assert all(p.isfinite().all() for p in module.policy.parameters())
