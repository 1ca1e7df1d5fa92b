"""Loading the policy and its tokenizer from a hub id, a local folder, or a built-in config.

`builtin:<name>` names a model that ships inside the package as a config (no download): it is
written once as a normal Hugging Face folder under `R1_LIGHTNING_CACHE` (default
`~/.cache/r1_lightning`) and then loaded like any other local path.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

BUILTIN_PREFIX = "builtin:"
GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(name_or_path: str) -> str:
    """Turn `builtin:<name>` into a local folder (materialized on first use); pass anything else on."""
    if not name_or_path.startswith(BUILTIN_PREFIX):
        return name_or_path
    name = name_or_path[len(BUILTIN_PREFIX):]
    if name != "quickstart":
        raise ValueError(f"unknown built-in model {name_or_path!r}; the built-in models are: builtin:quickstart")
    from r1_lightning.quickstart import build_model, build_tokenizer, materialize

    # Keyed by the model's config (architecture included) and the vocabulary, so a changed
    # built-in model is never served stale from the cache. Building the tiny model is cheap.
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):  # build_model seeds torch; leave the caller's RNG alone
        config = build_model(tokenizer).config
    recipe = config.to_json_string() + tokenizer.backend_tokenizer.to_str()
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    cache = Path(os.environ.get("R1_LIGHTNING_CACHE", Path.home() / ".cache" / "r1_lightning"))
    folder = cache / "models" / f"{name}-{digest}"
    if not (folder / "config.json").exists():
        materialize(folder)
    return str(folder)


def resolve_dtype(dtype: str) -> torch.dtype:
    """"auto" is bfloat16 on a CUDA device that supports it and float32 elsewhere (CPU tests stay exact)."""
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of 'auto', {', '.join(map(repr, _DTYPES))}; got {dtype!r}")
    return _DTYPES[dtype]


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    path = resolve_model_path(name_or_path)
    config_file = Path(path) / "tokenizer_config.json"
    tokenizer_class = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
    if tokenizer_class in GENERIC_TOKENIZER_CLASSES:
        # A tokenizer built with the `tokenizers` library (e.g. the quickstart's). transformers 5's
        # AutoTokenizer picks the class from the model type (qwen2 -> Qwen2Tokenizer) and rebuilds
        # its pre-tokenizer and decoder from the vocabulary, which silently changes splitting and
        # drops spaces on decode; the generic class loads tokenizer.json exactly as saved.
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        # Masks are built from lengths, never from pad ids, so reusing EOS as padding is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name_or_path: str,
    dtype: str = "auto",
    attn_implementation: str | None = None,
    gradient_checkpointing: bool = False,
) -> PreTrainedModel:
    """Load a causal LM for training. `attn_implementation=None` picks flash-attn when installed on
    CUDA, else PyTorch SDPA."""
    torch_dtype = resolve_dtype(dtype)
    if attn_implementation is None:
        attn_implementation = "sdpa"
        if torch.cuda.is_available() and torch_dtype != torch.float32:
            try:
                import flash_attn  # noqa: F401

                attn_implementation = "flash_attention_2"
            except ImportError:
                pass
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(name_or_path), dtype=torch_dtype, attn_implementation=attn_implementation
    )
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def compile_decoder_layers(model: torch.nn.Module, backend: str = "inductor") -> None:
    """`torch.compile` each decoder layer in place (`nn.Module.compile`: parameter names and
    checkpoints are unchanged). All layers share one compiled graph, sequence lengths are dynamic,
    and gradient checkpointing still wraps each layer. Models without a `model.layers` list are
    compiled whole."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    modules = list(layers) if isinstance(layers, torch.nn.ModuleList) and len(layers) else [model]
    for module in modules:
        module.compile(backend=backend, dynamic=True)
