"""The quickstart model: a two-layer Llama built from a config in code, with fresh random weights.

Sized for the CPU demo (see `MODEL_CONFIG`): small enough that SFT, GRPO rollouts and evaluation of
the whole quickstart fit in a few minutes on two cores, big enough to learn column addition.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from r1_lightning.quickstart.tokenizer import build_tokenizer

# 0.55M parameters. Two layers learn two-digit column addition in ~500-1,000 SFT steps of batch 32
# (400 left one-digit sums wrong, and GRPO then had the arithmetic to fix, not just the carries); a
# four-layer model costs ~1.7x as much per step on the CPU.
# Llama rather than Qwen2: for a `qwen2` folder, transformers 5's AutoTokenizer loads Qwen2Tokenizer,
# which replaces this tokenizer's pre-tokenizer and decoder with Qwen's byte-level ones.
MODEL_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,  # the full R1-Zero prompt (~105 tokens) + a response, with room
    "rope_theta": 10_000.0,
    "tie_word_embeddings": True,
}


def build_model(tokenizer: PreTrainedTokenizerBase, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A freshly initialized quickstart model for `tokenizer`; `overrides` replace `MODEL_CONFIG` keys."""
    config = LlamaConfig(
        **{**MODEL_CONFIG, **overrides},
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # seed the initialization without touching the caller's RNG
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def materialize(out_dir: str | os.PathLike[str], seed: int = 0) -> str:
    """Write the quickstart model and tokenizer as a Hugging Face folder; return its path.

    The folder loads with `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`
    like any downloaded checkpoint, so every phase treats the quickstart model as a normal one.
    """
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    build_model(tokenizer, seed=seed).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)
