"""FSDP2 on the CPU: Lightning's `ModelParallelStrategy` over 2 gloo processes (data-parallel mesh of
2, the policy sharded by `PolicyModule.configure_model`) gives the updates of one process training
on the same global batch, gathers the full weights on every rank, and resumes from its distributed
checkpoint (a folder) exactly.

The workers are this file run as a script by `test_distributed.run_workers`; the single-process
references run in pytest. Every run records, before each AdamW step, the gradients it steps with
(gathered from the shards: after the reduce-scatter and the clipping to the global norm), and at
the end of training the full state dict (`full_state_dict`, what the engine is sent and the HF
export writes).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from test_distributed import LOGGED_AS_ONE_PROCESS, WORLD, run_options, run_workers

# name -> (a run of test_distributed.RUNS, options added to it). `token_budget` cuts microbatches by
# tokens (the ranks then run different numbers of them) and takes the chunked log-prob path, which
# runs the decoder body without the root's forward, for 4 updates in one step.
RUNS = {
    "token_mean": ("token_mean", {}),
    "seq_mean_token_mean": ("seq_mean_token_mean", {}),
    "grpo_clip_epochs": ("grpo_clip_epochs", {}),  # 4 updates in one step, with old log-probs
    "token_budget": ("grpo_clip_epochs", {"loss_agg": "token_mean", "microbatch_max_tokens": 208,
                                          "logprob_chunk_size": 16}),
    "sft": ("sft", {}),
    "expert_iteration": ("expert_iteration", {}),
}


def fit_and_record(spec: dict, name: str, world: int, steps: int = 1, checkpoints: str | None = None,
                   ckpt_path: str | None = None) -> dict:
    """Fit run `name` for `steps` training steps on `world` ranks (FSDP2 when > 1; this process is
    one of them) and return {"grads": [per update: {param: full gradient}], "sharded": whether the
    stepped parameters were DTensor shards, "weights": {name: full tensor}, "logged": metrics}.
    `checkpoints`: a folder for an `HFExportCheckpoint` of every step."""
    import lightning as L
    from lightning.pytorch.strategies import ModelParallelStrategy
    from test_modules import FixedEngine
    from torch.distributed.tensor import DTensor
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from r1_lightning import modules
    from r1_lightning.callbacks import HFExportCheckpoint
    from r1_lightning.data import PromptDataModule, SFTDataModule
    from r1_lightning.distributed import full_state_dict

    base, extra = RUNS[name]
    module_name, options, batch_size = run_options(base, world)
    options = {**options, **extra, "learning_rate": 1e-2, "seed": 0}
    if module_name == "SFTModule":
        module = modules.SFTModule(spec["model_dir"], **options)
        data = SFTDataModule(spec["sft_path"], batch_size=batch_size)
    else:
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

    callbacks = [L.pytorch.callbacks.LambdaCallback(on_train_end=record_weights)]
    if checkpoints:
        callbacks.append(HFExportCheckpoint(dirpath=checkpoints, every_n_train_steps=1, save_top_k=-1, save_last=True))
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", devices=world, logger=False, enable_checkpointing=bool(checkpoints),
        strategy=ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1) if world > 1 else "auto",
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        default_root_dir=spec["folder"], callbacks=callbacks,
    )
    handle = register_optimizer_step_pre_hook(record_gradients)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    finally:
        handle.remove()
    record["logged"] = {k: float(v) for k, v in trainer.logged_metrics.items()}
    return record


@pytest.fixture(scope="module")
def fsdp_runs(tiny_model_dir, toy_task_dir, tmp_path_factory) -> tuple[dict, Path]:
    """The spec, and the folder of what the 2 workers recorded: every run of `RUNS` (one step),
    then the resume runs (`main`). One launch: the workers' start-up is most of the time."""
    folder = tmp_path_factory.mktemp("fsdp")
    spec = {"model_dir": tiny_model_dir, "train_path": str(toy_task_dir / "train.jsonl"), "folder": str(folder),
            "sft_path": str(toy_task_dir / "sft.jsonl"), "runs": list(RUNS)}
    run_workers(spec, folder, script=__file__)
    return spec, folder


