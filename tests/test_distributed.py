"""Data parallelism on the CPU: Lightning's DDP strategy over 2 gloo processes gives the gradients
of one process training on the same global batch.

The 2 processes run this file as a script (`run_workers`, with the environment torchrun would set),
so pytest itself stays single-process; the single-process reference runs in pytest, through the
same `fit_and_record`. Every run records the gradient of each optimizer update (after DDP's
all-reduce, before clipping) and the final parameters. Gradients, not only parameters: AdamW's first
step is nearly lr·sign(g), blind to most errors of scale or weighting.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORLD = 2
GRPO = {"rollout_batch_size": 8, "group_size": 4, "train_batch_size": 8, "gradient_accumulation_steps": 2,
        "reward_fn": "toy_rewards.digit_fraction_reward"}
# name -> (module, its options beyond learning rate and seed, prompts or examples per rank and step);
# the batch sizes are per rank, as Lightning's batch_size
RUNS = {
    "seq_mean_token_mean": ("GRPOModule", {**GRPO, "loss_agg": "seq_mean_token_mean"}, 2),
    "token_mean": ("GRPOModule", {**GRPO, "loss_agg": "token_mean"}, 2),
    "seq_mean_token_sum_norm": ("GRPOModule", {**GRPO, "loss_agg": "seq_mean_token_sum_norm",
                                               "sampling_max_tokens": 16}, 2),
    # 2 epochs x 2 train batches: 4 updates from one rollout batch, with old log-probs and clipping
    "grpo_clip_epochs": ("GRPOModule", {**GRPO, "loss_type": "grpo_clip", "epochs_per_rollout_batch": 2,
                                        "train_batch_size": 4, "cliprange": 0.1}, 2),
    # REINFORCE++: advantages whitened over the global batch, both ranks' samples (a rank's own
    # statistics would give other advantages, and other gradients)
    "reinforce_pp": ("GRPOModule", {**GRPO, "advantage_estimator": "reinforce_pp"}, 2),
    # CISPO's clipped, detached weights over 4 updates from one rollout batch (old log-probs)
    "cispo_epochs": ("GRPOModule", {**GRPO, "loss_type": "cispo", "epochs_per_rollout_batch": 2,
                                    "train_batch_size": 4, "cliprange_high": 0.1}, 2),
    "sft": ("SFTModule", {"gradient_accumulation_steps": 2}, 4),
    # 4 prompts x 4 answers per rank; the all-digit answers (reward 1) are kept, in updates of 2 per rank
    "expert_iteration": ("ExpertIterationModule", {"group_size": 4, "sft_batch_size": 2, "gradient_accumulation_steps": 1,
                                                   "reward_fn": "toy_rewards.digit_fraction_reward"}, 4),
}
# Logged metrics that are means over the global batch (a rank's own would differ)
LOGGED_AS_ONE_PROCESS = ("train/loss", "train/entropy", "train/reward_mean", "train/response_length",
                         "train/advantage_abs_mean", "train/grad_norm", "ei/kept")
BATCH_KEYS = ("rollout_batch_size", "train_batch_size", "gradient_accumulation_steps", "sft_batch_size")


def run_options(name: str, world: int) -> tuple[str, dict, int]:
    """Run `name` for one rank of `world` ranks that together train the global batch of `WORLD`
    ranks: 1 process has `WORLD` times the batches, with as many sequences per microbatch."""
    module, options, batch_size = RUNS[name]
    scale = WORLD // world
    return module, {k: v * scale if k in BATCH_KEYS else v for k, v in options.items()}, batch_size * scale


def fit_and_record(spec: dict, name: str, world: int) -> dict:
    """Fit run `name` (one training step) on `world` ranks (this process is one of them) and return
    {"grads": [per optimizer update: {param: grad}], "params": {param: tensor}, "allreduces": how
    many gradient all-reduces DDP made, "rollout_seed": this rank's next rollout seed, "logged": the
    last logged metrics}."""
    import lightning as L
    from grpo_options import grpo_options
    from test_modules import FixedEngine

    from r1_lightning import modules
    from r1_lightning.data import PromptDataModule, SFTDataModule
    from r1_lightning.modules.base import PolicyModule

    grads: list[dict[str, torch.Tensor]] = []
    allreduces = []  # one per gradient bucket DDP all-reduced (the tiny model fits one bucket)
    original = PolicyModule.optimizer_update

    def counting_allreduce(state, bucket):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        allreduces.append(1)
        return allreduce_hook(state, bucket)  # DDP's default: the mean over ranks

    def count_allreduces(trainer, module):
        if world > 1:  # (Lightning registers its own `ddp_comm_hook` on CUDA only)
            trainer.strategy.model.register_comm_hook(None, counting_allreduce)

    def recording_update(self, *args):
        grads.append({k: p.grad.detach().clone() for k, p in self.policy.named_parameters()})
        return original(self, *args)

    PolicyModule.optimizer_update = recording_update
    try:
        module_name, options, batch_size = run_options(name, world)
        if module_name == "SFTModule":
            module = modules.SFTModule(spec["model_dir"], learning_rate=1e-2, seed=0, **options)
            data = SFTDataModule(spec["sft_path"], batch_size=batch_size)
        else:
            options = grpo_options(**options) if module_name == "GRPOModule" else options
            module = getattr(modules, module_name)(spec["model_dir"], engine=FixedEngine(), learning_rate=1e-2,
                                                   seed=0, **options)
            data = PromptDataModule(spec["train_path"], batch_size=batch_size)
        trainer = L.Trainer(
            max_epochs=1, limit_train_batches=1, accelerator="cpu", devices=world,
            strategy="ddp" if world > 1 else "auto", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
            default_root_dir=spec["folder"], callbacks=[L.pytorch.callbacks.LambdaCallback(on_fit_start=count_allreduces)],
        )
        trainer.fit(module, datamodule=data)
    finally:
        PolicyModule.optimizer_update = original
    return {"grads": grads, "params": {k: v.detach().clone() for k, v in module.policy.named_parameters()},
            "allreduces": len(allreduces), "rollout_seed": getattr(module, "step_seed", lambda: None)(),
            "logged": {k: float(v) for k, v in trainer.logged_metrics.items()}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(spec: dict, tmp_path: Path, timeout: float = 240, script: str = __file__) -> None:
    """Run `script` (this file by default) as `WORLD` worker processes (ranks of one node, gloo) on
    `spec`: `python script spec.json`, each with the environment torchrun would set."""
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    tests = str(Path(__file__).parent)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(WORLD),
           "NODE_RANK": "0", "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, script, str(spec_path)], env={**env, "LOCAL_RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(WORLD)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, output) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{output[-4000:]}"


def test_ddp_updates_equal_the_single_process_updates(tiny_model_dir, toy_task_dir, tmp_path):
    """One training step on 2 ranks = one process on the same global batch (twice the per-rank
    batch), compared gradient by gradient and on the final weights: GRPO (2 prompts x 4 samples per
    rank) with each loss aggregation, and grpo_clip with 2 epochs of 2 updates; SFT (4 examples per
    rank); expert iteration (4 prompts x 4 samples per rank, the kept answers pooled). Fails if a
    group were split across ranks (advantages over half groups), if a rank normalized token_mean by
    its own tokens, or if the ranks trained on the same prompts. Also: DDP all-reduces the
    gradients once per update (not once per microbatch), and the ranks sample with different seeds."""
    spec = {"model_dir": tiny_model_dir, "train_path": str(toy_task_dir / "train.jsonl"), "folder": str(tmp_path),
            "sft_path": str(toy_task_dir / "sft.jsonl"), "runs": list(RUNS)}
    run_workers(spec, tmp_path)
    mismatched = {}  # run -> the first difference found
    for name in RUNS:
        distributed, other_rank = torch.load(tmp_path / f"{name}.pt"), torch.load(tmp_path / f"{name}.rank1.pt")
        single = fit_and_record(spec, name, world=1)
        # expert iteration makes as many updates as its kept answers fill: at least one here
        expected_updates = {"grpo_clip_epochs": 4, "cispo_epochs": 4,
                            "expert_iteration": max(1, len(single["grads"]))}.get(name, 1)
        assert len(single["grads"]) == expected_updates, name
        assert all(any(g.abs().max() > 0 for g in grads.values()) for grads in single["grads"])
        try:
            assert_same_as_one_process(distributed, other_rank, single, weights="params")
        except AssertionError as error:
            mismatched[name] = str(error).splitlines()[0]
    assert not mismatched, mismatched
    # one gradient all-reduce per update, however many microbatches (no_sync before the last)
    for name in RUNS:
        distributed = torch.load(tmp_path / f"{name}.pt")
        assert distributed["allreduces"] == len(distributed["grads"]), name
    # the ranks sample with different seeds (the same seed would correlate their samples)
    assert distributed["rollout_seed"] != torch.load(tmp_path / f"{name}.rank1.pt")["rollout_seed"]


def assert_same_as_one_process(distributed: dict, other_rank: dict, single: dict, weights: str) -> None:
    """Rank 0's record of a 2-rank run against one process on the same global batch: every update's
    gradients (rtol 1e-4, atol 1e-6), the final weights (rtol 1e-3, atol 1e-4: AdamW's steps turn
    float32 rounding in near-zero gradients into lr-sized noise), rank 1's weights bit for bit equal
    to rank 0's, and the logged metrics of the global batch (means over all sequences, tokens and
    updates). `weights`: the record's key for the final weights."""
    assert len(distributed["grads"]) == len(single["grads"]), f"{len(distributed['grads'])} updates"
    for update, (rank_grads, grads) in enumerate(zip(distributed["grads"], single["grads"])):
        for param, grad in grads.items():
            torch.testing.assert_close(rank_grads[param], grad, rtol=1e-4, atol=1e-6, msg=f"update {update}, grad {param}")
    assert distributed[weights].keys() == single[weights].keys()
    for param, weight in single[weights].items():
        torch.testing.assert_close(distributed[weights][param], weight, rtol=1e-3, atol=1e-4, msg=f"weight {param}")
        assert torch.equal(other_rank[weights][param], distributed[weights][param]), f"rank 1's {param}"
    for metric in LOGGED_AS_ONE_PROCESS:
        if metric in single["logged"]:
            assert distributed["logged"][metric] == pytest.approx(single["logged"][metric], rel=1e-4), metric


