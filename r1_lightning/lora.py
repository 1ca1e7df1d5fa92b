"""LoRA (Hu et al. 2021) on the policy through `peft`: every peft call of the package lives here.

The adapters are injected into the Hugging Face model in place (`peft.inject_adapter_in_model`), so
the policy stays a plain causal LM (same attributes, same forward) whose adapted linear layers hold
their frozen weight as `base_layer` and the trainable `lora_A` / `lora_B`. Only those get gradients
and AdamW state. Whatever leaves the trainer as a model — the weights a rollout engine is sent, the
Hugging Face export — is the *merged* model under the original parameter names
(W + alpha/rank · B·A, `merged_state_dict`): vLLM and `from_pretrained` load it as any checkpoint and
generate at full speed without LoRA kernels. The export also writes the adapter alone
(`save_adapter`), loadable with `peft.PeftModel.from_pretrained`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

ADAPTER = "default"  # peft's adapter name; one adapter per policy
ADAPTER_FOLDER = "adapter"  # inside a Hugging Face export folder


@dataclass(frozen=True)
class LoRAConfig:
    """The `lora` option of the policy modules (YAML: `lora: {rank: 16, alpha: 32}`).

    rank: r, the adapters' inner dimension. alpha: the scale numerator (updates are alpha/rank · B·A).
    dropout: on the adapters' input while training. target_modules: "all-linear" (every linear
    layer but the LM head, as peft reads it) or the module names to adapt, e.g. [q_proj, v_proj].
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: str | list[str] = field(default="all-linear")

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora.target_modules must name at least one module (or be 'all-linear')")
        if not isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", list(self.target_modules))

    def to_peft(self):
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_modules, bias="none", task_type="CAUSAL_LM")


def add_lora(model: torch.nn.Module, config: LoRAConfig, seed: int = 0) -> torch.nn.Module:
    """Inject fresh adapters into `model` in place (B = 0: the model's outputs are unchanged; A drawn
    from `seed`, so a run and its rerun start alike) and freeze everything else; return the model."""
    try:
        from peft import inject_adapter_in_model
    except ImportError as error:
        raise ImportError("model.init_args.lora needs peft: pip install peft") from error
    try:
        with torch.random.fork_rng(devices=[]):  # seed the initialization without touching the caller's RNG
            torch.manual_seed(seed)
            model = inject_adapter_in_model(config.to_peft(), model, adapter_name=ADAPTER)
    except ValueError as error:  # e.g. a target module the model does not have
        raise ValueError(f"model.init_args.lora.target_modules: {error}") from None
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(".lora_" in name)
    return model


def _lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def has_lora(model: torch.nn.Module) -> bool:
    return any(".lora_" in name for name, _ in model.named_parameters())


def merged_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (the model's full state dict) with each adapted layer merged, under the names the
    model had before `add_lora`: `<layer>.weight` = base weight + alpha/rank · B·A (in the base
    weight's dtype), `<layer>.bias` its base bias; no adapter tensors."""
    merged = {name: tensor for name, tensor in state.items() if ".lora_" not in name}
    with torch.no_grad():
        for prefix, layer in _lora_layers(model).items():
            base = merged.pop(f"{prefix}.base_layer.weight")
            delta = layer.get_delta_weight(ADAPTER).to(device=base.device, dtype=torch.float32)
            merged[f"{prefix}.weight"] = (base.float() + delta).to(base.dtype)
            if f"{prefix}.base_layer.bias" in merged:
                merged[f"{prefix}.bias"] = merged.pop(f"{prefix}.base_layer.bias")
    return merged


def save_adapter(model: torch.nn.Module, config: LoRAConfig, folder: str | Path, base_model: str) -> None:
    """Write the adapter alone as a peft folder (`adapter_config.json`, `adapter_model.safetensors`)
    that `peft.PeftModel.from_pretrained(<base model>, folder)` loads."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    peft_config = config.to_peft()
    peft_config.base_model_name_or_path = base_model
    peft_config.save_pretrained(str(folder))
    weights = get_peft_model_state_dict(model, adapter_name=ADAPTER)
    # named as a `PeftModel` around the model names them, which is what `from_pretrained` loads
    save_file({f"base_model.model.{name}": tensor.detach().contiguous().cpu() for name, tensor in weights.items()},
              str(folder / "adapter_model.safetensors"))
