"""What `VLLMEngine` asks of vLLM and turns its answers into: `SamplingParams` options per prompt, a
`generate` call and its `RequestOutput`s as `Completion`s, and a call split over replicas. Runs where
the `LLM` lives (`llm_process.LLMProcess` calls `generate_completions` in its process); vLLM is
imported only inside `generate_completions`, so everything else is tested on the CPU without it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from r1_lightning.rollout.base import Completion, SamplingConfig
from r1_lightning.rollout.vllm.llm_process import LLMProcess

# vLLM's CompletionOutput.finish_reason -> ours. "abort" (a cancelled request) has no counterpart.
_FINISH_REASONS = {"stop": "stop", "length": "length"}


def sampling_params_kwargs(sampling: SamplingConfig, prompt_index: int) -> dict[str, Any]:
    """Keyword arguments of vLLM's `SamplingParams` for one prompt."""
    kwargs: dict[str, Any] = {
        "n": sampling.n,
        "temperature": sampling.temperature,  # 0 = greedy in vLLM too
        "top_p": sampling.top_p,
        "top_k": sampling.top_k if sampling.top_k > 0 else -1,  # vLLM: 0 or -1 = off; -1 in every release
        "min_p": sampling.min_p,
        "max_tokens": sampling.max_tokens,
        "min_tokens": sampling.min_tokens,  # vLLM ignores EOS and stop strings before it, as HFEngine does
        "stop": list(sampling.stop) or None,
        "include_stop_str_in_output": True,
        "skip_special_tokens": True,
        "logprobs": 0 if sampling.returns_logprobs(prompt_index) else None,  # 0: the sampled token's only
        # flat lists instead of one dict and Logprob object per token: less work in vLLM's front end
        "flat_logprobs": True,
    }
    if sampling.seed is not None:
        # One seed per request, spaced by n because vLLM derives the seeds of a request's n samples
        # from it; identical prompts in one batch must not get identical samples.
        kwargs["seed"] = sampling.seed + prompt_index * sampling.n
    return kwargs


def prompt_shares(num_prompts: int, parts: int) -> list[range]:
    """`num_prompts` prompt indices cut into `parts` contiguous ranges whose sizes differ by at most
    one (the first ones larger); empty ranges when there are fewer prompts than parts."""
    size, extra = divmod(num_prompts, parts)
    starts = [part * size + min(part, extra) for part in range(parts + 1)]
    return [range(starts[part], starts[part + 1]) for part in range(parts)]


def generate_on_replicas(llms: Sequence[LLMProcess], prompt_ids: list[list[int]], params: list[dict[str, Any]],
                         call_seed: int | None = None) -> list[Completion]:
    """`generate_completions` run in each `LLMProcess` on its share of the prompts (`prompt_shares`),
    all at once (a thread per replica, which only waits on its pipe); the completions in prompt
    order, each `prompt_index` into the whole call. With one seed per call, replica i gets
    `call_seed + i`: the replicas must not draw the same noise."""
    function = f"{__name__}:generate_completions"
    if len(llms) == 1:
        return llms[0].call(function, prompt_ids, params, call_seed)
    shares = [share for share in prompt_shares(len(prompt_ids), len(llms)) if share]

    def run(replica: int, share: range) -> list[Completion]:
        seed = None if call_seed is None else call_seed + replica
        part = llms[replica].call(function, [prompt_ids[i] for i in share], [params[i] for i in share], seed)
        return [dataclasses.replace(c, prompt_index=c.prompt_index + share.start) for c in part]

    with ThreadPoolExecutor(max_workers=len(shares), thread_name_prefix="r1-lightning-replica") as pool:
        parts = [pool.submit(run, replica, share) for replica, share in enumerate(shares)]
        return [completion for part in parts for completion in part.result()]


def generate_completions(llm, prompt_ids: list[list[int]], params: list[dict[str, Any]],
                         call_seed: int | None = None) -> list[Completion]:
    """`llm.generate` of token-id prompts, one `SamplingParams(**params[i])` per prompt, as flat
    prompt-major `Completion`s, after reseeding the workers' sampler with `call_seed` when given: run
    where the `LLM` lives (`LLMProcess` calls it in its process)."""
    from vllm import SamplingParams  # vllm.SamplingParams (0.26: a msgspec Struct)

    if call_seed is not None:  # LLM.collective_rpc(method name, args=...): a WorkerExtension method
        llm.collective_rpc("reseed_sampler", args=(call_seed,))
    # LLM.generate(prompts, sampling_params, use_tqdm=...): a token-id prompt is a TokensPrompt dict
    # {"prompt_token_ids": [...]}; one SamplingParams per prompt; the RequestOutputs come back in order.
    request_outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids],
                                   [SamplingParams(**kwargs) for kwargs in params], use_tqdm=False)
    return to_completions(request_outputs, prompt_ids)


def to_completions(request_outputs: Sequence[Any], prompt_token_ids: Sequence[list[int]]) -> list[Completion]:
    """vLLM `RequestOutput`s (one per prompt, in order) -> flat prompt-major `Completion`s."""
    if len(request_outputs) != len(prompt_token_ids):
        raise RuntimeError(
            f"vLLM returned {len(request_outputs)} outputs for {len(prompt_token_ids)} prompts"
        )
    completions = []
    for prompt_index, request_output in enumerate(request_outputs):
        for sample in sorted(request_output.outputs, key=lambda output: output.index):
            if sample.finish_reason not in _FINISH_REASONS:
                raise RuntimeError(f"vLLM request {prompt_index} finished with {sample.finish_reason!r}")
            token_ids = list(sample.token_ids)
            logprobs = None if sample.logprobs is None else sampled_token_logprobs(sample.logprobs, token_ids)
            completions.append(
                Completion(
                    prompt_index=prompt_index,
                    prompt_token_ids=list(prompt_token_ids[prompt_index]),
                    token_ids=token_ids,
                    text=sample.text,
                    finish_reason=_FINISH_REASONS[sample.finish_reason],
                    logprobs=logprobs,
                )
            )
    return completions


def sampled_token_logprobs(logprobs, token_ids: list[int]) -> list[float]:
    """The log-prob of each sampled token from vLLM's per-position log-probs: a `FlatLogprobs`
    (`flat_logprobs=True`: flat lists, position i's entries from `start_indices[i]`, the sampled
    token's first) or a list of {token id: Logprob} mappings, one per position."""
    if hasattr(logprobs, "start_indices"):
        return [float(logprobs.logprobs[start]) for start in logprobs.start_indices[: len(token_ids)]]
    return [float(step[token].logprob) for step, token in zip(logprobs, token_ids)]
