"""End to end: wall time of GRPO steps of the `configs/grpo.yaml` shape, split into its parts.

Runs the real thing: `r1-lightning fit` on a copy of `configs/grpo.yaml` (rollout batch 256 = 32
questions x group 8, up to 1024 new tokens, microbatches of at most 16,384 tokens, attention without
cuDNN, one update per step, gradient checkpointing, chunked log-probs, policy on cuda:0 and
`VLLMEngine` on cuda:1 with its config options) with only these changes: the model is the
Qwen2.5-Math-1.5B architecture with random weights and a word-level tokenizer
(`common.qwen_shape_rollout_folder`, as in rollouts.py: samples end on the real `</answer>` stop
string after ~512 tokens on average, ~13% reach 1024), the questions are GSM8K's, no evaluation, no
checkpoint. Options pick the engine's process (`--engine-process separate`: vLLM in processes of its
own, weights over NCCL) and one-step-off `--async-rollouts`; `benchmarks/gpu/run.sh async`
runs the three modes side by side. The breakdown comes from what the module logs every step:
`perf/rollout_seconds`, `perf/reward_seconds`, `perf/old_logprob_seconds` (0 here: one update per
rollout batch needs no old log-probs), `perf/update_seconds`, `perf/step_seconds` (rollout to
update) and the weight sync's time (`RolloutWeightSync`, which the module brings) `perf/weight_sync_seconds` before each step after the
first; with async rollouts the rollout and its grading run during the previous step's update, and
what the step still waited for them is `perf/rollout_wait_seconds` (waited in the sync, before the
step's own clock starts). `wall_step_s` is the wall clock from one training batch's start to its
end (`StepClock`), everything included. Random weights earn no reward, so every advantage is 0: the update still runs every forward,
backward and optimizer step (nothing is skipped for zero advantages).

    python benchmarks/grpo_step.py --steps 3 --out benchmarks/results/grpo_step_2gpu.json   # 2 GPUs
    python benchmarks/grpo_step.py --steps 3 --model.init_args.engine.init_args.colocate true \
        --model.init_args.engine.init_args.gpu_memory_utilization 0.45                      # 1 GPU
    python benchmarks/grpo_step.py --steps 4 --engine-process separate --async-rollouts    # 2 GPUs, async
    python benchmarks/grpo_step.py --tiny --device cpu                                      # CPU smoke run

Layouts (`--layout`, with `--devices` trainer ranks, DDP or `--strategy fsdp2`): `colocated` puts each
rank's engine on its own GPU (vLLM sleep mode, `--engine-memory` of it); `split` puts it on GPU
ranks + local rank. Under DDP the batch sizes are per rank: `samples_per_s` (rollouts of all ranks
per second of step) compares layouts with different rank counts, `train_tokens_per_s` (the ranks'
mean: per GPU) the update alone. `gpu_peak_memory_used_gb` is nvidia-smi's peak per GPU over the whole run (trainer and
engines together); `policy_gpu_peak_memory_gb` the trainer's own allocator's. `gpu_utilization_percent` is
each GPU's mean nvidia-smi utilization over the timed steps: with the policy on one GPU and the engine on the
other, what overlap buys shows as both rising.
    python benchmarks/grpo_step.py --layout colocated --devices 2 --steps 4             # colocated DDP, 2 GPUs
    python benchmarks/grpo_step.py --layout split --devices 1 --steps 4                 # split 1+1
    python benchmarks/grpo_step.py --layout split --devices 2 --engine-process separate --steps 4  # split 2+2
    python benchmarks/grpo_step.py --model qwen7b-shape --layout colocated --devices 2 --strategy fsdp2 \
        --rollout-batch-size 128 --enforce-eager --steps 3                              # the 7B shape, FSDP2
Other options are passed on to `r1-lightning fit`, e.g. `--model.init_args.engine.init_args.replicas 2`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import yaml

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # common, r1_lightning
import common as C

PARTS = ("rollout", "reward", "old_logprob", "update", "weight_sync")
# With async rollouts the rollout and reward run beside the previous step's update; what the step
# waits for instead is rollout_wait.
ASYNC_PARTS = ("rollout_wait", "old_logprob", "update", "weight_sync")


class StepClock(L.Callback):
    """Logs `perf/wall_step_seconds`: from a training batch's start (before the weight sync, which the
    module's own callback runs after the trainer's) to its end. With `path`, rank 0 also appends each
    step's [start, end] (`time.time()`) there as a JSON line: the window of the GPU utilization."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start, self.start_time = time.perf_counter(), time.time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.log("perf/wall_step_seconds", time.perf_counter() - self.start, on_step=True, on_epoch=False)
        if self.path and trainer.is_global_zero:
            with open(self.path, "a") as f:
                f.write(json.dumps({"start": self.start_time, "end": time.time()}) + "\n")