def test_fsdp2_updates_and_gathered_weights_equal_the_single_process_ones(fsdp_runs):
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
    spec, tmp_path = fsdp_runs
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
            assert len(fsdp["grads"]) == updates, f"{len(fsdp['grads'])} updates"
            for update, (fsdp_grads, grads) in enumerate(zip(fsdp["grads"], single["grads"])):
                for param, grad in grads.items():
                    torch.testing.assert_close(fsdp_grads[param], grad, rtol=1e-4, atol=1e-6,
                                               msg=f"update {update}, grad {param}")
            assert fsdp["weights"].keys() == single["weights"].keys()
            for param, weight in single["weights"].items():
                torch.testing.assert_close(fsdp["weights"][param], weight, rtol=1e-3, atol=1e-4, msg=f"weight {param}")
                assert torch.equal(other_rank["weights"][param], fsdp["weights"][param]), f"rank 1's {param}"
            for metric in LOGGED_AS_ONE_PROCESS:
                if metric in single["logged"]:
                    assert fsdp["logged"][metric] == pytest.approx(single["logged"][metric], rel=1e-4), metric
        except AssertionError as error:
            mismatched[name] = str(error).splitlines()[0]
    assert not mismatched, mismatched
    budget = [torch.load(tmp_path / f"token_budget{suffix}")["backwards"] for suffix in (".pt", ".rank1.pt")]
    assert budget[0] != budget[1], budget  # collectives in each microbatch would have deadlocked


def test_fsdp2_checkpoint_folders_export_and_resume_exactly(fsdp_runs, tiny_model_dir):
    """GRPO under FSDP2 saves a distributed checkpoint (a folder) and a gathered HF export every
    step, `last.ckpt` replaced as a folder; a run stopped after step 1 and resumed from `last`
    ends with the straight run's step-2 weights bit for bit, and the HF exports hold them."""
    from safetensors.torch import load_file

    from r1_lightning.callbacks.checkpoint import is_checkpoint, saved_global_step

    tmp_path = fsdp_runs[1]
    straight, resumed = (torch.load(tmp_path / f"{run}.pt") for run in ("straight", "resumed"))
    (step_1,) = (tmp_path / "straight").glob("*step=1.ckpt")
    assert step_1.is_dir() and is_checkpoint(str(step_1)) and saved_global_step(str(step_1)) == 1
    assert saved_global_step(str(tmp_path / "straight" / "last.ckpt")) == 2
    # the resumed run made only the second update, with the straight run's gradients (loading the
    # optimizer's shards steps once with zero gradients and lr 0 first, to create AdamW's state)
    assert len(straight["grads"]) == 2 and not any(g.any() for g in resumed["grads"][0].values())
    assert len(resumed["grads"]) == 2 and all(torch.equal(resumed["grads"][1][k], g) for k, g in straight["grads"][1].items())
    exported = [load_file(tmp_path / run / "last_hf" / "model.safetensors") for run in ("straight", "resumed")]
    initial = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert any(not torch.equal(exported[0][k], initial[k]) for k in initial)
    for name, weight in straight["weights"].items():
        assert torch.equal(resumed["weights"][name], weight), name
        if name in initial:  # the export leaves out the tied LM head
            assert torch.equal(exported[0][name], weight) and torch.equal(exported[1][name], weight), name


def main(spec_path: str) -> None:
    """One worker rank: fit every run of the spec under FSDP2, then GRPO for 2 steps with a checkpoint
    each, then 1 step and a resumed run to step 2 (`ckpt_path="last"`), and save what each recorded."""
    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    folder, rank = Path(spec["folder"]), int(os.environ["LOCAL_RANK"])
    suffix = ".pt" if rank == 0 else f".rank{rank}.pt"
    for name in spec["runs"]:
        torch.save(fit_and_record(spec, name, world=WORLD), folder / f"{name}{suffix}")
    straight = fit_and_record(spec, "token_mean", WORLD, steps=2, checkpoints=str(folder / "straight"))
    torch.save(straight, folder / f"straight{suffix}")
    fit_and_record(spec, "token_mean", WORLD, steps=1, checkpoints=str(folder / "resumed"))  # stops after step 1
    resumed = fit_and_record(spec, "token_mean", WORLD, steps=2, checkpoints=str(folder / "resumed"), ckpt_path="last")
    torch.save(resumed, folder / f"resumed{suffix}")


if __name__ == "__main__":
    main(sys.argv[1])
