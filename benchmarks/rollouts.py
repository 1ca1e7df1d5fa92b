"""Rollout throughput: r1-lightning's VLLMEngine vs its HFEngine on one GPU, and the weight-sync time.

A GRPO rollout batch: GSM8K test questions in the R1-Zero template (256 prompts x 8 samples by default),
temperature 1, at most 512 (SmolLM2) / 1024 (1.5B shape) new tokens, stopping at `</answer>` or EOS,
through the engines' `generate` as `GRPOModule` calls it (by default vLLM returns log-probs for the first
prompt's samples only, GRPOModule's engine/trainer gap check; `--vllm-logprobs all` as with TIS). One
process, one GPU: the bf16 policy (which `HFEngine` generates with, and which `VLLMEngine.load_weights`
copies from) and the vLLM engine (`--gpu-memory-utilization` of the GPU) share it. Order, so that a
run cut by a time limit keeps the figures that matter most (the JSON is rewritten after each): vLLM
with one seed per call (`VLLMEngine(per_request_seeds=False)`: the workers' generators reseeded), vLLM
with one seed per request (vLLM 0.26's V1 model runner draws such requests' noise one at a time; its V2
runner, the default for dense models, draws every request's noise in one kernel either way), HF, then the
weight sync (it perturbs the policy first).

    python benchmarks/rollouts.py --model smollm2-gsm8k --engine both --out benchmarks/results/rollouts_smollm2.json
    python benchmarks/rollouts.py --model qwen1.5b-shape --engine both --out benchmarks/results/rollouts_qwen1.5b.json
    python benchmarks/rollouts.py --model qwen1.5b-shape --engine hf --tiny --device cpu   # CPU smoke run

Models: `smollm2-gsm8k` is SmolLM2-135M-Instruct from its GGUF file (common.smollm2_hf_folder);
`qwen1.5b-shape` is the Qwen2.5-Math-1.5B architecture with random weights and a word-level tokenizer of
151,936 ids (common.build_word_tokenizer) whose `--stop-token-fraction` of tokens end in `</answer>`:
random weights sample near-uniformly, so samples end on the real stop string at a geometric length of
mean ~1/fraction (512 by default), capped at max tokens. `--tiny`: a 2-layer model and 4 prompts x 2
samples x 16 tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import gc
import io
import pstats
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # common, r1_lightning
import common as C


class EngineUnavailable(RuntimeError):
    """This machine cannot run the engine (no GPU)."""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["smollm2-gsm8k", "qwen1.5b-shape"], default="smollm2-gsm8k")
    p.add_argument("--engine", choices=["vllm", "hf", "both"], default="both")
    p.add_argument("--tiny", action="store_true", help="2-layer model (qwen shape), 4 prompts x 2 samples x 16 tokens")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu (cpu: HF engine only)")
    p.add_argument("--num-prompts", type=int, help="prompts per rollout batch (default 256; tiny 4)")
    p.add_argument("--samples", type=int, help="samples per prompt (default 8; tiny 2)")
    p.add_argument("--max-tokens", type=int, help="default 512 for SmolLM2, 1024 for the 1.5B shape; tiny 16")
    p.add_argument("--min-tokens", type=int, default=4, help="as configs/grpo.yaml")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--stop", nargs="*", default=["</answer>"])
    p.add_argument("--seed", type=int, default=0, help="per-step sampling seed, as GRPOModule passes it")
    p.add_argument("--hf-max-batch-size", type=int, default=64, help="HFEngine prompts per generate call")
    p.add_argument("--hf-num-prompts", type=int, default=None,
                   help="HFEngine generates for the first N prompts only (default: all): its throughput is "
                        "per generate call of --hf-max-batch-size prompts, so a whole number of calls measures it")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.7, help="vLLM's share of the GPU")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--enforce-eager", action="store_true", help="vLLM without CUDA graphs / torch.compile")
    p.add_argument("--max-num-seqs", type=int, help="VLLMEngine(max_num_seqs=...); default vLLM's (1024 on an H100/H200)")
    p.add_argument("--vllm-logprobs", choices=["check", "all", "none"], default="check",
                   help="vLLM's sampled-token log-probs: for the first prompt's samples (GRPOModule's default "
                        "engine/trainer gap check), for all (as TIS needs), or none")
    p.add_argument("--vllm-seeded", action=argparse.BooleanOptionalAction, default=True,
                   help="also time vLLM with per-request seeds (VLLMEngine(per_request_seeds=True)), after one "
                        "seed per call (per_request_seeds=False)")
    p.add_argument("--vllm-engine-process", action="store_true",
                   help="diagnostic: vLLM's engine core in its own process (vLLM's default) instead of VLLMEngine's "
                        "in-process engine; the in-place weight sync cannot reach it, so no sync is measured")
    p.add_argument("--cpu-profile", metavar="PATH",
                   help="cProfile the (one seed per call) vLLM generate; write the top functions by own time to PATH")
    p.add_argument("--sync-repeats", type=int, default=5, help="timed weight syncs (after one untimed)")
    p.add_argument("--stop-token-fraction", type=float, default=1 / 512, help="1.5B shape: see above")
    p.add_argument("--gsm8k", help="GSM8K test.jsonl (default: $R1L_GSM8K, else data/gsm8k/test.jsonl)")
    p.add_argument("--gguf", default=C.DEFAULT_GGUF, help="SmolLM2 GGUF ($SMOLLM2_GGUF)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    smol = args.model == "smollm2-gsm8k"
    for name, full, small in [("num_prompts", 256, 4), ("samples", 8, 2), ("max_tokens", 512 if smol else 1024, 16)]:
        if getattr(args, name) is None:
            setattr(args, name, small if args.tiny else full)
    return args


def model_folder(args, questions) -> tuple[Path, str]:
    if args.model == "smollm2-gsm8k":
        return C.smollm2_hf_folder(args.gguf), f"SmolLM2-135M-Instruct, dequantized from {Path(args.gguf).name}"
    return C.qwen_shape_rollout_folder(questions, args.tiny, args.stop_token_fraction)


def completion_stats(completions, seconds: float, stop: list[str]) -> dict:
    lengths = sorted(len(c.token_ids) for c in completions)
    n = len(completions)
    by_stop_string = sum(c.finish_reason == "stop" and any(c.text.endswith(s) for s in stop) for c in completions)
    return {
        "seconds": seconds, "completions": n, "generated_tokens": sum(lengths),
        "tokens_per_s": sum(lengths) / seconds, "mean_length": sum(lengths) / n, "median_length": C.median(lengths),
        "min_length": lengths[0], "max_length": lengths[-1],
        "prompt_tokens_mean": sum(len(c.prompt_token_ids) for c in completions) / n,
        "finished_by_stop_string": by_stop_string / n,
        "finished_by_eos": sum(c.finish_reason == "stop" for c in completions) / n - by_stop_string / n,
        "truncated_at_max_tokens": sum(c.finish_reason == "length" for c in completions) / n,
    }


def timed_generate(engine, prompts, sampling, device, cpu_profile: str | None = None) -> dict:
    engine.generate(prompts[:2], dataclasses.replace(sampling, n=2, max_tokens=max(8, sampling.min_tokens)))  # warm-up
    timer = C.StepTimer(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    profiler = cProfile.Profile() if cpu_profile else contextlib.nullcontext()
    with C.GpuMonitor(interval=0.1) as gpus:
        timer.start()
        start = time.time()
        with profiler:
            completions = engine.generate(prompts, sampling)
        seconds, end = timer.stop(), time.time()
    if cpu_profile:
        write_cpu_profile(profiler, cpu_profile)
    # how much of the generate call a kernel ran on each GPU: well under 100% on the engine's GPU means the
    # engine's CPU work (scheduling, sampling bookkeeping, output processing) is what the rollout waits on
    return {**completion_stats(completions, seconds, sampling.stop), **C.peak_memory(device),
            "gpu_utilization_percent": gpus.utilization(start, end), "sampling": dataclasses.asdict(sampling)}


def write_cpu_profile(profiler, path: str) -> None:
    """Where the Python time of a generate call went: by own time, then by cumulative time."""
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(45)
    stats.sort_stats("cumulative").print_stats(45)
    Path(path).write_text(text.getvalue())


def run_hf(out, args, folder, policy, tokenizer, prompts, sampling, device) -> None:
    from r1_lightning.rollout import HFEngine

    engine = HFEngine(max_batch_size=args.hf_max_batch_size)
    engine.attach(policy, tokenizer)
    prompts = prompts[: args.hf_num_prompts]
    out["engine"] = f"HFEngine(max_batch_size={args.hf_max_batch_size})"
    out["prompts"] = len(prompts)
    out.update(timed_generate(engine, prompts, sampling, device))


def logprob_gap(engine, policy, tokenizer, prompts, sampling, device) -> float:
    """Mean |engine log-prob - policy log-prob| over sampled tokens: small only if the sync worked."""
    from r1_lightning.functional import (
        get_response_log_probs,
        pack_prompt_and_output_ids,
        scatter_response_values,
    )

    check = dataclasses.replace(sampling, n=1, max_tokens=min(64, sampling.max_tokens), logprobs=True)
    completions = [c for c in engine.generate(prompts, check) if c.token_ids]
    batch = pack_prompt_and_output_ids([c.prompt_token_ids for c in completions], [c.token_ids for c in completions],
                                       tokenizer.pad_token_id)
    with torch.no_grad():
        ours = get_response_log_probs(policy, batch["input_ids"].to(device), batch["labels"].to(device))["log_probs"]
    theirs = scatter_response_values([c.logprobs for c in completions], [len(c.prompt_token_ids) for c in completions],
                                     tuple(batch["labels"].shape))
    mask = batch["response_mask"]
    return float(((ours.float().cpu() - theirs).abs() * mask).sum() / mask.sum())


def build_vllm(out, args, folder, policy, tokenizer, device):
    if device.type != "cuda":
        raise EngineUnavailable("the vLLM engine needs a CUDA GPU (and vllm==0.26.0 importable, e.g. PYTHONPATH=/tmp/site)")
    from r1_lightning.rollout import VLLMEngine
    from r1_lightning.rollout.vllm import build as vllm_build
    from r1_lightning.rollout.vllm.layout import scoped_env

    if args.vllm_engine_process:  # diagnostic: the in-process engine's code, its engine core built in its own process
        # (VLLMEngine(process="separate") would sync over NCCL, which needs the engine on another GPU than the policy)
        vllm_build.in_process_env = lambda vllm: scoped_env({"VLLM_ENABLE_V1_MULTIPROCESSING": "1"})
    gc.collect()
    torch.cuda.empty_cache()
    engine = VLLMEngine(model=str(folder), device=device.index or 0, gpu_memory_utilization=args.gpu_memory_utilization,
                        max_model_len=args.max_model_len, enforce_eager=args.enforce_eager, seed=args.seed,
                        max_num_seqs=args.max_num_seqs)
    start = time.perf_counter()
    engine.attach(policy, tokenizer)
    out.update(engine=f"VLLMEngine(device={device.index or 0}, gpu_memory_utilization={args.gpu_memory_utilization}, "
                      f"max_model_len={args.max_model_len}, enforce_eager={args.enforce_eager}, "
                      f"max_num_seqs={args.max_num_seqs}) "
                      f"{'with its engine core in its own process' if args.vllm_engine_process else 'in this process'}",
               engine_build_seconds=time.perf_counter() - start)
    return engine


def run_vllm(out, engine, args, prompts, sampling, device, save) -> None:
    """One seed per call first, then one seed per request, as GRPOModule asks by default."""
    out["prompts"] = len(prompts)
    with_logprobs = dataclasses.replace(sampling, logprobs=args.vllm_logprobs != "none",
                                        logprobs_prompts=1 if args.vllm_logprobs == "check" else None)
    engine.per_request_seeds = False
    try:
        out.update(timed_generate(engine, prompts, with_logprobs, device, args.cpu_profile))
    finally:
        engine.per_request_seeds = True
    save()
    if args.vllm_seeded:
        out["seeded"] = timed_generate(engine, prompts, with_logprobs, device)


def measure_weight_sync(out, engine, args, policy, tokenizer, prompts, sampling, device) -> None:
    """As RolloutWeightSync does it: the policy's named parameters, GPU -> GPU. The policy is perturbed
    first, so the log-prob gap measured after the syncs is small only if they worked."""
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.1 * p.float().std().to(p.dtype))
    timer = C.StepTimer(device)
    for _ in range(args.sync_repeats + 1):
        timer.start()
        engine.load_weights(policy.named_parameters())
        timer.stop()
    out.update(
        weight_sync_first_seconds=timer.seconds[0], weight_sync_seconds=timer.seconds[1:],
        weight_sync_median_seconds=C.median(timer.seconds[1:]),
        weight_sync_gb=sum(p.numel() * p.element_size() for p in policy.parameters()) / 1e9,
        gpu_memory_used_gb=(torch.cuda.mem_get_info(device)[1] - torch.cuda.mem_get_info(device)[0]) / 2**30)
    out["engine_logprob_gap_after_sync"] = logprob_gap(engine, policy, tokenizer, prompts[:8], sampling, device)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    device = C.resolve_device(args.device)
    if device.type == "cpu" and args.tiny:
        torch.set_num_threads(1)  # tiny ops: threads only contend
    from transformers import AutoModelForCausalLM

    from r1_lightning.rollout import SamplingConfig

    questions = C.gsm8k_questions(C.find_gsm8k(args.gsm8k))
    prompts = C.r1_zero_prompts(questions, args.num_prompts)
    folder, model_note = model_folder(args, questions)
    tokenizer = C.load_bench_tokenizer(folder)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    policy = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    sampling = SamplingConfig(n=args.samples, temperature=args.temperature, max_tokens=args.max_tokens,
                              min_tokens=args.min_tokens, stop=args.stop, seed=args.seed)
    engines = ["vllm", "hf"] if args.engine == "both" else [args.engine]
    results = {name: {} for name in engines}

    def save() -> None:
        C.write_partial({"benchmark": "rollouts", "partial": True, "model": args.model, "results": results}, args.out)

    def attempt(name: str, stage, *stage_args):
        """Run one stage and return its result; on failure record the error, keep what was measured
        (and the other engine's numbers) and return None."""
        try:
            return stage(*stage_args)
        except Exception as error:
            if len(engines) == 1 and isinstance(error, (EngineUnavailable, ImportError)):
                raise SystemExit(f"{name} engine: {error}") from error
            results[name].update(error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc()[-3000:])
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return None
        finally:
            save()

    engine = attempt("vllm", build_vllm, results["vllm"], args, folder, policy, tokenizer, device) if "vllm" in engines else None
    if engine is not None:
        attempt("vllm", run_vllm, results["vllm"], engine, args, prompts, sampling, device, save)
    if "hf" in engines:
        attempt("hf", run_hf, results["hf"], args, folder, policy, tokenizer, prompts, sampling, device)
    if engine is not None and not args.vllm_engine_process:
        attempt("vllm", measure_weight_sync, results["vllm"], engine, args, policy, tokenizer, prompts, sampling, device)
    ratios, acceptance = {}, {}
    hf, vllm = results.get("hf", {}), results.get("vllm", {})
    if "tokens_per_s" in hf and "tokens_per_s" in vllm:
        ratios["vllm_over_hf_tokens_per_s"] = vllm["tokens_per_s"] / hf["tokens_per_s"]
        acceptance["vllm_at_least_3x_hf"] = ratios["vllm_over_hf_tokens_per_s"] >= 3.0
        if "seeded" in vllm:
            ratios["vllm_seeded_over_hf_tokens_per_s"] = vllm["seeded"]["tokens_per_s"] / hf["tokens_per_s"]
            ratios["vllm_seed_per_call_over_per_request_tokens_per_s"] = vllm["tokens_per_s"] / vllm["seeded"]["tokens_per_s"]
    if "weight_sync_median_seconds" in vllm:
        acceptance["weight_sync_under_0.1_s"] = vllm["weight_sync_median_seconds"] < 0.1
    result = {"benchmark": "rollouts", "environment": C.environment(device), "model": args.model, "model_note": model_note,
              "model_folder": str(folder), "n_params": C.count_parameters(policy), "policy_dtype": str(dtype),
              "prompts": args.num_prompts, "samples_per_prompt": args.samples, "results": results, "ratios": ratios,
              "acceptance": acceptance}
    return C.emit(result, args.out)


if __name__ == "__main__":
    main()
