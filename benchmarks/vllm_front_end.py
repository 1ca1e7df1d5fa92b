"""CPU cost of vLLM's front end for one GRPO rollout batch of `configs/grpo.yaml`, log-probs or not.

`LLM.generate` turns the engine core's per-step outputs into `RequestOutput`s in its own process:
detokenization and stop-string checks for every token and, with `SamplingParams(logprobs=0)`, each
token id's string and one dict + `Logprob` per token (flat lists with `flat_logprobs=True`). This
drives vLLM's own `OutputProcessor` as `LLMEngine` does (FINAL_ONLY, a `ParentRequest` fanning out
n children, one `process_outputs` per engine step) with a simulated engine core: its per-step
`EngineCoreOutputs` (one token per running request, `LogprobsLists` sliced per request) are built
and msgpack-encoded before the clock starts (that encoding, the engine core process's own work, is
timed once: `engine_encode_s`). With the engine core in its own process the caller also decodes
each step's message (vLLM's `MsgpackDecoder`): timed apart as `decode_s`.

The batch: 32 prompts x n=8, as `VLLMEngine.generate` asks (its own `sampling_params_kwargs`), GSM8K
questions in the R1-Zero template, the GPU benchmarks' word tokenizer (151,936 ids, 296 of them
` zK</answer>`). A random-weight model samples ~uniformly, so lengths are geometric with p = 296 /
151,936 capped at 1024 (expected mean ~444, ~14% end as "length"), tokens are uniform over the
other ids, and a sample that stops ends on a stop token, where vLLM's own stop-string check finds
`</answer>` and aborts it. vLLM refuses stop strings without detokenization, so the `no_detok`
variants end the same samples on the engine's side, as a stop token id would.

    PYTHONPATH=$PWD:/tmp/gpu-extras/site python benchmarks/vllm_front_end.py \
        --out benchmarks/results/raw/vllm_front_end_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import sys
import tempfile
import time
from copy import copy
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # common, r1_lightning
import common as C

from r1_lightning.rollout.base import SamplingConfig
from r1_lightning.rollout.vllm.build import without_logprob_token_strings
from r1_lightning.rollout.vllm.generation import sampling_params_kwargs, to_completions

# name -> (which prompts' samples get log-probs: "none" / "one" (the first prompt's, the sync check
# of configs/grpo.yaml) / "all" (TIS, async rollouts), flat_logprobs, detokenize)
VARIANTS = {"none": ("none", False, True), "one_prompt": ("one", False, True), "all": ("all", False, True),
            "all_flat": ("all", True, True), "all_flat_no_strings": ("all", True, True),
            "no_detok": ("none", False, False),
            "no_detok_all": ("all", False, False), "no_detok_all_flat": ("all", True, False)}
STOP = "</answer>"
# variants run as VLLMEngine builds its LLM, with build.without_logprob_token_strings (undone after)
WITHOUT_TOKEN_STRINGS = {"all_flat_no_strings"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--n", type=int, default=8, help="samples per prompt (SamplingParams.n)")
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--min-tokens", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=151936)
    p.add_argument("--stop-fraction", type=float, default=0.00195, help="as the GPU runs' tokenizer")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gc-off", action="store_true", help="gc.disable(): how much of the time is Python's cyclic GC")
    p.add_argument("--gsm8k", help="GSM8K test.jsonl (default: $R1L_GSM8K, else data/gsm8k/test.jsonl)")
    p.add_argument("--out")
    return p.parse_args(argv)


def vllm_tokenizer(args):
    """The word tokenizer as vLLM's front end holds it: saved, then loaded by `vllm.tokenizers.get_tokenizer`."""
    from vllm.tokenizers import get_tokenizer

    questions = C.gsm8k_questions(C.find_gsm8k(args.gsm8k))
    words = C.build_word_tokenizer(args.vocab_size, C.template_and_question_words(questions), args.stop_fraction)
    with tempfile.TemporaryDirectory() as folder:
        words.save_pretrained(folder)
        tokenizer = get_tokenizer(folder)
    prompt_ids = tokenizer(C.r1_zero_prompts(questions, args.prompts), add_special_tokens=False)["input_ids"]
    return tokenizer, prompt_ids


