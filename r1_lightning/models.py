"""Loading the policy and its tokenizer from a hub id, a local folder, or a built-in config.

`builtin:<name>` names a model that ships inside the package as a config (no download): it is
written once as a normal Hugging Face folder under `R1_LIGHTNING_CACHE` (default
`~/.cache/r1_lightning`) and then loaded like any other local path.

A name that can only be a local path (`./x`, `../x`, `/x`, `~/x`, or more than one `/`) must exist,
and a hub id is loaded from the Hugging Face cache when it is there; otherwise, offline
(`HF_HUB_OFFLINE=1`) or with the hub out of reach, loading fails at once with a `ModelNotFoundError`
that says how to point at a local model, instead of retrying the network for a minute.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import huggingface_hub
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
T = TypeVar("T")
_POINT_AT_LOCAL = (
    "point at a local Hugging Face folder with --model.init_args.model_name_or_path /path/to/folder "
    "(builtin:quickstart works offline)"
)


class ModelNotFoundError(FileNotFoundError):
    """`model_name_or_path` names no local folder, or a hub model that cannot be fetched now."""


def looks_local(name: str) -> bool:
    """Whether `name` can only be a path: hub ids are `name` or `org/name`, never `./x`, `/x`, `~/x`
    or `a/b/c` (and never contain a Windows separator)."""
    separators = {os.sep, os.altsep} - {None, "/"}
    return (
        name.startswith(("./", "../", "/", "~")) or name in (".", "..") or name.count("/") > 1
        or any(sep in name for sep in separators)
    )


def resolve_model_path(name_or_path: str) -> str:
    """Turn `builtin:<name>` into a local folder (materialized on first use) and `~` into the home
    folder; pass anything else on. A name that can only be a local path must exist."""
    if not name_or_path.startswith(BUILTIN_PREFIX):
        if looks_local(name_or_path) and not Path(name_or_path).expanduser().exists():
            raise ModelNotFoundError(
                f"model path {name_or_path!r} does not exist (model_name_or_path takes an existing local "
                f"folder, a Hugging Face hub id such as Qwen/Qwen2.5-Math-1.5B, or builtin:quickstart)"
            )
        return os.path.expanduser(name_or_path)
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


def _hub_reachable(timeout_s: float = 5.0) -> bool:
    """One HEAD request to the hub through huggingface_hub's own session (its proxies and
    endpoint), without the retries that make an unreachable hub cost a minute per file."""
    try:
        huggingface_hub.get_session().head(huggingface_hub.constants.ENDPOINT, timeout=timeout_s)
    # DNS, refused, timeout, proxy: each the hub's HTTP library's own exception type, all "not now"
    except Exception:  # noqa: BLE001
        return False
    return True


def _from_pretrained(load: Callable[..., T], path: str, **kwargs) -> T:
    """`load(path, **kwargs)` for a `from_pretrained` of transformers. A hub id is taken from the local
    cache when it is there (no network); when it is not, offline or with the hub out of reach, fail
    at once with a `ModelNotFoundError` saying what to do."""
    if Path(path).exists():
        return load(path, **kwargs)
    try:
        return load(path, local_files_only=True, **kwargs)
    except OSError:
        pass  # not (completely) in the cache
    where = f"model {path!r} is not in the Hugging Face cache and"
    if huggingface_hub.is_offline_mode():
        raise ModelNotFoundError(f"{where} the hub is offline (HF_HUB_OFFLINE=1): {_POINT_AT_LOCAL}")
    if not _hub_reachable():
        endpoint = huggingface_hub.constants.ENDPOINT
        raise ModelNotFoundError(f"{where} {endpoint} cannot be reached: {_POINT_AT_LOCAL}")
    return load(path, **kwargs)


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
        tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, path)
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
    model = _from_pretrained(
        AutoModelForCausalLM.from_pretrained, resolve_model_path(name_or_path),
        dtype=torch_dtype, attn_implementation=attn_implementation,
    )
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def compile_backend(compile: bool | str | None) -> str | None:
    """The torch.compile backend a `compile` option names: True = "inductor", False / None = none."""
    return ("inductor" if compile is True else compile) or None


def compile_decoder_layers(model: torch.nn.Module, backend: str = "inductor") -> None:
    """`torch.compile` each decoder layer in place (`nn.Module.compile`: parameter names and
    checkpoints are unchanged). All layers share one compiled graph, sequence lengths are dynamic,
    and gradient checkpointing still wraps each layer. Models without a `model.layers` list are
    compiled whole."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    modules = list(layers) if isinstance(layers, torch.nn.ModuleList) and len(layers) else [model]
    for module in modules:
        module.compile(backend=backend, dynamic=True)