def launch_two_nodes(args: list, tmp_path: Path, timeout: float = 240, strategy: str = "ddp") -> None:
    """`r1-lightning fit ...` as two launcher processes, one per "node" (NODE_RANK 0 and 1) of 1
    process each, meeting on the loopback address: what torchrun or SLURM start on two machines."""
    from test_cli import ROOT

    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK")}
    env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
                "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")])})
    command = [sys.executable, "-m", "r1_lightning.cli", *map(str, args), "--trainer.num_nodes", "2",
               "--trainer.devices", "1", "--trainer.strategy", strategy, "--trainer.accelerator", "cpu"]
    logs = [tmp_path / f"node{node}_{len(list(tmp_path.glob(f'node{node}_*.log')))}.log" for node in range(2)]
    with contextlib.ExitStack() as files:
        procs = [subprocess.Popen(command, env={**env, "NODE_RANK": str(node)}, cwd=tmp_path,
                                  stdout=files.enter_context(open(log, "w")), stderr=subprocess.STDOUT)
                 for node, log in enumerate(logs)]
        try:
            for proc in procs:
                proc.wait(timeout=timeout)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
    failed = {log: log.read_text()[-3000:] for proc, log in zip(procs, logs) if proc.returncode}
    assert not failed, "\n".join(f"{log} failed:\n{output}" for log, output in failed.items())


