"""The tests' tiny models and tokenizers: one factory each, imported by every test file that needs
one (tests/ is on the import path, as for `toy_rewards`)."""

from __future__ import annotations

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

# A 2-layer Qwen2 small enough for the CPU: 4 heads of 8 dimensions, 2 key/value heads.
TINY_QWEN2 = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2}


def tiny_qwen2(vocab_size: int, seed: int = 0, **config) -> Qwen2ForCausalLM:
    """A float32 Qwen2 with `TINY_QWEN2`'s shape unless `config` overrides it, random weights drawn
    from `torch.manual_seed(seed)`."""
    qwen2_config = Qwen2Config(**{**TINY_QWEN2, **config}, vocab_size=vocab_size)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(qwen2_config).float()


def word_level_tokenizer(
    vocab: dict[str, int], unk_token: str, per_character: bool = False, bos_token: str | None = None,
    **special_tokens: str,
) -> PreTrainedTokenizerFast:
    """A tokenizer with a fixed vocabulary: one token per whitespace-separated word, or per
    character (decoding then concatenates). `bos_token`: prepended on every encode that adds
    special tokens (so a forgotten `add_special_tokens=False` shows). `special_tokens`: pad_token,
    eos_token."""
    backend = Tokenizer(models.WordLevel(vocab, unk_token=unk_token))
    if per_character:
        backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
        backend.decoder = decoders.Fuse()
    else:
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos_token is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", special_tokens=[(bos_token, vocab[bos_token])]
        )
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special_tokens)


def char_vocab(chars: str) -> dict[str, int]:
    """<pad> 0, <eos> 1, then one id per character of `chars`: the vocabulary `char_tokenizer` reads."""
    return {token: i for i, token in enumerate(["<pad>", "<eos>", *chars])}


def char_tokenizer(vocab: dict[str, int]) -> PreTrainedTokenizerFast:
    """One token per character of a `char_vocab`, <pad> for padding and unknown, <eos> to end."""
    return word_level_tokenizer(vocab, "<pad>", per_character=True, pad_token="<pad>", eos_token="<eos>")
