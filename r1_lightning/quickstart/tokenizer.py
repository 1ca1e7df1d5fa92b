"""A tiny word-level tokenizer for the quickstart task, built in code (no download, no training).

Pieces, in the order the pre-tokenizer tries them:
- the R1-Zero tags `<think>`, `</think>`, `<answer>`, `</answer>` and `<|endoftext|>`: one token each;
- the words of the R1-Zero prompts and of the task's question, with or without one leading space
  (` conversation`), so a prompt costs about one token per word;
- any other single printable ASCII character, newline or tab: digits, `+`, `=`, spaces, and the
  letters of words the vocabulary does not know.

Decoding concatenates the pieces, so `decode(encode(text)) == text` for every printable-ASCII text,
spaces included: the reward parses the decoded response, and `</think> <answer>` must survive.
"""

from __future__ import annotations

import re
import string

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from r1_lightning.data.templates import load_template
from r1_lightning.quickstart.task import PROMPT_TEMPLATE, QUESTION_FORMAT

EOS_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<unk>"
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
CHARACTERS = [c for c in string.printable if c not in "\r\x0b\x0c"]  # 97: ASCII 32-126, \t, \n


def vocabulary_words() -> list[str]:
    """The whole-word tokens: every word of the R1-Zero prompts (full and short) and the question."""
    text = " ".join([load_template("r1_zero"), load_template(PROMPT_TEMPLATE), QUESTION_FORMAT])
    for tag in TAG_TOKENS:  # the tags are tokens of their own; their letters are not words
        text = text.replace(tag, " ")
    return sorted(set(re.findall(r"[A-Za-z]{2,}", text)))


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The quickstart tokenizer; the same vocabulary and ids on every call."""
    words = vocabulary_words()
    word_pieces = [piece for word in words for piece in (word, " " + word)]
    vocab = {}
    for token in [EOS_TOKEN, UNK_TOKEN, *TAG_TOKENS, *CHARACTERS, *word_pieces]:
        vocab.setdefault(token, len(vocab))

    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    # A known word (longest first, whole words only) or else one character: every character of the
    # text lands in exactly one piece, which is what makes decoding lossless.
    longest_first = sorted(words, key=len, reverse=True)
    pattern = r" ?(?:" + "|".join(longest_first) + r")\b|[\s\S]"
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_tokens([AddedToken(tag, normalized=False) for tag in TAG_TOKENS])
    tokenizer.add_special_tokens([AddedToken(EOS_TOKEN, normalized=False, special=True)])

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