def draw_samples(tokenizer, n_samples: int, args) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Token ids [n_samples, max_tokens], their log-probs (float32, as vLLM's sampler returns them),
    lengths [n_samples], and whether each sample ran to max_tokens (else: its last token ends in STOP)."""
    rng = np.random.default_rng(args.seed)
    vocab = tokenizer.get_vocab()
    stop_ids = np.array(sorted(i for t, i in vocab.items() if t.endswith(STOP) and t != STOP))
    other_ids = np.array(sorted(i for t, i in vocab.items() if STOP not in t and i != tokenizer.eos_token_id))
    drawn = rng.geometric(len(stop_ids) / len(vocab), n_samples)
    truncated = drawn > args.max_tokens
    lengths = np.clip(drawn, args.min_tokens + 1, args.max_tokens)
    tokens = rng.choice(other_ids, (n_samples, args.max_tokens))
    stops = np.flatnonzero(~truncated)
    tokens[stops, lengths[stops] - 1] = rng.choice(stop_ids, len(stops))
    logprobs = -rng.exponential(3.0, (n_samples, args.max_tokens)).astype(np.float32)
    return tokens, logprobs, lengths, truncated


def engine_steps(tokens, logprobs, lengths, truncated, n, wants_logprobs, detokenize) -> list[list]:
    """What the engine core sends, step by step: one `EngineCoreOutput` per running request
    (child request ids `{index}_{prompt}`, as `ParentRequest` names them), sample k = prompt k // n."""
    from vllm.v1.engine import EngineCoreOutput, FinishReason
    from vllm.v1.outputs import LogprobsLists

    steps = []
    for s in range(int(lengths.max())):
        running = np.flatnonzero(lengths > s)
        # one LogprobsLists for the batch (rank 1..: the sampled token's rank), sliced per request
        batch = LogprobsLists(tokens[running, s, None].astype(np.int32), logprobs[running, s, None],
                              np.ones(len(running), dtype=np.int64))
        outputs = []
        for row, k in enumerate(running.tolist()):
            last = s == lengths[k] - 1
            finish = None
            if last and truncated[k]:
                finish = FinishReason.LENGTH
            elif last and not detokenize:  # no stop strings without detokenize: the engine stops it
                finish = FinishReason.STOP
            outputs.append(EngineCoreOutput(
                request_id=f"{k % n}_{k // n}", new_token_ids=[int(tokens[k, s])],
                new_logprobs=batch.slice_request(row, 1) if wants_logprobs[k // n] else None,
                finish_reason=finish, stop_reason=int(tokens[k, s]) if finish == FinishReason.STOP else None))
        steps.append(outputs)
    return steps


def add_requests(processor, prompt_ids, params, tokenizer) -> None:
    """`LLM.generate` -> `LLMEngine.add_request`, minus the engine core: FINAL_ONLY, the input
    processor's clone + generation-config update, and the fan-out of n children."""
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine import EngineCoreRequest
    from vllm.v1.engine.parallel_sampling import ParentRequest

    for i, (ids, sampling) in enumerate(zip(prompt_ids, params)):
        sampling.output_kind = RequestOutputKind.FINAL_ONLY
        sampling = sampling.clone()
        sampling.update_from_generation_config({}, tokenizer.eos_token_id)
        request = EngineCoreRequest(
            request_id=str(i), prompt_token_ids=list(ids), mm_features=None, sampling_params=sampling,
            pooling_params=None, arrival_time=time.time(), lora_request=None, cache_salt=None,
            data_parallel_rank=None, external_req_id=str(i))
        parent = ParentRequest(request)
        for index in range(sampling.n):
            child_id, child_params = parent.get_child_info(index)
            child = request if index == sampling.n - 1 else copy(request)
            child.request_id, child.sampling_params = child_id, child_params
            processor.add_request(child, None, parent, index)


def run_variant(name: str, tokenizer, prompt_ids, samples, args) -> dict:
    from vllm import SamplingParams
    from vllm.v1.engine import EngineCoreOutputs
    from vllm.v1.engine.output_processor import OutputProcessor
    from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

    which, flat, detokenize = VARIANTS[name]
    tokens, logprobs, lengths, truncated = samples
    config = SamplingConfig(n=args.n, temperature=1.0, max_tokens=args.max_tokens, min_tokens=args.min_tokens,
                            stop=[STOP], logprobs=which != "none", logprobs_prompts=1 if which == "one" else None)
    kwargs = [dict(sampling_params_kwargs(config, i), flat_logprobs=flat) for i in range(len(prompt_ids))]
    if not detokenize:
        kwargs = [dict(k, detokenize=False, stop=None) for k in kwargs]
    wants = [k["logprobs"] is not None for k in kwargs]
    steps = engine_steps(tokens, logprobs, lengths, truncated, args.n, wants, detokenize)
    encoder, start = MsgpackEncoder(), time.perf_counter()  # the engine core process's side, timed once
    messages = [[bytes(b) for b in encoder.encode(EngineCoreOutputs(outputs=step))] for step in steps]
    encode_s = time.perf_counter() - start
    del steps
    process_s, decode_s = [], []
    with token_strings(keep=name not in WITHOUT_TOKEN_STRINGS):
        for _ in range(args.repeats):
            processor = OutputProcessor(tokenizer, log_stats=False)  # LLM: disable_log_stats=True
            add_requests(processor, prompt_ids, [SamplingParams(**k) for k in kwargs], tokenizer)
            detokenizer = type(next(iter(processor.request_states.values())).detokenizer).__name__
            decoder = MsgpackDecoder(EngineCoreOutputs)
            outputs, aborted, decode, process = [], 0, 0.0, 0.0  # (drops the last repeat's outputs)
            gc.collect()
            for message in messages:
                start = time.perf_counter()
                step = decoder.decode(message)
                middle = time.perf_counter()
                result = processor.process_outputs(step.outputs, engine_core_timestamp=step.timestamp)
                process += time.perf_counter() - middle
                decode += middle - start
                outputs += result.request_outputs
                aborted += len(result.reqs_to_abort)
            process_s.append(process)
            decode_s.append(decode)
            assert not processor.has_unfinished_requests(), f"{name}: requests left unfinished"
    n_tokens = int(lengths.sum())
    return {"process_s": C.median(process_s), "decode_s": C.median(decode_s), "process_s_all": process_s,
            "decode_s_all": decode_s, "process_us_per_token": 1e6 * C.median(process_s) / n_tokens,
            "decode_us_per_token": 1e6 * C.median(decode_s) / n_tokens, "aborted_by_stop_string": aborted,
            "engine_encode_s": encode_s, "engine_encode_us_per_token": 1e6 * encode_s / n_tokens,
            "detokenizer": detokenizer,
            "check": check_outputs(outputs, prompt_ids, samples, wants, detokenize, tokenizer)}


@contextlib.contextmanager
def token_strings(keep: bool):
    """vLLM's log-prob token strings as they are (keep) or left out as `VLLMEngine` builds its LLM,
    restored afterwards."""
    from vllm.v1.engine.logprobs import LogprobsProcessor

    saved = LogprobsProcessor.__dict__["from_new_request"]
    if not keep:
        without_logprob_token_strings()
    try:
        yield
    finally:
        LogprobsProcessor.from_new_request = saved


def check_outputs(request_outputs, prompt_ids, samples, wants, detokenize, tokenizer) -> list[str]:
    """What `to_completions` makes of the RequestOutputs vs what the engine sent: the problems found."""
    tokens, logprobs, lengths, truncated = samples
    request_outputs = sorted(request_outputs, key=lambda o: int(o.request_id))
    problems = []
    for k, c in enumerate(to_completions(request_outputs, prompt_ids)):  # prompt-major: sample k
        length = int(lengths[k])
        if c.token_ids != tokens[k, :length].tolist():
            problems.append(f"sample {k}: token ids differ")
        if c.finish_reason != ("length" if truncated[k] else "stop"):
            problems.append(f"sample {k}: finish reason {c.finish_reason}")
        if detokenize and c.text != tokenizer.decode(c.token_ids, skip_special_tokens=True):
            problems.append(f"sample {k}: text differs from the tokenizer's decode")
        expected = logprobs[k, :length].tolist() if wants[c.prompt_index] else None
        if c.logprobs != expected:
            problems.append(f"sample {k}: log-probs {'missing' if c.logprobs is None else 'differ'}")
    return problems[:10] + ([f"... {len(problems)} problems in all"] if len(problems) > 10 else [])


def print_table(result: dict) -> None:
    batch = result["batch"]
    print(f"{batch['samples']} samples, {batch['tokens']:,} tokens, {batch['engine_steps']} engine steps "
          f"({result['machine']['cpu']})", file=sys.stderr)
    print("| variant | process_outputs s | µs/token | decode s | µs/token | engine encode s | check |", file=sys.stderr)
    print("|---|---|---|---|---|---|---|", file=sys.stderr)
    for name, v in result["variants"].items():
        print(f"| {name} | {v['process_s']:.3f} | {v['process_us_per_token']:.2f} | {v['decode_s']:.3f} | "
              f"{v['decode_us_per_token']:.2f} | {v['engine_encode_s']:.3f} | "
              f"{'ok' if not v['check'] else 'FAILED: ' + v['check'][0]} |", file=sys.stderr)
    if failed(result):
        print("!!! to_completions does not give back what the engine sent: see 'check' in the JSON", file=sys.stderr)


def failed(result: dict) -> bool:
    return any(v["check"] for v in result["variants"].values())


def cpu_model() -> str | None:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.processor() or None)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.gc_off:
        gc.disable()  # gc.collect() between repeats still runs
    import msgspec
    import vllm

    tokenizer, prompt_ids = vllm_tokenizer(args)
    samples = draw_samples(tokenizer, args.prompts * args.n, args)
    lengths, truncated = samples[2], samples[3]
    result = {
        "benchmark": "vllm_front_end", "environment": C.environment(),
        "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count()}, "gc_off": args.gc_off,
        "library_versions": {"vllm": vllm.__version__, "msgspec": msgspec.__version__, "numpy": np.__version__},
        "batch": {"prompts": args.prompts, "n": args.n, "samples": len(lengths), "tokens": int(lengths.sum()),
                  "response_length_mean": float(lengths.mean()), "truncated_fraction": float(truncated.mean()),
                  "engine_steps": int(lengths.max()), "prompt_length_mean": float(np.mean([len(p) for p in prompt_ids]))},
        "variants": {},
    }
    for name in args.variants:
        result["variants"][name] = run_variant(name, tokenizer, prompt_ids, samples, args)
        print(f"[bench] {name}: {result['variants'][name]['process_s']:.3f} s", file=sys.stderr, flush=True)
    print_table(result)
    return C.emit(result, args.out)


if __name__ == "__main__":
    sys.exit(1 if failed(main()) else 0)
