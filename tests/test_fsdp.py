"""FSDP2 on the CPU: Lightning's `ModelParallelStrategy` over 2 gloo processes (data-parallel mesh of
2, the policy sharded by `PolicyModule.configure_model`) gives the updates of one process training
on the same global batch, gathers the full weights on every rank, and, from the CLI, resumes from
its distributed checkpoint (a folder) exactly.

For the updates, the workers are this file run as a script by `test_distributed.run_workers`; the
single-process references run in pytest. Every run records, before each AdamW step, the gradients
it steps with (gathered from the shards: after the reduce-scatter and the clipping to the global
norm), and at the end of training the full state dict (`full_state_dict`, what the engine is sent
and the HF export writes).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from test_distributed import (
    WORLD,
    assert_same_as_one_process,
    run_options,
    run_workers,
)

# The CLI's FSDP2: all ranks data-parallel (the policy has no tensor parallelism)
FSDP2_STRATEGY = json.dumps({"class_path": "ModelParallelStrategy",
                             "init_args": {"data_parallel_size": WORLD, "tensor_parallel_size": 1}})

# name -> (a run of test_distributed.RUNS, options added to it). `token_budget` cuts microbatches by
# tokens (the ranks then run different numbers of them) and takes the chunked log-prob path, which
# runs the decoder body without the root's forward, for 4 updates in one step.
RUNS = {
    "token_mean": ("token_mean", {}),
    "seq_mean_token_mean": ("seq_mean_token_mean", {"max_grad_norm": 1e-3}),  # clipped to the global norm
    "grpo_clip_epochs": ("grpo_clip_epochs", {}),  # 4 updates in one step, with old log-probs
    "token_budget": ("grpo_clip_epochs", {"loss_agg": "token_mean", "microbatch_max_tokens": 208,
                                          "logprob_chunk_size": 16}),
    "sft": ("sft", {}),
    "expert_iteration": ("expert_iteration", {}),
}


def fit_and_record(spec: dict, name: str, world: int) -> dict:
    """Fit run `name` for one training step on `world` ranks (FSDP2 when > 1; this process is one
    of them) and return {"grads": [per update: {param: full gradient}], "sharded": per update,
    whether the stepped parameters were DTensor shards, "backwards": microbatch backwards,
    "weights": {name: full tensor}, "logged": metrics}."""
    import lightning as L
    from grpo_options import grpo_options
    from lightning.pytorch.strategies import ModelParallelStrategy
    from test_modules import FixedEngine
    from torch.distributed.tensor import DTensor
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from r1_lightning import modules
    from r1_lightning.data import PromptDataModule, SFTDataModule
    from r1_lightning.distributed import full_state_dict

    base, extra = RUNS[name]
    module_name, options, batch_size = run_options(base, world)
    options = {**options, **extra, "learning_rate": 1e-2, "seed": 0}
    if module_name == "SFTModule":
        module = modules.SFTModule(spec["model_dir"], **options)
        data = SFTDataModule(spec["sft_path"], batch_size=batch_size)
    else:
        options = grpo_options(**options) if module_name == "GRPOModule" else options
        module = getattr(modules, module_name)(spec["model_dir"], engine=FixedEngine(), **options)
        data = PromptDataModule(spec["train_path"], batch_size=batch_size)
    record: dict = {"grads": [], "sharded": [], "backwards": 0}
    backward_microbatch = module.backward_microbatch

    def count_backwards(*args, **kwargs):
        record["backwards"] += 1
        return backward_microbatch(*args, **kwargs)

    module.backward_microbatch = count_backwards

    def record_gradients(optimizer, args, kwargs):  # every rank steps: the gathers are collective
        params = dict(module.policy.named_parameters())
        record["sharded"].append(all(isinstance(p, DTensor) for p in params.values()))
        assert all(p.grad is not None for p in params.values()), [k for k, p in params.items() if p.grad is None]
        record["grads"].append({k: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).clone()
                                for k, p in params.items()})

    def record_weights(trainer, pl_module):
        record["weights"] = {k: v.detach().clone() for k, v in full_state_dict(pl_module.policy).items()}

    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", devices=world, logger=False, enable_checkpointing=False,
        strategy=ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1) if world > 1 else "auto",
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        default_root_dir=spec["folder"], callbacks=[L.pytorch.callbacks.LambdaCallback(on_train_end=record_weights)],
    )
    handle = register_optimizer_step_pre_hook(record_gradients)
    try:
        trainer.fit(module, datamodule=data)
    finally:
        handle.remove()
    record["logged"] = {k: float(v) for k, v in trainer.logged_metrics.items()}
    return record


def test_fsdp2_updates_and_gathered_weights_equal_the_single_process_ones(tiny_model_dir, toy_task_dir, tmp_path):
    """One training step under FSDP2 on 2 ranks = one process on the global batch, gradient by
    gradient and on the gathered weights: GRPO with token_mean (whose divisor is the token count
    over all ranks: a per-rank count fails here) and seq_mean_token_mean, GRPO with token-budget
    microbatches and chunked log-probs, grpo_clip with 2 epochs of 2 updates (each after the
    first computes with the weights gathered after the previous step), SFT and expert iteration.
    The parameters the optimizer steps are shards, and both ranks gather the same full weights.

    Tolerances, float32: gradients rtol 1e-4 / atol 1e-6, as under DDP (the reduce-scatter sums the
    ranks' halves of each gradient in another order than one process's backward does: rounding
    differences, not bit-exact); weights rtol 1e-3 / atol 1e-4 (1% of the learning rate): AdamW's
    first step is about lr x g / |g|, so gradients of ~1e-8 that differ in their last bits move
    by a visible fraction of lr."""
    spec = {"model_dir": tiny_model_dir, "train_path": str(toy_task_dir / "train.jsonl"), "folder": str(tmp_path),
            "sft_path": str(toy_task_dir / "sft.jsonl"), "runs": list(RUNS)}
    run_workers(spec, tmp_path, script=__file__)
    mismatched = {}
    for name in RUNS:
        fsdp, other_rank = torch.load(tmp_path / f"{name}.pt"), torch.load(tmp_path / f"{name}.rank1.pt")
        single = fit_and_record(spec, name, world=1)
        updates = len(single["grads"])
        # expert iteration makes as many updates as its kept answers fill: at least one here
        assert updates == {"grpo_clip_epochs": 4, "token_budget": 4, "expert_iteration": max(1, updates)}.get(name, 1)
        assert all(any(g.abs().max() > 0 for g in grads.values()) for grads in single["grads"]), name
        assert fsdp["sharded"] == [True] * len(fsdp["grads"]) and not any(single["sharded"]), name
        try:
            assert_same_as_one_process(fsdp, other_rank, single, weights="weights")
        except AssertionError as error:
            mismatched[name] = str(error).splitlines()[0]
    assert not mismatched, mismatched
    budget = [torch.load(tmp_path / f"token_budget{suffix}")["backwards"] for suffix in (".pt", ".rank1.pt")]
    assert budget[0] != budget[1], budget  # collectives in each microbatch would have deadlocked


def test_fsdp2_from_the_cli_trains_checkpoints_and_resumes_from_last_exactly(tiny_model_dir, toy_task_dir, tmp_path):
    """configs/grpo.yaml from the CLI under FSDP2 on two "nodes" of one process (HF engine sampling
    on each rank's gathered weights, chunked log-probs, token-budget microbatches, gradient
    checkpointing, evaluations): distributed checkpoint folders every step, `last.ckpt` replaced
    as a folder, the HF export gathered. A run stopped after step 1 and resumed with `--ckpt_path
    last` ends with the straight run's step-2 weights bit for bit."""
    from safetensors.torch import load_file
    from test_cli import tiny_grpo_args
    from test_distributed import launch_two_nodes

    from r1_lightning.callbacks.checkpoint import is_checkpoint, saved_global_step

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    extra = ["--model.init_args.gradient_checkpointing", "true", "--data.init_args.val_batch_size", 5]
    launch_two_nodes(tiny_grpo_args(tiny_model_dir, toy_task_dir, straight, max_steps=2, extra=extra), tmp_path,
                     strategy=FSDP2_STRATEGY)
    step_1, last = straight / "ckpt" / "step=1.ckpt", straight / "ckpt" / "last.ckpt"
    assert step_1.is_dir() and is_checkpoint(str(step_1)) and not is_checkpoint(str(straight))
    assert saved_global_step(str(step_1)) == 1 and saved_global_step(str(last)) == 2
    for max_steps, resume in ((1, []), (2, ["--ckpt_path", "last"])):
        launch_two_nodes(tiny_grpo_args(tiny_model_dir, toy_task_dir, resumed, max_steps=max_steps,
                                        extra=[*extra, *resume]), tmp_path, strategy=FSDP2_STRATEGY)
    expected = load_file(straight / "ckpt" / "last_hf" / "model.safetensors")
    got = load_file(resumed / "ckpt" / "last_hf" / "model.safetensors")
    initial = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert expected.keys() == got.keys() == initial.keys()
    assert any(not torch.equal(expected[k], initial[k]) for k in expected)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert sorted(e.name for e in straight.glob("logs/version_*/eval/eval_step_*.jsonl")) == [
        "eval_step_0.jsonl", "eval_step_2.jsonl"]


def main(spec_path: str) -> None:
    """One worker rank: fit every run of the spec under FSDP2 and save what it recorded."""
    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    folder, rank = Path(spec["folder"]), int(os.environ["LOCAL_RANK"])
    suffix = ".pt" if rank == 0 else f".rank{rank}.pt"
    for name in spec["runs"]:
        torch.save(fit_and_record(spec, name, world=WORLD), folder / f"{name}{suffix}")


if __name__ == "__main__":
    main(sys.argv[1])