def timed_utilization(gpus: C.GpuMonitor, steps_file: Path, warmup_steps: int) -> list[float] | None:
    """Each GPU's mean utilization (%) from the first timed step's start to the last one's end (StepClock's
    windows, one per step in order): how busy the trainer's and the engine's GPUs kept (both near 100%
    only if generation and training overlap)."""
    windows = [json.loads(line) for line in steps_file.read_text().splitlines()] if steps_file.exists() else []
    windows = windows[warmup_steps:]
    if not windows:
        return None
    return gpus.utilization(min(w["start"] for w in windows), max(w["end"] for w in windows))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="GRPO steps, warm-up steps included")
    p.add_argument("--warmup-steps", type=int, default=1,
                   help="first steps left out of the medians (median_timed): the first builds the engine and, compiled, "
                        "compiles; a compiled update may recompile for a new microbatch shape in the next few")
    p.add_argument("--tiny", action="store_true", help="2-layer model, 2 questions x 2 samples x 16 tokens, HF engine")
    p.add_argument("--device", default="auto", help="auto | cpu (cpu: --tiny with the HF engine)")
    p.add_argument("--config", default=str(C.REPO_ROOT / "configs" / "grpo.yaml"))
    p.add_argument("--gsm8k", help="GSM8K jsonl for the questions (default: $R1L_GSM8K, else data/gsm8k/test.jsonl)")
    p.add_argument("--stop-token-fraction", type=float, default=1 / 512)
    p.add_argument("--workdir", help="logs go here (default: a temporary folder)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds before the fit is stopped")
    p.add_argument("--engine-process", choices=("in_process", "separate"),
                   help="VLLMEngine's process option (default: the config's)")
    p.add_argument("--async-rollouts", action="store_true", help="one-step-off asynchronous rollouts")
    p.add_argument("--model", choices=list(C.ROLLOUT_SHAPES), default="qwen1.5b-shape", help="random-weight shape")
    p.add_argument("--layout", choices=("colocated", "split"), help="engines per rank (default: the config's engine)")
    p.add_argument("--devices", type=int, default=1, help="trainer ranks on this node")
    p.add_argument("--strategy", choices=("ddp", "fsdp2"), default="ddp", help="with --devices > 1")
    p.add_argument("--engine-memory", type=float, help="the engine's gpu_memory_utilization (colocated default 0.35)")
    p.add_argument("--rollout-batch-size", type=int, help="per rank (= train batch; questions = it / group size)")
    p.add_argument("--enforce-eager", action="store_true", help="vLLM without CUDA graphs or torch.compile (faster start)")
    p.add_argument("--out", help="also write the JSON here")
    args, args.fit_overrides = p.parse_known_args(argv)  # the rest goes to `r1-lightning fit` as given
    if not 0 <= args.warmup_steps < args.steps:
        p.error(f"--warmup-steps {args.warmup_steps} must be at least 0 and below --steps {args.steps}")
    return args


def derived_config(args, folder: Path, gsm8k: Path, workdir: Path) -> dict:
    config = yaml.safe_load(Path(args.config).read_text())
    trainer, init, data = config["trainer"], config["model"]["init_args"], config["data"]["init_args"]
    trainer.update(max_steps=args.steps, default_root_dir=str(workdir), enable_checkpointing=False,
                   enable_progress_bar=False,  # the module brings its own weight sync
                   callbacks=[{"class_path": "grpo_step.StepClock", "init_args": {"path": str(workdir / "steps.jsonl")}}],
                   logger=[{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"name": "logs"}}])
    init.update(model_name_or_path=str(folder), tokenizer_name_or_path=str(folder / "tokenizer"))
    data.update(train_path=str(gsm8k), val_path=str(gsm8k), dataset="gsm8k")
    if args.tiny:
        trainer.update(accelerator="cpu" if args.device == "cpu" else "auto")
        init.update(engine={"class_path": "r1_lightning.rollout.HFEngine"}, sampling_max_tokens=16, dtype="float32",
                    compile=False)  # a smoke run: inductor's compile (a C++ compiler on the CPU) would dominate it
        init["batching"].update(rollout_batch_size=4, group_size=2, train_batch_size=4, gradient_accumulation_steps=2)
    engine = init["engine"].setdefault("init_args", {})
    place(args, trainer, init, data, engine)
    if args.async_rollouts:
        init["async_rollouts"] = {**init.get("async_rollouts", {}), "enabled": True}
        if init["engine"]["class_path"].endswith("HFEngine"):
            engine["own_weights"] = True  # async rollouts need an engine with its own weights
    if args.engine_process or args.enforce_eager:
        if not init["engine"]["class_path"].endswith("VLLMEngine"):
            raise SystemExit("--engine-process and --enforce-eager are VLLMEngine options (not with --tiny)")
        engine.update({"process": args.engine_process} if args.engine_process else {},
                      **({"enforce_eager": True} if args.enforce_eager else {}))
    return config


