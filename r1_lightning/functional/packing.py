"""Token ids -> the shifted batch every loss reads, and the cut of an update into microbatches.

Shapes: B = sequences, L = the longest prompt + output length; the packed tensors are (B, L-1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pack_prompt_and_output_ids(
    prompt_ids: Sequence[Sequence[int]], output_ids: Sequence[Sequence[int]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Concatenate prompt and output token ids, right-pad, and shift into inputs and labels.

    Args:
        prompt_ids, output_ids: B lists of token ids each (no special tokens are added).
        pad_token_id: fills the padding of both `input_ids` and `labels` (pad ids, not -100).

    Returns:
        input_ids (B, L-1) long: every token of the padded sequence but the last.
        labels (B, L-1) long: every token but the first (the next token at each input position).
        response_mask (B, L-1) bool: True exactly where the label is an output token.
        L is the longest prompt+output length in the batch.
    """
    if len(prompt_ids) != len(output_ids):
        raise ValueError(f"got {len(prompt_ids)} prompts but {len(output_ids)} outputs")
    if not prompt_ids:
        raise ValueError("cannot pack an empty batch")
    if pad_token_id is None:
        raise ValueError("pad_token_id is None: give the tokenizer a pad token (e.g. its EOS token)")
    lengths = [len(p) + len(o) for p, o in zip(prompt_ids, output_ids)]
    max_len = max(lengths)
    tokens = torch.full((len(prompt_ids), max_len), pad_token_id, dtype=torch.long)
    # Indexed like `tokens`; shifted by one below, like the labels.
    is_output = torch.zeros((len(prompt_ids), max_len), dtype=torch.bool)
    for i, (prompt, output) in enumerate(zip(prompt_ids, output_ids)):
        tokens[i, : lengths[i]] = torch.tensor(list(prompt) + list(output), dtype=torch.long)
        is_output[i, len(prompt) : lengths[i]] = True
    return {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:], "response_mask": is_output[:, 1:]}


def split_by_token_budget(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Cut length-sorted sequences into consecutive microbatches of at most `max_tokens` padded tokens.

    lengths: the sequences' token counts, in the order they will be packed (ascending, so each
    microbatch pads to its own last and longest one). Returns lists of indices into `lengths`;
    a microbatch's cost is len(microbatch) * max(length in it). A sequence longer than the budget
    gets a microbatch of its own. Fewer, fuller microbatches mean fewer forward/backward passes.
    A last microbatch of one sequence takes one more from the one before when the budget allows:
    under torch.compile a batch of one is a shape of its own (0/1 specialization), and each grad
    mode of every compiled function would recompile for it.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, length in enumerate(lengths):
        if current and (len(current) + 1) * max(longest, length) > max_tokens:
            groups.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, length)
    if current:
        groups.append(current)
    if len(groups) > 1 and len(groups[-1]) == 1 and len(groups[-2]) > 1 and 2 * longest <= max_tokens:
        groups[-1].insert(0, groups[-2].pop())  # still consecutive; the longest stays last
    return groups


def microbatch_groups(
    lengths: Sequence[int], micro_size: int, max_tokens: int | None = None, sort_by_length: bool = True
) -> list[list[int]]:
    """The microbatches of one optimizer update, as lists of indices into `lengths`.

    lengths: each sequence's packed row length (prompt + response - 1). With `max_tokens`, the
    length-sorted sequences are cut by `split_by_token_budget`; otherwise into consecutive slices of
    `micro_size`, in length order if `sort_by_length` (less padding) or in the given order.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__) if sort_by_length or max_tokens else list(range(len(lengths)))
    if max_tokens:
        return [[order[j] for j in group] for group in split_by_token_budget([lengths[i] for i in order], max_tokens)]
    return [order[m : m + micro_size] for m in range(0, len(order), micro_size)]


def tokenize_prompt_and_output(
    prompt_strs: Sequence[str], output_strs: Sequence[str], tokenizer
) -> dict[str, torch.Tensor]:
    """Tokenize prompts and outputs separately (no special tokens) and pack them.

    Returns the dict of `pack_prompt_and_output_ids`: input_ids, labels (B, L-1) long and
    response_mask (B, L-1) bool, padded with `tokenizer.pad_token_id`.
    """
    prompt_ids = tokenizer(list(prompt_strs), add_special_tokens=False)["input_ids"]
    output_ids = tokenizer(list(output_strs), add_special_tokens=False)["input_ids"]
    return pack_prompt_and_output_ids(prompt_ids, output_ids, tokenizer.pad_token_id)


def scatter_response_values(values: list[list[float]], prompt_lengths: list[int], shape: tuple[int, int]) -> torch.Tensor:
    """Place per-response-token values (e.g. engine log-probs) at their label positions.

    values[i][j] belongs to response token j of sequence i, which is label column
    `prompt_lengths[i] - 1 + j` of the shifted `(B, L-1)` tensors. Other entries are 0.
    """
    out = torch.zeros(shape, dtype=torch.float32)
    for i, (row, p) in enumerate(zip(values, prompt_lengths)):
        if row:
            out[i, p - 1 : p - 1 + len(row)] = torch.tensor(row, dtype=torch.float32)
    return out
