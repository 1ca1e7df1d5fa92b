"""Policy-update throughput: r1-lightning's GRPO update and SFT step vs TRL 1.16 vs a plain HF loop.

Same synthetic batches for every variant (seeded): per optimizer step, `--sequences` rollouts
(default 64 = 8 prompts x 8 samples), prompt ~U(100, 300) and response ~U(200, 1024) tokens, random
ids and rewards; microbatch 2 x gradient accumulation 32. The model is the Qwen2.5-Math-1.5B shape
with seeded random weights (benchmarks/common.py), bf16, gradient checkpointing on. Each variant runs
in its own process (peak memory is per variant); warm-up steps, then timed steps.

    python benchmarks/policy_update.py --variant all --phase grpo --out benchmarks/results/policy_update_grpo.json
    python benchmarks/policy_update.py --variant r1 --phase sft --tiny --device cpu   # CPU smoke run
    python benchmarks/policy_update.py --variant r1-packed --weak-scaling 2 --warmup 1 --steps 3  # 1 vs 2 GPUs

Weak scaling (`--weak-scaling N`, r1 variants): the same update on 1 GPU, then under DDP on 2, 4, ..
GPUs up to N (`--devices n`) with every rank training the full `--sequences` per step (the modules'
batch sizes are per rank), one process each; `efficiency` maps each n to its run's tokens/s per GPU
(rank 0's) over the 1-GPU run's, and `weak_scaling_efficiency` is N's. What it loses is DDP's
gradient all-reduce (and the ranks waiting on each other).

What is timed (device synchronized at both ends), per optimizer step:
  r1-packed: the same with token-budget microbatches (the modules' `microbatch_max_tokens`).
  r1  : GRPOModule._train_on_rollouts (forward, backward of all microbatches, clip, AdamW step) inside a
        real lightning.Trainer.fit, rollouts replayed by ReplayEngine; SFT: SFTModule.training_step.
  trl : GRPOTrainer / SFTTrainer in trainer.train(): on_step_begin -> on_step_end (all microbatches'
        training_step, clip, optimizer step), minus, for GRPO, the time inside
        _generate_and_score_completions (replay through `rollout_func`, reward, padding).
  hf  : the loop below: pad, logits.float().log_softmax().gather(), masked mean, backward, AdamW.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # common, r1_lightning
import common as C

VARIANTS, PHASES = ("r1", "r1-packed", "trl", "hf"), ("grpo", "sft")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=[*VARIANTS, "all"], default="all")
    p.add_argument("--phase", choices=[*PHASES, "both"], default="grpo")
    p.add_argument("--tiny", action="store_true", help="2-layer model, short sequences (CPU smoke run)")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--steps", type=int, help="timed optimizer steps (default 5; tiny 2)")
    p.add_argument("--warmup", type=int, help="untimed first steps (default 2; tiny 1)")
    p.add_argument("--sequences", type=int, help="sequences per optimizer step (default 64; tiny 8)")
    p.add_argument("--group-size", type=int, help="samples per prompt (default 8; tiny 4)")
    p.add_argument("--microbatch", type=int, default=2, help="sequences per forward/backward")
    p.add_argument("--prompt-len", type=int, nargs=2, help="uniform range (default 100 300; tiny 4 12)")
    p.add_argument("--response-len", type=int, nargs=2, help="uniform range (default 200 1024; tiny 4 24)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="weights (all variants)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--attn-implementation", default="sdpa")
    p.add_argument("--logprob-chunk-size", type=int, default=1024, help="r1 chunked LM head; 0 = full logits")
    p.add_argument("--fused-adamw", action=argparse.BooleanOptionalAction, default=True, help="r1 optimizer")
    p.add_argument("--r1-loss-type", default="reinforce_with_baseline")
    p.add_argument("--r1-loss-agg", default="seq_mean_token_mean")
    p.add_argument("--r1-compile", help="r1 variants: torch.compile the decoder layers with this backend (e.g. inductor)")
    p.add_argument("--r1-sdpa-backends", nargs="+", choices=["flash", "efficient", "cudnn", "math", "torch"],
                   default=["flash", "efficient", "math"],
                   help="r1 variants: the PyTorch SDPA kernels allowed in training (the modules' sdpa_backends); "
                        "default as configs/grpo.yaml (no cuDNN); `torch` = torch's own choice (sdpa_backends null)")
    p.add_argument("--r1-microbatch-max-tokens", type=int, default=16384,
                   help="variant r1-packed: token-budget microbatches (the modules' microbatch_max_tokens)")
    p.add_argument("--trl-loss-type", default="dapo", help="GRPOConfig.loss_type (TRL's default: dapo)")
    p.add_argument("--devices", type=int, default=1, help="r1 variants: DDP ranks on this node, each with --sequences")
    p.add_argument("--weak-scaling", type=int, metavar="N", help="r1 variants: tokens/s per GPU on 1 GPU vs 2, 4, .. N (DDP)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile-step", type=int, help="torch.profiler over this warm-up step (< --warmup): "
                   "kernel time vs wall time and the busiest operators, in the JSON's `profile`")
    p.add_argument("--peak-tflops", type=float, help="MFU denominator; default: measured bf16 matmul rate")
    p.add_argument("--no-peak-measure", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    if "torch" in args.r1_sdpa_backends and len(args.r1_sdpa_backends) > 1:
        p.error("--r1-sdpa-backends: `torch` (torch's own choice) stands alone")
    tiny = args.tiny
    for name, full, small in [("steps", 5, 2), ("warmup", 2, 1), ("sequences", 64, 8), ("group_size", 8, 4),
                              ("prompt_len", [100, 300], [4, 12]), ("response_len", [200, 1024], [4, 24])]:
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else full)
    if args.profile_step is not None and not 0 <= args.profile_step < args.warmup:
        p.error("--profile-step must be a warm-up step (0 <= step < --warmup): profiling slows the step it watches")
    if (args.devices > 1 or args.weak_scaling) and (args.variant not in ("r1", "r1-packed") or args.phase == "both"):
        p.error("--devices and --weak-scaling take one r1 variant (--variant r1 | r1-packed) and one --phase")
    if args.sequences % args.group_size or args.sequences % args.microbatch:
        p.error("--sequences must be divisible by --group-size and by --microbatch")
    return args


def shape(args) -> dict:
    return C.TINY_SHAPE if args.tiny else C.QWEN_15B_SHAPE


def prepare(args):
    """The cached model folder, and the seeded batches (warm-up steps first)."""
    tokenizer = C.build_word_tokenizer(shape(args)["vocab_size"], C.template_and_question_words([]))
    folder = C.random_model_folder(shape(args), tokenizer, "tiny-qwen2" if args.tiny else "qwen2.5-math-1.5b-shape")
    batches = C.make_rollout_batches(args.warmup + args.steps, args.sequences // args.group_size, args.group_size,
                                     tuple(args.prompt_len), tuple(args.response_len), C.filler_range(tokenizer), args.seed)
    return folder, batches


def torch_dtype(args):
    return getattr(torch, args.dtype)


def optimizer_info(optimizer) -> dict:
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
    d = optimizer.defaults
    return {"class": type(optimizer).__name__, **{k: d.get(k) for k in ("lr", "fused", "foreach")}}


# ------------------------------------------------------------------------------------- r1-lightning
class ReplayEngine:
    """A `RolloutEngine` that returns pre-made rollouts (one batch per `generate` call) instead of
    sampling; the reward of each rollout travels as its text ("0"/"1"), read back by `replay_reward`."""

    shares_policy_weights = True

    def __init__(self, batches, group_size: int) -> None:
        self.batches, self.group_size, self.calls = batches, group_size, 0

    def attach(self, policy, tokenizer, ranks=None) -> None: ...
    def load_weights(self, named_tensors) -> None: ...
    def sleep(self) -> None: ...
    def wake_up(self) -> None: ...

    def generate(self, prompts, sampling):
        from r1_lightning.rollout import Completion

        batch = self.batches[self.calls]
        self.calls += 1
        if len(batch) != len(prompts) * sampling.n:
            raise RuntimeError(f"replay batch has {len(batch)} rollouts for {len(prompts)} prompts x {sampling.n}")
        return [Completion(prompt_index=i // sampling.n, prompt_token_ids=list(r.prompt_ids), token_ids=list(r.response_ids),
                           text=str(int(r.reward)), finish_reason="stop") for i, r in enumerate(batch)]


def replay_reward(response: str, ground_truth: str) -> dict:
    return {"reward": float(response), "format_reward": 1.0, "answer_reward": float(response)}


def run_r1(args, folder, batches, device) -> dict:
    import lightning as L
    from torch.utils.data import DataLoader

    from r1_lightning.functional import PolicyLossConfig
    from r1_lightning.modules import GRPOModule, SFTModule
    from r1_lightning.modules.grpo_config import BatchConfig

    timer = C.StepTimer(device, args.profile_step)
    n, accum = args.sequences, args.sequences // args.microbatch
    packed = args.r1_microbatch_max_tokens if args.variant == "r1-packed" else None
    common = {"learning_rate": 1e-6, "max_grad_norm": 1.0, "dtype": args.dtype,
              "attn_implementation": args.attn_implementation, "gradient_checkpointing": args.gradient_checkpointing,
              "fused_adamw": args.fused_adamw, "logprob_chunk_size": args.logprob_chunk_size or None,
              "compile": args.r1_compile or False, "sdpa_backends": None if "torch" in args.r1_sdpa_backends else args.r1_sdpa_backends}
    if args.phase == "grpo":
        class TimedGRPO(GRPOModule):
            def _train_on_rollouts(self, microbatches):
                timer.start()
                metrics = super()._train_on_rollouts(microbatches)
                timer.stop()
                return metrics

        batching = BatchConfig(rollout_batch_size=n, group_size=args.group_size, train_batch_size=n,
                               gradient_accumulation_steps=accum)
        module = TimedGRPO(str(folder), engine=ReplayEngine(batches, args.group_size), batching=batching,
                           sampling_max_tokens=args.response_len[1], microbatch_max_tokens=packed,
                           loss=PolicyLossConfig(loss_type=args.r1_loss_type, loss_agg=args.r1_loss_agg), **common)
        module.reward_fn = replay_reward
        module.tokenizer = C.load_bench_tokenizer(folder)  # see common.random_model_folder
        prompts = n // args.group_size
        data = [{"prompt": [f"q{s}.{k}" for k in range(prompts)], "ground_truth": ["1"] * prompts} for s in range(len(batches))]
        loss = {"loss_type": args.r1_loss_type, "loss_agg": args.r1_loss_agg, "sort_by_length_in_train_batch": True,
                "microbatch_max_tokens": packed}
    else:
        class TimedSFT(SFTModule):
            def training_step(self, batch, batch_idx):
                timer.start()
                super().training_step(batch, batch_idx)
                timer.stop()

        module = TimedSFT(str(folder), gradient_accumulation_steps=accum, max_length=None, microbatch_max_tokens=packed,
                          **common)
        tok = module.tokenizer = C.load_bench_tokenizer(folder)  # see common.random_model_folder
        data = [{"prompt": [tok.decode(r.prompt_ids) for r in b], "response": [tok.decode(r.response_ids) for r in b]}
                for b in batches]
        if tok(data[0]["response"][0], add_special_tokens=False)["input_ids"] != batches[0][0].response_ids:
            raise RuntimeError("the tokenizer does not round-trip the synthetic ids: SFT would train on other tokens")
        loss = {"loss": "masked NLL sum / batch / accumulation (CS336 sft_microbatch_train_step)",
                "microbatch_max_tokens": packed}
    # every rank replays every batch (no distributed sampler): weak scaling, the same work per GPU
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=args.devices,
                        strategy="ddp" if args.devices > 1 else "auto", use_distributed_sampler=False,
                        max_steps=len(batches), precision="32-true", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=None))
    config = {**common, **loss, "optimizer": optimizer_info(trainer.optimizers[0]), "lightning_precision": "32-true",
              "pad": "right, per microbatch, no attention mask (causal SDPA)"}
    return {"config": config, "seconds": timer.seconds, "profile": timer.profile}


# ------------------------------------------------------------------------------------- TRL
def run_trl(args, folder, batches, device) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        import datasets
        from transformers import AutoModelForCausalLM, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer
    except ImportError as error:
        raise SystemExit(f"the trl variant needs trl==1.16.0, datasets and accelerate importable "
                         f"(on the GPU machine: PYTHONPATH=/tmp/site): {error}")
    timer, replay_timer = C.StepTimer(device, args.profile_step), C.StepTimer(device)

    class Timing(TrainerCallback):
        def on_step_begin(self, *a, **k):
            timer.start()

        def on_step_end(self, *a, **k):
            timer.stop()

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(args), attn_implementation=args.attn_implementation)
    tokenizer = C.load_bench_tokenizer(folder)
    common = {"output_dir": tempfile.mkdtemp(prefix="trl-bench-"), "per_device_train_batch_size": args.microbatch,
              "gradient_accumulation_steps": args.sequences // args.microbatch, "max_steps": len(batches),
              "learning_rate": 1e-6, "max_grad_norm": 1.0, "bf16": args.dtype == "bfloat16", "seed": args.seed,
              "gradient_checkpointing": args.gradient_checkpointing,
              "gradient_checkpointing_kwargs": {"use_reentrant": False}, "logging_steps": 1, "report_to": "none",
              "save_strategy": "no", "disable_tqdm": True, "use_cpu": device.type == "cpu"}
    if args.phase == "grpo":
        tokenizer.padding_side = "left"
        step = {"i": 0}

        def rollout_func(prompts, trainer):  # TRL calls it instead of generating
            batch = batches[step["i"]]
            step["i"] += 1
            if len(batch) != len(prompts):
                raise RuntimeError(f"TRL asked for {len(prompts)} completions, the replay batch has {len(batch)}")
            return {"prompt_ids": [r.prompt_ids for r in batch], "completion_ids": [r.response_ids for r in batch], "logprobs": None}

        def replay_rewards(prompts, completions, **kwargs):
            return [r.reward for r in batches[step["i"] - 1]]

        n_prompts = args.sequences // args.group_size * len(batches)
        trainer = GRPOTrainer(
            model=model, reward_funcs=[replay_rewards], processing_class=tokenizer, rollout_func=rollout_func,
            train_dataset=datasets.Dataset.from_dict({"prompt": [f"q{i}" for i in range(n_prompts)]}),
            args=GRPOConfig(**common, num_generations=args.group_size, max_completion_length=args.response_len[1],
                            loss_type=args.trl_loss_type, beta=0.0, log_completions=False))
        generate_and_score = trainer._generate_and_score_completions

        def timed_generate_and_score(inputs):
            replay_timer.start()
            out = generate_and_score(inputs)
            n_response = sum(len(r.response_ids) for r in batches[step["i"] - 1])
            if int(out["completion_mask"].sum()) != n_response:  # TRL must train on exactly the replayed tokens
                raise RuntimeError(f"TRL masks {int(out['completion_mask'].sum())} completion tokens, expected {n_response}")
            replay_timer.stop()
            return out

        trainer._generate_and_score_completions = timed_generate_and_score
    else:
        rows = [{"input_ids": r.prompt_ids + r.response_ids, "completion_mask": [0] * len(r.prompt_ids) + [1] * len(r.response_ids)}
                for b in batches for r in b]
        trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=datasets.Dataset.from_list(rows),
                             args=SFTConfig(**common, max_length=None, completion_only_loss=True, shuffle_dataset=False,
                                            train_sampling_strategy="sequential"))
        get_batch_samples, seen = trainer.get_batch_samples, []

        def checked_batch_samples(*a, **k):  # each optimizer step must see exactly our batch
            samples, n_items = get_batch_samples(*a, **k)
            seen.append(sum(int(s["attention_mask"].sum()) for s in samples))
            if seen[-1] != sum(r.n_tokens for r in batches[len(seen) - 1]):
                raise RuntimeError(f"TRL SFT step {len(seen) - 1} holds {seen[-1]} tokens, not the replayed batch")
            return samples, n_items

        trainer.get_batch_samples = checked_batch_samples
    trainer.add_callback(Timing())
    trainer.train()
    seconds = timer.seconds
    if args.phase == "grpo":
        if len(replay_timer.seconds) != len(seconds):
            raise RuntimeError(f"{len(replay_timer.seconds)} replays for {len(seconds)} optimizer steps")
        seconds = [s - g for s, g in zip(seconds, replay_timer.seconds)]
    targs = trainer.args
    config = {k: getattr(targs, k, None) for k in ("bf16", "gradient_checkpointing", "gradient_checkpointing_kwargs", "optim",
                                                     "loss_type", "beta", "max_length", "padding_free", "completion_only_loss",
                                                     "per_device_train_batch_size", "gradient_accumulation_steps", "max_grad_norm")}
    config.update(optimizer=optimizer_info(trainer.optimizer), attn_implementation=args.attn_implementation,
                  weights_dtype=args.dtype, lm_head="TRL fused chunked log-prob head (fused_lm_head=True)")
    out = {"config": config, "seconds": seconds, "profile": timer.profile}
    if args.phase == "grpo":
        out["replay_and_scoring_seconds"] = replay_timer.seconds
        config["pad"] = "prompts left / completions right to the longest of the whole generation batch, attention mask"
    return out


# ------------------------------------------------------------------------------------- plain HF loop
def run_hf(args, folder, batches, device) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(args), attn_implementation=args.attn_implementation)
    model.to(device).train()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    pad, mb, accum, timer = model.config.pad_token_id or 0, args.microbatch, args.sequences // args.microbatch, C.StepTimer(device, args.profile_step)
    for batch in batches:
        rewards = torch.tensor([r.reward for r in batch]).view(-1, args.group_size)
        advantages = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)).flatten()
        timer.start()
        for k in range(0, len(batch), mb):
            rows, width = batch[k:k + mb], max(r.n_tokens for r in batch[k:k + mb])
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attention, response = torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
            for i, r in enumerate(rows):
                ids[i, :r.n_tokens] = torch.tensor(r.prompt_ids + r.response_ids)
                attention[i, :r.n_tokens], response[i, len(r.prompt_ids):r.n_tokens] = 1, True
            ids, attention, response = ids.to(device), attention.to(device), response.to(device)
            logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1].float()
            log_probs = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            mask = response[:, 1:].float()
            if args.phase == "grpo":
                adv = advantages[k:k + mb].to(device)[:, None]
                loss = ((-adv * log_probs * mask).sum(-1) / mask.sum(-1)).mean() / accum
            else:
                loss = -(log_probs * mask).sum() / mask.sum() / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timer.stop()
    config = {"optimizer": optimizer_info(optimizer), "gradient_checkpointing": args.gradient_checkpointing,
              "attn_implementation": args.attn_implementation, "weights_dtype": args.dtype, "max_grad_norm": 1.0,
              "loss": "per-sequence masked mean, batch mean (GRPO) / token mean (SFT)",
              "pad": "right, to the longest in the microbatch, attention mask", "lm_head": "full logits, float32 log_softmax"}
    return {"config": config, "seconds": timer.seconds, "profile": timer.profile}


# ------------------------------------------------------------------------------------- summary
def summarize(args, result: dict, batches, peak_tflops: float | None) -> dict:
    cfg, timed = shape(args), batches[args.warmup:]
    n_params, seconds = C.shape_parameters(cfg), result.pop("seconds")[args.warmup:]
    tokens, lens = [sum(r.n_tokens for r in b) for b in timed], [[r.n_tokens for r in b] for b in timed]
    flops = {causal: [C.model_flops(n_params, cfg["num_hidden_layers"], cfg["hidden_size"], x, causal) for x in lens]
             for causal in (False, True)}
    result.update(
        n_params=n_params, steps_timed=len(seconds), step_seconds=seconds, median_step_seconds=C.median(seconds),
        tokens_per_step=tokens, response_tokens_per_step=[sum(len(r.response_ids) for r in b) for b in timed],
        tokens_per_s=C.median([t / s for t, s in zip(tokens, seconds)]), tokens_per_s_total=sum(tokens) / sum(seconds),
        model_flops_per_step=flops[False], model_flops_per_step_causal=flops[True])
    result.update(C.mfu_fields(flops[False], flops[True], seconds, peak_tflops))
    return result


def local_rank() -> int:
    """This process's rank on the node: Lightning's DDP starts ranks > 0 by running this script again
    with LOCAL_RANK set."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def run_single(args) -> dict:
    device = C.resolve_device(args.device)
    if device.type == "cuda" and args.devices > 1:
        device = torch.device("cuda", local_rank())
    if device.type == "cpu" and args.tiny:
        torch.set_num_threads(1)  # tiny ops: threads only contend (and other jobs may share the cores)
    torch.manual_seed(args.seed)
    folder, batches = prepare(args)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    result = {"variant": args.variant, "phase": args.phase, "devices": args.devices}
    result.update({"r1": run_r1, "r1-packed": run_r1, "trl": run_trl, "hf": run_hf}[args.variant](args, folder, batches, device))
    result.update(C.peak_memory(device))
    result["config"].update(microbatch=args.microbatch, gradient_accumulation_steps=args.sequences // args.microbatch,
                            sequences_per_step=args.sequences, group_size=args.group_size)
    peak = args.peak_tflops or (None if args.no_peak_measure else C.measure_matmul_tflops(device, torch_dtype(args)))
    result = summarize(args, result, batches, peak)
    return {"benchmark": "policy_update", "environment": C.environment(device), "model_folder": str(folder),
            "matmul_peak_tflops": peak, "mfu_formula": C.MFU_FORMULA, "data": data_info(args), **result}


