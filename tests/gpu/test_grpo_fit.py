"""`r1-lightning fit` GRPO with the vLLM engine on the second GPU: 10 steps, then a resume.

The quickstart task (2-digit addition, its word-level tokenizer) with a small random Llama policy
on cuda:0 and `VLLMEngine(device="auto")` on cuda:1. Every step logs `train/engine_logprob_gap`,
the mean |engine log-prob - policy log-prob| of the sampled tokens, measured before the step's
update: it is small only if the engine holds the policy's current weights, i.e. if the weight sync
after every optimizer update worked. A resumed run builds a fresh engine from the original
(untrained) folder; its first step's gap is small only if `RolloutWeightSync` re-synced it.

    pytest tests/gpu/test_grpo_fit.py      # 2 GPUs; about a minute
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("vllm", reason="needs vLLM: pip install 'r1-lightning[vllm]'")
pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (policy on cuda:0, engine on cuda:1)")

from r1_lightning.models import load_causal_lm, load_tokenizer
from r1_lightning.quickstart import build_model, build_tokenizer, write_task_files

REPO = Path(__file__).resolve().parents[2]
MAX_GAP = 2e-2  # a synced engine: bf16 engine vs fp32 policy (0.005 in tests/gpu/test_vllm_engine.py)
STEPS, RESUMED_STEPS = 10, 12


def fit_command() -> list[str]:
    """`r1-lightning` of this interpreter's environment (a `r1-lightning` elsewhere on PATH may belong
    to another Python), else the same CLI through `python -m`."""
    script = Path(sys.executable).with_name("r1-lightning")
    return [str(script)] if script.exists() else [sys.executable, "-m", "r1_lightning.cli"]


def write_config(tmp: Path, model: Path, data: dict[str, Path]) -> Path:
    """configs/quickstart.yaml (the GRPO phase) on the GPU with the vLLM engine on GPU 1."""
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    trainer, init = config["trainer"], config["model"]["init_args"]
    trainer.update(accelerator="gpu", max_steps=STEPS, default_root_dir=str(tmp / "run"))
    trainer["logger"] = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                          "init_args": {"save_dir": str(tmp / "run"), "name": "logs"}}]
    trainer["callbacks"] = [
        {"class_path": "r1_lightning.callbacks.HFExportCheckpoint",
         "init_args": {"dirpath": str(tmp / "run" / "checkpoints"), "filename": "{step}",
                       "every_n_train_steps": 5, "save_last": True, "save_top_k": -1, "export_hf": False}},
    ]
    # A dense toy reward (share of digits): a random policy gets varied rewards, so it moves from step 1.
    init.update(model_name_or_path=str(model), learning_rate=1e-3, dtype="float32",
                reward_fn="toy_rewards.digit_fraction_reward")
    init["engine"] = {"class_path": "r1_lightning.rollout.VLLMEngine",
                      "init_args": {"device": "auto", "gpu_memory_utilization": 0.2, "max_model_len": 512,
                                    "enforce_eager": True}}
    config["data"]["init_args"].update(train_path=str(data["train"]), val_path=str(data["val"]),
                                       template=str(data["template"]))
    path = tmp / "grpo_vllm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_fit(config: Path, *extra: str) -> subprocess.CompletedProcess:
    pythonpath = os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))  # toy_rewards
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath}
    proc = subprocess.run([*fit_command(), "fit", "--config", str(config), *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"r1-lightning fit failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return proc


def logged(run_dir: Path, version: int, name: str) -> dict[int, float]:
    """{global step: value} of one metric from a CSVLogger version folder."""
    with open(run_dir / "logs" / f"version_{version}" / "metrics.csv") as file:
        return {int(r["step"]): float(r[name]) for r in csv.DictReader(file) if r.get(name) not in (None, "")}


def write_task(tmp: Path) -> tuple[Path, dict[str, Path]]:
    """The quickstart task's files and a small random policy for it: (model folder, data files)."""
    tokenizer = build_tokenizer()
    model_dir = tmp / "model"
    # head_dim 64 (hidden 128 / 2 heads), a size every vLLM attention backend takes
    build_model(tokenizer, num_attention_heads=2, num_key_value_heads=2).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir, write_task_files(tmp / "data", n_train=1000, n_val=64, n_sft=64)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grpo-fit")
    model_dir, data = write_task(tmp)
    config = write_config(tmp, model_dir, data)
    first = run_fit(config)
    ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
    resumed = run_fit(config, "--trainer.max_steps", str(RESUMED_STEPS), "--ckpt_path", str(ckpt))
    return {"tmp": tmp, "run_dir": tmp / "run", "model_dir": model_dir, "ckpt": ckpt, "first": first,
            "resumed": resumed, "val": data["val"]}


def test_ten_grpo_steps_with_the_engine_on_gpu1_stay_in_sync(runs):
    gaps = logged(runs["run_dir"], 0, "train/engine_logprob_gap")
    assert len(gaps) == STEPS, gaps  # one rollout (and one update) per step
    assert all(math.isfinite(g) and g < MAX_GAP for g in gaps.values()), gaps
    syncs = logged(runs["run_dir"], 0, "perf/weight_sync_seconds")
    assert len(syncs) >= STEPS - 1  # after every update that changed the weights
    # the engine's build line (VLLMEngine.attach): "<engine>: <model folder> (policy on <device>), built in N s"
    output = runs["first"].stderr + runs["first"].stdout
    assert "VLLMEngine on cuda:1 (in-process engine core): " in output and "(policy on cuda:0)" in output
    assert (runs["run_dir"] / "checkpoints" / f"step={STEPS}.ckpt").exists() and runs["ckpt"].exists()


def test_training_moved_the_policy_far_from_the_engines_initial_weights(runs):
    """The control for the resume test: an engine left on the folder's weights would be far off."""
    from r1_lightning.functional import get_response_log_probs, tokenize_prompt_and_output

    tokenizer = load_tokenizer(str(runs["model_dir"]))
    initial = load_causal_lm(str(runs["model_dir"]), dtype="float32").cuda().eval()
    trained = load_causal_lm(str(runs["model_dir"]), dtype="float32").cuda().eval()
    state = torch.load(runs["ckpt"], map_location="cuda", weights_only=False)["state_dict"]
    trained.load_state_dict({k.removeprefix("policy."): v for k, v in state.items()})
    texts = [json.loads(line)["problem"] for line in Path(runs["val"]).read_text().splitlines()[:16]]
    batch = tokenize_prompt_and_output(texts, [" <answer> 12 </answer>"] * len(texts), tokenizer)
    with torch.no_grad():
        a, b = (get_response_log_probs(m, batch["input_ids"].cuda(), batch["labels"].cuda())["log_probs"]
                for m in (initial, trained))
    mask = batch["response_mask"].cuda()
    assert ((a - b).abs() * mask).sum() / mask.sum() > 10 * MAX_GAP


def test_resume_resyncs_the_fresh_engine(runs):
    first = logged(runs["run_dir"], 0, "train/engine_logprob_gap")
    gaps = logged(runs["run_dir"], 1, "train/engine_logprob_gap")
    assert len(gaps) == RESUMED_STEPS - STEPS and min(gaps) > max(first), (first, gaps)  # continued, not restarted
    assert all(g < MAX_GAP for g in gaps.values()), gaps
