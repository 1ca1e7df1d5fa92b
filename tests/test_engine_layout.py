"""Rollout engines per trainer rank on the CPU, without vLLM: where each rank's `VLLMEngine` goes in
the colocated and split layouts (`engine_gpus`), the impossible layouts refused naming the option,
what each rank's engine is built with (a fake `vllm.LLM`), and, under FSDP2 over 2 gloo processes
with a recording engine, that every rank attaches its engine with its own place among the ranks
and loads the full (gathered) weights into it before it samples.

The expected GPUs are written out by hand from the layouts' definitions: colocated, rank r's engine
on its own GPU r; split, with T trainer ranks per node on GPUs 0..T-1, local rank r's engine on GPU
T + r (T + r·tp up to T + r·tp + tp - 1 with tensor parallelism tp).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from grpo_options import grpo_options
from tiny_models import char_tokenizer, char_vocab, tiny_qwen2

from r1_lightning.rollout import TrainerRanks, VLLMEngine
from r1_lightning.rollout.vllm import build as vllm_build
from r1_lightning.rollout.vllm import transfer as vllm_transfer
from r1_lightning.rollout.vllm.layout import engine_gpus


def ranks(rank: int, world: int, per_node: int) -> TrainerRanks:
    return TrainerRanks(rank=rank, local_rank=rank % per_node, world_size=world, ranks_per_node=per_node)


# (colocate, GPUs per node, rank, world size, ranks per node, tensor parallel size, policy's GPU) -> engine GPUs
PLACEMENTS = [
    (True, 1, 0, 1, 1, 1, 0, [0]),        # one GPU: the engine sleeps beside the policy
    (True, 2, 0, 2, 2, 1, 0, [0]),        # colocated DDP on 2 GPUs: each rank its own GPU
    (True, 2, 1, 2, 2, 1, 1, [1]),
    (True, 8, 5, 8, 8, 1, None, [5]),     # no policy GPU given: the local rank's
    (True, 8, 13, 16, 8, 1, 5, [5]),      # second node of two: local rank 5
    (False, 2, 0, 1, 1, 1, 0, [1]),       # today's split 1+1
    (False, 4, 0, 2, 2, 1, 0, [2]),       # split 2+2
    (False, 4, 1, 2, 2, 1, 1, [3]),
    (False, 8, 3, 4, 4, 1, 3, [7]),       # split 4+4
    (False, 2, 3, 4, 1, 1, 0, [1]),       # 4 nodes of 1 trainer + 1 engine
    (False, 8, 3, 8, 4, 1, 3, [7]),       # 2 nodes of 4 + 4: rank 3 is node 0's last
    (False, 8, 6, 8, 4, 1, 2, [6]),       # node 1's local rank 2
    (False, 3, 0, 1, 1, 2, 0, [1, 2]),    # 1 trainer + a TP-2 engine
    (False, 6, 1, 2, 2, 2, 1, [4, 5]),    # 2 trainers + 2 TP-2 engines: GPUs 2,3 and 4,5
]


@pytest.mark.parametrize("colocate,gpus,rank,world,per_node,tp,policy_gpu,expected", PLACEMENTS)
def test_each_rank_engine_goes_on_its_layout_gpus(colocate, gpus, rank, world, per_node, tp, policy_gpu, expected):
    assert engine_gpus("auto", colocate=colocate, num_gpus=gpus, policy_device_index=policy_gpu,
                       ranks=ranks(rank, world, per_node), tensor_parallel_size=tp) == expected


@pytest.mark.parametrize("gpus,per_node,tp,needed", [(3, 2, 1, 4), (1, 1, 1, 2), (5, 2, 2, 6), (7, 4, 1, 8)])
def test_split_layout_without_enough_gpus_is_refused_naming_the_option_and_counts(gpus, per_node, tp, needed):
    with pytest.raises(RuntimeError, match=rf"colocate false .*needs {needed} GPUs per node, {gpus} visible.*"
                                           r"colocate true"):
        engine_gpus("auto", colocate=False, num_gpus=gpus, policy_device_index=0,
                    ranks=ranks(0, per_node, per_node), tensor_parallel_size=tp)


def test_one_explicit_gpu_for_several_ranks_per_node_and_tp_without_separate_are_refused():
    for colocate in (True, False):
        with pytest.raises(ValueError, match="VLLMEngine device 1 would put the engines of all 2 trainer ranks"):
            engine_gpus(1, colocate=colocate, num_gpus=4, policy_device_index=0, ranks=ranks(0, 2, 2))
    with pytest.raises(ValueError, match="device 3 .tensor_parallel_size 2. is not on the 4 visible GPUs"):
        engine_gpus(3, colocate=False, num_gpus=4, policy_device_index=0, tensor_parallel_size=2)
    for options in ({}, {"colocate": True}):
        with pytest.raises(ValueError, match="tensor_parallel_size 2 needs process 'separate'"):
            VLLMEngine(tensor_parallel_size=2, **options)


# -- what each rank's engine is built with (a fake vllm.LLM) ------------------------------------------------

VOCAB = char_vocab("abcdef")
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "VLLM_ENABLE_V1_MULTIPROCESSING")


class FakeLLM:
    """Records its options and the environment at construction, and the NCCL group it joins."""

    def __init__(self, built: list, **options):
        built.append({"options": options, "env": {name: os.environ.get(name) for name in LAUNCH_VARIABLES}})
        self.init_infos = []

    def init_weight_transfer_engine(self, request):
        self.init_infos.append(request["init_info"])

    def collective_rpc(self, method, args=()): ...

    def reset_prefix_cache(self):
        return True


@pytest.fixture
def build(monkeypatch, llm_process_here):
    """build(gpus, rank_info, **engine options) -> (engine, what its LLM was built with), with a fake
    vLLM, `gpus` CUDA devices and the trainer's torch.distributed group initialized."""
    built: list = []
    fake_vllm = SimpleNamespace(LLM=lambda **options: FakeLLM(built, **options),
                                __version__=vllm_build.TESTED_VLLM_VERSION, envs=SimpleNamespace())
    monkeypatch.setattr(vllm_build, "import_vllm", lambda: fake_vllm)
    monkeypatch.setattr(vllm_build, "engine_arg_exists", lambda name: True)  # EngineArgs of vLLM 0.26
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())  # no GPU here
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(vllm_transfer, "trainer_connect", lambda info: "communicator")
    monkeypatch.setattr(vllm_transfer, "trainer_send", lambda named_tensors, communicator, dtype: None)
    for name in LAUNCH_VARIABLES:
        monkeypatch.setenv(name, f"launcher's {name}")
    policy = tiny_qwen2(len(VOCAB))  # on the CPU: a colocated engine takes its local rank's GPU
    tokenizer = char_tokenizer(VOCAB)

    def make(gpus: int, trainer_ranks: TrainerRanks, **options):
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        engine = VLLMEngine(model="model-folder", seed=7, **options)
        engine.attach(policy, tokenizer, trainer_ranks)
        engine.policy = policy
        return engine, built[-1]

    return make