def test_two_nodes_train_checkpoint_and_resume_exactly(tiny_model_dir, toy_task_dir, tmp_path):
    """Two "nodes" on 127.0.0.1 train GRPO from the CLI (HF engine, real sampling, seeded per rank)
    and checkpoint every step; a second launch resumed from step 1 ends with the straight run's
    step-2 weights bit for bit: each rank continues at its own next batch with its own seed. The
    evaluations (one val batch per rank) hold every val question once."""
    from safetensors.torch import load_file
    from test_cli import tiny_grpo_args

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # gradient checkpointing as the shipped configs; 2 val batches of 5: one per rank
    checkpointing = ["--model.init_args.gradient_checkpointing", "true", "--data.init_args.val_batch_size", 5]
    launch_two_nodes(tiny_grpo_args(tiny_model_dir, toy_task_dir, straight, max_steps=2, extra=checkpointing), tmp_path)
    (step_1,) = (straight / "ckpt").glob("*step=1*.ckpt")
    assert torch.load(step_1, map_location="cpu", weights_only=True)["global_step"] == 1
    launch_two_nodes(tiny_grpo_args(tiny_model_dir, toy_task_dir, resumed, max_steps=2,
                                    extra=[*checkpointing, "--ckpt_path", step_1]), tmp_path)
    expected = load_file(straight / "ckpt" / "last_hf" / "model.safetensors")
    got = load_file(resumed / "ckpt" / "last_hf" / "model.safetensors")
    initial = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert expected.keys() == got.keys() and any(not torch.equal(expected[k], initial[k]) for k in expected)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    # the evaluations pooled both ranks' batches: each of the 10 val questions once, in order
    val = [json.loads(line)["problem"] for line in (toy_task_dir / "val.jsonl").read_text().splitlines()][:10]
    evaluations = sorted(straight.glob("logs/version_*/eval/eval_step_*.jsonl"))
    assert [e.name for e in evaluations] == ["eval_step_0.jsonl", "eval_step_2.jsonl"]
    for evaluation in evaluations:
        records = [json.loads(line) for line in evaluation.read_text().splitlines()]
        assert [r["prompt"].count(q) for r, q in zip(records, val)] == [1] * 10


def main(spec_path: str) -> None:
    """One worker rank: fit every run of the spec under DDP and save what it recorded."""
    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ["LOCAL_RANK"])
    for name in spec["runs"]:
        record = fit_and_record(spec, name, world=WORLD)
        torch.save(record, Path(spec["folder"]) / (f"{name}.pt" if rank == 0 else f"{name}.rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