def data_info(args) -> dict:
    return {k: getattr(args, k) for k in ("tiny", "sequences", "group_size", "prompt_len", "response_len", "warmup", "steps", "seed")}


def run_all(args, argv: list[str]) -> dict:
    """One child process per (phase, variant) (per-variant peak memory), then one matmul peak, MFU, ratios."""
    device = C.resolve_device(args.device)
    prepare(args)  # build the cached model folder once, before the children
    phases = PHASES if args.phase == "both" else (args.phase,)
    variants = VARIANTS if args.variant == "all" else (args.variant,)
    results: dict[str, dict] = {}
    for p in phases:
        for v in variants:
            results.setdefault(p, {})[v] = C.run_child(__file__, argv, ("--variant", "--phase", "--out"),
                                                       ["--variant", v, "--phase", p, "--no-peak-measure"])
            C.write_partial({"benchmark": "policy_update", "partial": True, "results": results}, args.out)
    peak = args.peak_tflops or C.measure_matmul_tflops(device, torch_dtype(args))
    ratios, acceptance = {}, {}
    for phase, by_variant in results.items():
        ok = {v: r for v, r in by_variant.items() if "error" not in r}
        for r in ok.values():
            r.update(C.mfu_fields(r["model_flops_per_step"], r["model_flops_per_step_causal"], r["step_seconds"], peak))
            for key in ("environment", "matmul_peak_tflops", "mfu_formula", "benchmark", "data"):
                r.pop(key, None)
        for mine in ("r1", "r1-packed"):
            for peer in ("trl", "hf"):
                if mine in ok and peer in ok:
                    mem = ok[mine]["peak_memory_gb"], ok[peer]["peak_memory_gb"]
                    ratios[f"{phase}_{mine}_over_{peer}_tokens_per_s"] = ok[mine]["tokens_per_s"] / ok[peer]["tokens_per_s"]
                    ratios[f"{phase}_{mine}_over_{peer}_peak_memory"] = mem[0] / mem[1] if None not in mem else None
            if mine in ok and "trl" in ok:
                acceptance[f"{phase}_{mine}_tokens_per_s_at_least_1.5x_trl"] = ratios[f"{phase}_{mine}_over_trl_tokens_per_s"] >= 1.5
                mem_ratio = ratios[f"{phase}_{mine}_over_trl_peak_memory"]
                acceptance[f"{phase}_{mine}_peak_memory_not_above_trl"] = None if mem_ratio is None else mem_ratio <= 1.0
            if mine in ok:
                acceptance[f"{phase}_{mine}_mfu_at_least_0.40"] = ok[mine]["mfu"] >= 0.40
    return {"benchmark": "policy_update", "environment": C.environment(device), "matmul_peak_tflops": peak,
            "mfu_formula": C.MFU_FORMULA, "data": data_info(args), "results": results, "ratios": ratios,
            "acceptance": acceptance}