def test_colocated_ddp_engines_join_the_trainer_group_through_external_launcher(build):
    """In the trainer's process on rank 1 of 2: vLLM's external_launcher executor, which reads the
    rank and the GPU from RANK and LOCAL_RANK (set only while the LLM is built), no device_ids, sleep
    mode, the engine core in this process, and a seed of its own."""
    for rank in (0, 1):
        engine, made = build(2, ranks(rank, 2, 2), colocate=True)
        options = made["options"]
        assert options["distributed_executor_backend"] == "external_launcher" and "device_ids" not in options
        assert options["enable_sleep_mode"] is True and options["seed"] == 7 + rank
        assert made["env"] == {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                               "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        assert engine.device_indices == [rank]
    assert {name: os.environ[name] for name in ("RANK", "LOCAL_RANK")} == {
        "RANK": "launcher's RANK", "LOCAL_RANK": "launcher's LOCAL_RANK"}  # restored for Lightning


def test_split_ddp_engines_get_their_own_gpus_and_a_private_nccl_group(build):
    """Split 2+2 (4 GPUs): rank 1's engine core in its own process on GPU 3, placed with device_ids,
    the launcher's variables untouched (its own process has its own torch.distributed); with TP 2 on
    8 GPUs, GPUs 4 and 5 and an NCCL group of the trainer rank and both engine workers."""
    engine, made = build(4, ranks(1, 2, 2), process="separate")
    assert made["options"]["device_ids"] == [3] and "distributed_executor_backend" not in made["options"]
    assert "tensor_parallel_size" not in made["options"] and made["options"]["enable_sleep_mode"] is False
    assert made["env"]["RANK"] == "launcher's RANK" and made["env"]["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    engine, made = build(8, ranks(1, 2, 2), process="separate", tensor_parallel_size=2)
    assert made["options"]["device_ids"] == [4, 5] and made["options"]["tensor_parallel_size"] == 2
    engine.load_weights(engine.policy.named_parameters())
    assert [info["world_size"] for info in engine.llm.init_infos] == [3]  # trainer + 2 TP workers
    # one process keeps vLLM's own executor, on cuda:1
    engine, made = build(2, TrainerRanks())
    assert made["options"]["device_ids"] == [1] and "distributed_executor_backend" not in made["options"]


def test_in_process_engines_of_several_ranks_need_torch_distributed_first(build, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    with pytest.raises(RuntimeError, match="needs torch.distributed initialized"):
        build(2, ranks(0, 2, 2), colocate=True)


# -- under FSDP2: each rank attaches with its ranks and loads the gathered weights before sampling ----------


def test_fsdp2_ranks_attach_with_their_ranks_and_load_full_weights_before_sampling(tiny_model_dir, toy_task_dir,
                                                                                    tmp_path):
    from safetensors.torch import load_file
    from test_distributed import WORLD, run_workers

    spec = {"model_dir": tiny_model_dir, "train_path": str(toy_task_dir / "train.jsonl"), "folder": str(tmp_path)}
    run_workers(spec, tmp_path, script=__file__)
    initial = load_file(Path(tiny_model_dir) / "model.safetensors")  # what the first sync must send, in full
    for rank in range(WORLD):
        record = torch.load(tmp_path / f"rank{rank}.pt")
        assert record["ranks"] == {"rank": rank, "local_rank": rank, "world_size": WORLD, "ranks_per_node": WORLD}
        assert record["events"][0] == "load" and "generate" in record["events"], record["events"]
        first_load = record["first_load"]
        assert first_load.keys() == initial.keys()
        for name, tensor in initial.items():
            assert torch.equal(first_load[name], tensor), f"rank {rank}: {name}"


def worker(spec: dict) -> dict:
    """One FSDP2 rank: a GRPO step with an engine that records what it is given, in order."""
    import dataclasses

    import lightning as L
    from lightning.pytorch.strategies import ModelParallelStrategy
    from test_distributed import WORLD
    from test_modules import FixedEngine

    from r1_lightning.data import PromptDataModule
    from r1_lightning.modules import GRPOModule

    class RecordingEngine(FixedEngine):
        def __init__(self):
            super().__init__(shares_policy_weights=False)
            self.events: list[str] = []
            self.ranks = None

        def attach(self, policy, tokenizer, ranks=None):
            super().attach(policy, tokenizer)
            self.ranks = ranks

        def load_weights(self, named_tensors):
            super().load_weights(named_tensors)
            self.events.append("load")

        def generate(self, prompts, sampling):
            self.events.append("generate")
            return super().generate(prompts, sampling)

    engine = RecordingEngine()
    module = GRPOModule(spec["model_dir"], **grpo_options(engine=engine, rollout_batch_size=4, group_size=2, train_batch_size=4,
                        gradient_accumulation_steps=1, reward_fn="toy_rewards.digit_fraction_reward",
                        learning_rate=1e-2, seed=0, sampling_max_tokens=8))
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=WORLD, logger=False, enable_checkpointing=False,
                        strategy=ModelParallelStrategy(data_parallel_size=WORLD, tensor_parallel_size=1),
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=spec["folder"])
    trainer.fit(module, datamodule=PromptDataModule(spec["train_path"], batch_size=2))
    return {"ranks": dataclasses.asdict(engine.ranks) if engine.ranks else None, "events": engine.events,
            "first_load": engine.loads[0] if engine.loads else {}}


if __name__ == "__main__":
    torch.set_num_threads(1)
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.save(worker(spec), Path(spec["folder"]) / f"rank{os.environ['LOCAL_RANK']}.pt")
