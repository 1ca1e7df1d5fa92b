"""`HFEngine`: rollouts with Hugging Face `generate` on the policy module itself.

The CPU default and the single-GPU fallback. It needs no weight sync (it samples from the very
weights being trained), at the price of HF generation speed. With `own_weights` it samples from a
private copy of the policy instead, which the trainer syncs like any engine's: what asynchronous
rollouts need (the copy generates while the policy trains).

Semantics follow vLLM (`VLLMEngine`) so that the two engines are interchangeable:
- a stop string ends a sample only once more than `min_tokens` tokens were generated, and it is
  kept in the text (vLLM's `include_stop_str_in_output=True`); the text ends right after it;
- EOS is suppressed for the first `min_tokens` tokens; a final EOS stays in `token_ids`;
- `logprobs` are raw: the log-softmax of the model's unprocessed logits (temperature 1, before
  top-k/top-p/min-p and before the EOS suppression), vLLM's `logprobs_mode="raw_logprobs"`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Sequence

import torch
from transformers import GenerationConfig
from transformers.generation import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)

from r1_lightning.rollout.base import Completion, SamplingConfig, TrainerRanks
from r1_lightning.stopping import raise_if_stop_requested


class HFEngine:
    """Generates with `policy.generate`, in chunks of `max_batch_size` prompts (left padded).

    own_weights: generate with a copy of the policy made at `attach` (on the policy's device as of
        the last `load_weights`), which holds the weights last loaded, not the trained ones. Twice
        the weight memory; needed by `GRPOModule(async_rollouts=True)`. There it generates on a
        background thread, seeded through torch's global generator (`_seeded`): reproducible as long
        as the trainer draws no random numbers meanwhile (no dropout, as in the models here).
    """

    def __init__(self, max_batch_size: int = 64, own_weights: bool = False) -> None:
        if max_batch_size < 1:
            raise ValueError(f"HFEngine.max_batch_size must be >= 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size
        self.own_weights = own_weights
        self.policy: torch.nn.Module | None = None  # what generates: the policy, or its copy
        self.tokenizer = None
        # Building a StopStringCriteria scans the whole vocabulary (slow for 150k tokens): reuse it.
        self._stop_criteria: dict[tuple[str, ...], StopStringCriteria] = {}

    # -- RolloutEngine protocol ------------------------------------------------------------------

    @property
    def shares_policy_weights(self) -> bool:
        return not self.own_weights

    def attach(self, policy: torch.nn.Module, tokenizer, ranks: TrainerRanks | None = None) -> None:
        self.policy = copy.deepcopy(policy).requires_grad_(False) if self.own_weights else policy
        self.tokenizer = tokenizer
        self._stop_criteria.clear()

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy the tensors into the engine's copy of the policy (moved to their device first);
        nothing to do when the engine generates with the policy's own parameters."""
        if not self.own_weights:
            return
        named_tensors = list(named_tensors)
        if named_tensors:
            self.policy.to(named_tensors[0][1].device)
        parameters = dict(self.policy.named_parameters())
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in parameters:
                    raise KeyError(f"HFEngine.load_weights: the engine's copy of the policy has no parameter {name!r}")
                parameters[name].copy_(tensor)

    def sleep(self) -> None:
        """Nothing to free: the engine holds no memory of its own between rollouts."""

    def wake_up(self) -> None:
        """Nothing to restore (see `sleep`)."""

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[Completion]:
        if self.policy is None or self.tokenizer is None:
            raise RuntimeError("HFEngine.generate called before attach(policy, tokenizer)")
        prompt_ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
        for index, ids in enumerate(prompt_ids):
            if not ids:
                raise ValueError(
                    f"prompt {index} tokenizes to no tokens; a causal LM cannot continue nothing"
                )

        device = next(self.policy.parameters()).device
        # The policy's compiled layers (`compile`) are built for training's shapes; decoding a token at a
        # time against a growing KV cache would recompile them over and over, so generation runs eagerly.
        with (_eval_mode(self.policy), torch.inference_mode(), _seeded(sampling.seed, device),
              torch.compiler.set_stance("force_eager")):
            completions = []
            for start in range(0, len(prompt_ids), self.max_batch_size):
                chunk = prompt_ids[start : start + self.max_batch_size]
                completions += self._generate_chunk(chunk, start, sampling, device)
        return completions

    # -- one padded batch ------------------------------------------------------------------------

    def _generate_chunk(
        self, prompt_ids: list[list[int]], first_prompt_index: int, sampling: SamplingConfig, device
    ) -> list[Completion]:
        eos_ids = self._eos_token_ids()
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos_ids[0]
        input_ids, attention_mask = _left_pad(prompt_ids, pad_id, device)
        prompt_width = input_ids.shape[1]
        # HF refuses num_return_sequences > 1 for greedy decoding: decode once, copy n times.
        greedy = sampling.temperature == 0
        rows_per_prompt = 1 if greedy else sampling.n

        # Order matters: HF appends the temperature/top-k/top-p/min-p warpers after these, and it adds
        # no processor of its own given the neutral values in `_generation_config`. So the log-prob
        # recorder sees the raw logits, and EOS suppression happens after it (vLLM's raw log-probs
        # are also taken before its min_tokens processing).
        wants_logprobs = sampling.returns_logprobs(first_prompt_index)  # this call's first prompt is its lowest
        logprob_recorder = _ChosenTokenLogprobs(prompt_width) if wants_logprobs else None
        processors = [logprob_recorder] if logprob_recorder is not None else []
        if sampling.min_tokens > 0:
            processors.append(_SuppressTokensBeforeLength(eos_ids, prompt_width, sampling.min_tokens))
        stop_criterion = None
        stopping = [_RaiseIfStopRequested()]
        if sampling.stop:
            stop_criterion = _StopStringsAfterMinTokens(
                self._stop_string_criteria(tuple(sampling.stop)),
                prompt_width,
                sampling.min_tokens,
                num_rows=input_ids.shape[0] * rows_per_prompt,
                device=device,
            )

        sequences = self.policy.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=_generation_config(sampling, rows_per_prompt, eos_ids, pad_id),
            logits_processor=LogitsProcessorList(processors),
            stopping_criteria=StoppingCriteriaList(stopping + ([stop_criterion] if stop_criterion else [])),
        )
        generated = sequences[:, prompt_width:]
        stop_string_end = stop_criterion.finished_at.tolist() if stop_criterion else None
        logprobs = logprob_recorder.finish(sequences) if logprob_recorder else None

        completions = []
        for row, row_tokens in enumerate(generated.tolist()):
            prompt_offset = row // rows_per_prompt
            end_by_stop_string = stop_string_end[row] if stop_string_end else -1
            token_ids, finish_reason, ended_on_stop_string = _cut_sample(
                row_tokens, set(eos_ids), end_by_stop_string
            )
            text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
            if ended_on_stop_string:
                text = _truncate_after_stop_string(text, sampling.stop)
            completions.append(
                Completion(
                    prompt_index=first_prompt_index + prompt_offset,
                    prompt_token_ids=list(prompt_ids[prompt_offset]),
                    token_ids=token_ids,
                    text=text,
                    finish_reason=finish_reason,
                    logprobs=logprobs[row, : len(token_ids)].tolist()
                    if logprobs is not None and sampling.returns_logprobs(first_prompt_index + prompt_offset)
                    else None,
                )
            )
        if rows_per_prompt != sampling.n:
            completions = [copy.deepcopy(c) for c in completions for _ in range(sampling.n)]
        return completions

    def _eos_token_ids(self) -> list[int]:
        """The tokenizer's EOS plus the model's generation-config EOS ids (as vLLM stops on both)."""
        ids = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        config_eos = getattr(getattr(self.policy, "generation_config", None), "eos_token_id", None)
        if config_eos is not None:
            ids += [config_eos] if isinstance(config_eos, int) else list(config_eos)
        if not ids:
            raise ValueError("HFEngine needs an EOS token: the tokenizer and the model config define none")
        return list(dict.fromkeys(ids))

    def _stop_string_criteria(self, stop: tuple[str, ...]) -> StopStringCriteria:
        if stop not in self._stop_criteria:
            self._stop_criteria[stop] = StopStringCriteria(tokenizer=self.tokenizer, stop_strings=list(stop))
        return self._stop_criteria[stop]