def weak_scaling_devices(n: int) -> list[int]:
    """The GPU counts of a weak-scaling run up to n: 1, the powers of two below n, and n."""
    return sorted({1, n, *(2**k for k in range(1, n.bit_length()) if 2**k < n)})


def run_weak_scaling(args, argv: list[str]) -> dict:
    """One child on 1 GPU, then one under DDP on each larger count: tokens/s per GPU and the ratios."""
    prepare(args)  # the cached model folder, once
    runs = {str(n): C.run_child(__file__, argv, ("--weak-scaling", "--devices", "--out"), ["--devices", str(n)])
            for n in weak_scaling_devices(args.weak_scaling)}
    base = runs["1"].get("tokens_per_s")
    efficiency = {n: r["tokens_per_s"] / base for n, r in runs.items() if base and "error" not in r}
    largest = efficiency.get(str(args.weak_scaling))
    return {"benchmark": "policy_update_weak_scaling", "environment": C.environment(C.resolve_device(args.device)),
            "data": data_info(args), "runs": runs, "efficiency": efficiency, "weak_scaling_efficiency": largest,
            "acceptance": {"weak_scaling_at_least_0.90": largest is not None and largest >= 0.9}}


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.weak_scaling:
        return C.emit(run_weak_scaling(args, argv), args.out)
    single = args.variant != "all" and args.phase != "both"
    result = run_single(args) if single else run_all(args, argv)
    return C.emit(result, args.out) if local_rank() == 0 else result  # one JSON, rank 0's


if __name__ == "__main__":
    main()