def place(args, trainer: dict, init: dict, data: dict, engine: dict) -> None:
    """The layout, trainer ranks, strategy and batch size options in the derived config."""
    if args.devices > 1:
        trainer["devices"] = args.devices
        trainer["strategy"] = "ddp" if args.strategy == "ddp" else {
            "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
            "init_args": {"data_parallel_size": args.devices, "tensor_parallel_size": 1}}
    if args.layout is not None:
        if not init["engine"]["class_path"].endswith("VLLMEngine"):
            raise SystemExit("--layout places VLLMEngines (not with --tiny)")
        engine.update(device="auto", colocate=args.layout == "colocated")
        if args.layout == "colocated":
            engine.update(process="in_process", gpu_memory_utilization=args.engine_memory or 0.35)
    if args.engine_memory and args.layout != "colocated":
        engine["gpu_memory_utilization"] = args.engine_memory
    if args.rollout_batch_size:  # the data module's batch size follows (GRPOModule sets it)
        n = args.rollout_batch_size
        init["batching"].update(rollout_batch_size=n, train_batch_size=n, gradient_accumulation_steps=max(1, n // 2))


def read_metrics(log_dir: Path) -> dict[int, dict[str, float]]:
    """{global step: {metric: value}} from the CSVLogger's metrics.csv (rows of one step merged)."""
    steps: dict[int, dict[str, float]] = {}
    with open(log_dir / "metrics.csv") as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if k != "step" and v not in (None, "")}
            steps.setdefault(int(row["step"]), {}).update(values)
    return steps


def breakdown(steps: dict[int, dict[str, float]], async_rollouts: bool = False) -> list[dict]:
    rows = []
    critical = ASYNC_PARTS if async_rollouts else PARTS  # what the step's wall time is made of
    for step, m in sorted(steps.items()):
        if "perf/step_seconds" not in m:
            continue
        row = {"step": step, **{f"{part}_s": m.get(f"perf/{part}_seconds", 0.0) for part in (*PARTS, "rollout_wait")}}
        # the wait for an async rollout happens in the weight sync's callback, before perf/step_seconds starts
        row["step_s"] = m["perf/step_seconds"] + row["weight_sync_s"] + (row["rollout_wait_s"] if async_rollouts else 0.0)
        row["wall_step_s"] = m.get("perf/wall_step_seconds")
        row["other_s"] = row["step_s"] - sum(row[f"{part}_s"] for part in critical)  # packing, logging
        row.update(response_length_mean=m.get("train/response_length"),
                   truncated_fraction=m.get("train/truncated_fraction"),
                   rollout_tokens_per_s=m.get("perf/rollout_tokens_per_s"),
                   train_tokens_per_s=m.get("perf/train_tokens_per_s"),
                   policy_gpu_peak_memory_gb=m.get("perf/gpu_peak_memory_gb"),
                   engine_logprob_gap=m.get("train/engine_logprob_gap"))
        rows.append(row)
    return rows


def run_fit(command: list[str], env: dict, log_path: Path, timeout: float) -> tuple[int, bool]:
    """Run `r1-lightning fit` with its output streamed into `log_path`, so that a run stopped early
    still leaves its log. Stopped at `timeout` seconds or on SIGTERM (`timeout` in run.sh, at its
    deadline): each of its processes first prints every thread's stack into the log (the CLI's
    faulthandler on SIGUSR2: what a hung run waits for), then the whole process group is killed, its
    ranks and vLLM's processes with it. Returns (exit code, whether it was stopped)."""
    def stop(signum, frame):
        raise TimeoutError

    previous = signal.signal(signal.SIGTERM, stop)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=C.REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout), False
        except (TimeoutError, subprocess.TimeoutExpired):
            for sig, grace in ((signal.SIGUSR2, 3.0), (signal.SIGKILL, None)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace)
            return proc.returncode, True
        finally:
            signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    gsm8k = C.find_gsm8k(args.gsm8k)
    folder, model_note = C.qwen_shape_rollout_folder(C.gsm8k_questions(gsm8k), args.tiny, args.stop_token_fraction,
                                                     args.model)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="grpo-step-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = derived_config(args, folder, gsm8k, workdir)
    config_path = workdir / "grpo_step.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    (workdir / "steps.jsonl").unlink(missing_ok=True)  # StepClock appends

    command = [sys.executable, "-m", "r1_lightning.cli", "fit", "--config", str(config_path), *args.fit_overrides]
    pythonpath = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")]))
    # grpo_step.StepClock; fit.log names each torch.compile recompile and the guard that failed
    env = {"TORCH_LOGS": "recompiles", **os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath}
    start = time.perf_counter()
    with C.GpuMonitor() as gpus:
        returncode, cut = run_fit(command, env, workdir / "fit.log", args.timeout)
    wall = time.perf_counter() - start
    log = (workdir / "fit.log").read_text(errors="replace")
    import torch

    environment = C.environment(torch.device("cuda", 0) if torch.cuda.is_available() else None)
    result = {"benchmark": "grpo_step", "environment": environment, "model_note": model_note,
              "model_folder": str(folder), "config": str(config_path), "fit_command": " ".join(command),
              "fit_exit_code": returncode, "fit_cut": cut, "fit_wall_seconds": wall, "workdir": str(workdir),
              "layout": args.layout, "ranks": args.devices, "strategy": args.strategy if args.devices > 1 else None,
              "gpu_peak_memory_used_gb": gpus.peak_gb}
    metrics_files = sorted(workdir.glob("logs/version_*/metrics.csv"))
    if cut:  # the steps it made are reported; the log's end says where it was (each thread's stack)
        result["log_tail"] = log[-4000:]
    if not metrics_files or (returncode != 0 and not cut):
        result["error"] = log[-4000:]
        C.emit(result, args.out)
        raise SystemExit(f"r1-lightning fit failed (exit {returncode}); log: {workdir / 'fit.log'}")
    init = config["model"]["init_args"]
    asynchronous = init.get("async_rollouts", {}).get("enabled", False)
    rows = breakdown(read_metrics(metrics_files[-1].parent), asynchronous)
    timed = rows[args.warmup_steps:] or rows  # a fit cut short: every step it made
    for row in rows:  # rollouts of all ranks per second of step (the batch sizes are per rank)
        row["samples_per_s"] = init["batching"]["rollout_batch_size"] * args.devices / row["step_s"]
    keys = ("step_s", "wall_step_s", *(f"{part}_s" for part in (*PARTS, "rollout_wait")), "other_s", "samples_per_s",
            "train_tokens_per_s", "policy_gpu_peak_memory_gb", "engine_logprob_gap")
    result.update(
        shape={**init["batching"], **{k: init[k] for k in ("sampling_max_tokens", "gradient_checkpointing",
                                                             "logprob_chunk_size")}},
        engine=init["engine"], async_rollouts=asynchronous, steps=rows,
        timed_steps=[row["step"] for row in timed],
        median_timed={key: C.median([r[key] for r in timed if r[key] is not None]) for key in keys},
        gpu_utilization_percent=timed_utilization(gpus, workdir / "steps.jsonl", len(rows) - len(timed)),
    )
    medians = result["median_timed"]
    # 0.1 s: the bound for a 1.5B-parameter sync over NCCL (the in-process sync takes ~0.03 s)
    gap = medians["engine_logprob_gap"]
    result["acceptance"] = {"step_under_60_s": medians["step_s"] < 60,
                            "weight_sync_under_0.1_s": medians["weight_sync_s"] is not None and medians["weight_sync_s"] < 0.1,
                            "engine_logprob_gap_under_0.05": gap is not None and gap < 0.05}
    return C.emit(result, args.out)


if __name__ == "__main__":
    main()