# -- generation configuration ---------------------------------------------------------------------


def _generation_config(
    sampling: SamplingConfig, num_return_sequences: int, eos_ids: list[int], pad_id: int
) -> GenerationConfig:
    """Everything spelled out: `generate` fills any field left None from the model's own
    generation_config.json (hub configs often carry repetition_penalty, top_k, temperature, ...)."""
    do_sample = sampling.temperature > 0
    return GenerationConfig(
        max_new_tokens=sampling.max_tokens,
        min_new_tokens=0,  # EOS suppression is ours (`_SuppressTokensBeforeLength`), after the recorder
        do_sample=do_sample,
        num_beams=1,
        num_return_sequences=num_return_sequences,
        # Greedy decoding applies no warper, so they are left unset (GenerationConfig warns otherwise).
        temperature=sampling.temperature if do_sample else None,
        top_p=sampling.top_p if do_sample else None,
        top_k=max(sampling.top_k, 0) if do_sample else None,
        min_p=sampling.min_p if do_sample else None,  # 0.0 is a no-op that blocks a hub default
        typical_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        use_cache=True,
        return_dict_in_generate=False,
    )


def _left_pad(prompt_ids: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padding by hand: the tokenizer's padding_side is never touched (no shared state to restore)."""
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


# -- logits processors and stopping criteria --------------------------------------------------------


class _ChosenTokenLogprobs(LogitsProcessor):
    """Records log_softmax(raw logits) at each chosen token, one step at a time.

    HF's `output_logits=True` keeps every step's full (rows, vocab) logits until the end: at GRPO
    sizes (512 rows x 1024 steps x 151,936 vocab, float32) that is ~300 GB. Here only the last
    step's log-probs are held; they are gathered at the next call, once the chosen token is known.
    """

    def __init__(self, prompt_width: int) -> None:
        self.prompt_width = prompt_width
        self.steps: list[torch.Tensor] = []
        self.pending: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._gather_pending(input_ids)
        self.pending = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _gather_pending(self, sequences: torch.Tensor) -> None:
        position = self.prompt_width + len(self.steps)
        if self.pending is not None and sequences.shape[1] > position:
            chosen = sequences[:, position : position + 1]
            self.steps.append(self.pending.gather(-1, chosen).squeeze(-1))
            self.pending = None

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """(rows, generated tokens) float32 log-probs, on the CPU."""
        self._gather_pending(sequences)
        if not self.steps:
            return torch.zeros(sequences.shape[0], 0)
        return torch.stack(self.steps, dim=1).cpu()


class _SuppressTokensBeforeLength(LogitsProcessor):
    """Forbids `token_ids` (EOS) until `min_tokens` tokens were generated (vLLM's min_tokens)."""

    def __init__(self, token_ids: list[int], prompt_width: int, min_tokens: int) -> None:
        self.token_ids = token_ids
        self.prompt_width = prompt_width
        self.min_tokens = min_tokens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] - self.prompt_width >= self.min_tokens:
            return scores
        scores = scores.clone()  # out of place: HF keeps the raw tensor when output_logits=True
        scores[:, self.token_ids] = -float("inf")
        return scores


