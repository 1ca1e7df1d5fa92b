"""`r1-lightning fit` GRPO with one vLLM engine per trainer rank, in both layouts, on 2 GPUs.

- colocated DDP: 2 ranks (`--trainer.devices 2 --trainer.strategy ddp`), each with its engine on its
  own GPU in the trainer's process (vLLM's external_launcher executor, sleep mode);
- colocated FSDP2: the same under `ModelParallelStrategy` (the engine loads the gathered weights);
- split 1+1: one trainer rank on cuda:0, its engine core in its own process on cuda:1, weights over NCCL.

The task and model are tests/gpu/test_grpo_fit.py's (the quickstart's 2-digit additions, a small
random policy, a dense toy reward). Every step logs `train/engine_logprob_gap`, the mean over the
ranks of |engine log-prob - policy log-prob| of sampled tokens before the step's update: small only
if every rank's engine holds the policy's current weights.

    pytest tests/gpu/test_engine_layouts.py      # 2 GPUs; about 4 minutes (three fits)
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

pytest.importorskip("vllm", reason="needs vLLM: pip install 'r1-lightning[vllm]'")
pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")

from test_grpo_fit import logged, run_fit, write_config, write_task

MAX_GAP = 5e-2  # the layouts' bound; a synced engine is at ~0.02 (bf16 engine vs fp32 policy)
STEPS = 4
FSDP2 = json.dumps({"class_path": "ModelParallelStrategy", "init_args": {"data_parallel_size": 2,
                                                                         "tensor_parallel_size": 1}})
# layout -> (engine options, r1-lightning fit options)
LAYOUTS = {
    "colocated_ddp": ({"colocate": True, "gpu_memory_utilization": 0.2},
                      ["--trainer.devices", "2", "--trainer.strategy", "ddp"]),
    "colocated_fsdp2": ({"colocate": True, "gpu_memory_utilization": 0.2},
                        ["--trainer.devices", "2", "--trainer.strategy", FSDP2]),
    "split_1_1": ({"process": "separate", "gpu_memory_utilization": 0.2}, ["--trainer.devices", "1"]),
}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layouts")
    return (tmp, *write_task(tmp))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_trains_with_every_engine_in_sync(task, layout):
    base, model_dir, data = task
    tmp = base / layout
    tmp.mkdir()
    config_path = write_config(tmp, model_dir, data)
    config = yaml.safe_load(config_path.read_text())
    engine_options, fit_options = LAYOUTS[layout]
    config["model"]["init_args"]["engine"]["init_args"].update(engine_options)
    config["trainer"].update(max_steps=STEPS, callbacks=[], enable_checkpointing=False)  # the sync is what is tested
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = run_fit(config_path, *fit_options)
    output = proc.stdout + proc.stderr
    gaps = logged(tmp / "run", 0, "train/engine_logprob_gap")
    assert len(gaps) == STEPS, gaps
    assert all(math.isfinite(g) and g < MAX_GAP for g in gaps.values()), (layout, gaps)
    expected = {"colocated_ddp": "rank 0's VLLMEngine on cuda:0 (in-process engine core)",
                "colocated_fsdp2": "rank 0's VLLMEngine on cuda:0 (in-process engine core)",
                "split_1_1": "VLLMEngine on cuda:1 (separate engine core)"}[layout]
    assert expected in output, output[-3000:]
