"""Fused GPU kernels for the policy's elementwise ops, from Liger Kernel (`pip install 'r1-lightning[kernels]'`).

The GRPO update's GPU time is spent about as much in unfused elementwise ops (RMSNorm, SiLU-gating,
rotary embedding) as in matmuls: each reads and writes the (tokens, hidden) activations once per op,
forward, backward and in the gradient checkpointing recompute. Liger's Triton kernels do each in one
pass. `apply_fused_kernels` swaps them into a loaded Llama or Qwen2 model in place:

    rms_norm  every RMSNorm (both per decoder layer, and the final one) -> `LigerRMSNorm`
    swiglu    every MLP's `down(silu(gate(x)) * up(x))`                   -> `LigerSwiGLUMLP`
    rope      the architecture's `apply_rotary_pos_emb`                   -> `liger_rotary_pos_emb`

The new modules hold the old ones' parameters (the same tensors, under the same names), so the
state dict, checkpoints, the optimizer, FSDP2 sharding and `torch.compile` see no difference. Liger's
cross-entropy kernels are not used: the chunked LM head (`functional.logprobs`) already never holds
the full logits and returns what the losses need, per-token log-probs and entropy.
"""

from __future__ import annotations

import sys

import torch

FUSED_KERNELS = ("rms_norm", "swiglu", "rope")
# Architectures whose ops are exactly what Liger's kernels compute with their defaults: RMSNorm
# `weight * normed.to(input dtype)` (Liger's "llama" casting), a SiLU-gated MLP, rotate-half rope.
ARCHITECTURES = ("llama", "qwen2")


def check_fused_kernels(kernels: list[str] | None) -> list[str]:
    """The option's value as a list (empty: none), or a ValueError naming the option."""
    kernels = list(kernels or ())
    unknown = sorted(set(kernels) - set(FUSED_KERNELS))
    if unknown or len(set(kernels)) != len(kernels):
        raise ValueError(f"fused_kernels: choose each of {list(FUSED_KERNELS)} at most once (or null), got {kernels!r}")
    return kernels


def apply_fused_kernels(model: torch.nn.Module, kernels: list[str]) -> None:
    """Swap `kernels` (names from `FUSED_KERNELS`) of a Hugging Face Llama or Qwen2 causal LM for
    Liger's, in place. `rope` replaces the function in the architecture's modeling module, which
    the attention layers call by name: every model of that architecture in this process then uses
    it (as Liger's own `apply_liger_kernel_to_*` does); it computes the same function."""
    kernels = check_fused_kernels(kernels)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(f"fused_kernels: Liger's kernels are wired here for {list(ARCHITECTURES)} models, "
                         f"not {model_type!r}; set fused_kernels: null")
    if "swiglu" in kernels and config.hidden_act not in ("silu", "swish"):
        raise ValueError(f"fused_kernels: swiglu needs a SiLU-gated MLP, the model's hidden_act is {config.hidden_act!r}")
    try:
        from liger_kernel.transformers import LigerRMSNorm, LigerSwiGLUMLP, liger_rotary_pos_emb
    except ImportError as error:
        raise ImportError(f"fused_kernels needs Liger Kernel, a CUDA (Triton) package: pip install "
                          f"'r1-lightning[kernels]', or set fused_kernels: null ({error})") from error
    decoder = model.get_decoder()
    for layer in decoder.layers:
        if "rms_norm" in kernels:
            layer.input_layernorm = _liger_rms_norm(layer.input_layernorm, LigerRMSNorm)
            layer.post_attention_layernorm = _liger_rms_norm(layer.post_attention_layernorm, LigerRMSNorm)
        if "swiglu" in kernels:
            layer.mlp = _liger_swiglu(layer.mlp, LigerSwiGLUMLP, config)
    if "rms_norm" in kernels:
        decoder.norm = _liger_rms_norm(decoder.norm, LigerRMSNorm)
    if "rope" in kernels:
        modeling = sys.modules[type(decoder.layers[0].self_attn).__module__]
        modeling.apply_rotary_pos_emb = liger_rotary_pos_emb


def _liger_rms_norm(norm: torch.nn.Module, liger_cls: type) -> torch.nn.Module:
    """A `LigerRMSNorm` holding `norm`'s weight (the same Parameter) and epsilon."""
    fused = liger_cls(norm.weight.shape[0], eps=norm.variance_epsilon)
    fused.weight = norm.weight
    return fused


def _liger_swiglu(mlp: torch.nn.Module, liger_cls: type, config) -> torch.nn.Module:
    """A `LigerSwiGLUMLP` holding `mlp`'s three projections (the same modules). Built on the meta
    device: its own freshly initialized projections are replaced at once, so none is allocated."""
    with torch.device("meta"):
        fused = liger_cls(config, intermediate_size=mlp.gate_proj.out_features)
    fused.gate_proj, fused.up_proj, fused.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
    return fused