class _StopStringsAfterMinTokens(StoppingCriteria):
    """HF's token-level `StopStringCriteria`, ignored while at most `min_tokens` tokens exist (as in
    vLLM), and recording for each row the index of the token that completed a stop string.

    The record is what lets us cut each sample exactly: the other rows of the batch keep
    generating, and this row is filled with pad tokens (which may equal EOS) after it stopped.
    """

    def __init__(
        self, criteria: StopStringCriteria, prompt_width: int, min_tokens: int, num_rows: int, device
    ):
        self.criteria = criteria
        self.prompt_width = prompt_width
        self.min_tokens = min_tokens
        self.finished_at = torch.full((num_rows,), -1, dtype=torch.long, device=device)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        num_generated = input_ids.shape[1] - self.prompt_width
        if num_generated <= self.min_tokens:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        done = self.criteria(input_ids, scores)
        newly_done = done & (self.finished_at < 0)
        # torch.where, not a masked assignment: no GPU->CPU sync inside the decoding loop
        self.finished_at = torch.where(newly_done, num_generated - 1, self.finished_at)
        return done


class _RaiseIfStopRequested(StoppingCriteria):
    """Raises `StopRequested` between two decoding steps once a stop signal arrived (`r1_lightning.stopping`):
    a long generation is abandoned within one token instead of finishing first."""

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        raise_if_stop_requested()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


# -- post-processing ----------------------------------------------------------------------------------


def _cut_sample(tokens: list[int], eos_ids: set[int], stop_string_end: int) -> tuple[list[int], str, bool]:
    """Cut one generated row at its end: the first EOS (kept) or the token that completed a stop
    string, whichever came first. Returns (token_ids, finish_reason, ended_on_stop_string).

    A row that ended early is followed by pad tokens (possibly equal to EOS) while the rest of
    the batch finishes; the first EOS is still the real one, since EOS is suppressed only before
    min_tokens and padding only starts after the row ended.
    """
    eos_end = next((i for i, token in enumerate(tokens) if token in eos_ids), -1)
    ends = [i for i in (eos_end, stop_string_end) if i >= 0]
    if not ends:
        return tokens, "length", False
    end = min(ends)
    return tokens[: end + 1], "stop", end == stop_string_end and end != eos_end


def _truncate_after_stop_string(text: str, stop: Sequence[str]) -> str:
    """Drop what the final token carried past the stop string ("</answer>\\n" -> "</answer>").

    The completing occurrence is the one that ends last (an earlier one can exist only inside
    the first min_tokens tokens, where stop strings are ignored).
    """
    ends = [text.rfind(s) + len(s) for s in stop if s in text]
    return text[: max(ends)] if ends else text


# -- context managers -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module):
    """Eval mode for generation (no dropout; HF also keeps the KV cache on with gradient
    checkpointing only outside training mode), then each submodule's own previous mode back."""
    previous = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in previous:
            m.training = training


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Sample from `torch.manual_seed(seed)` without disturbing the caller's RNG streams."""
    if seed is None:
        yield
        return
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        yield
