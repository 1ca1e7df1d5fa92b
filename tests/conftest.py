"""Shared fixtures: a tiny Qwen2 policy saved as a Hugging Face folder, and a toy verifiable task."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_qwen2

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def no_global_seed_between_tests(monkeypatch):
    """Each test starts without a `seed_everything` seed in the environment (an in-process CLI run
    leaves `PL_GLOBAL_SEED` behind), so a module or data module built without a seed gets 0."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer Qwen2 with random weights and the package's offline word-level tokenizer."""
    from r1_lightning.quickstart.tokenizer import build_tokenizer

    folder = tmp_path_factory.mktemp("tiny_qwen2")
    tokenizer = build_tokenizer()
    model = tiny_qwen2(len(tokenizer), max_position_embeddings=256, tie_word_embeddings=True,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="session")
def toy_task_dir(tmp_path_factory) -> Path:
    """One-digit additions in the MATH reader's format, and R1-Zero SFT traces for them."""
    from r1_lightning.data import load_template, render_prompt

    folder = tmp_path_factory.mktemp("toy_task")
    rng = random.Random(0)
    problems = [(a, b) for a in range(10) for b in range(10)]
    rng.shuffle(problems)
    rows = [{"problem": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in problems]
    write_jsonl(folder / "train.jsonl", rows[:80])
    write_jsonl(folder / "val.jsonl", rows[80:])
    template = load_template("r1_zero")
    sft = [{"prompt": render_prompt(template, r["problem"]),
            "response": f" {r['problem'][8:-1]} = {r['answer']} </think> <answer> {r['answer']} </answer>",
            "ground_truth": r["answer"]} for r in rows[:80]]
    write_jsonl(folder / "sft.jsonl", sft)
    return folder


@pytest.fixture
def llm_process_here(monkeypatch):
    """`VLLMEngine(process="separate")` builds its `LLM` in this process, under the environment its
    spawned process would get (`LLMProcess`'s `env`): for tests whose `vllm` is a fake in this process.
    tests/test_vllm_process.py tests the real `LLMProcess`."""
    from r1_lightning.rollout.vllm import engine as vllm_engine
    from r1_lightning.rollout.vllm.layout import scoped_env
    from r1_lightning.rollout.vllm.llm_process import load

    class LLMBuiltHere:
        def __new__(cls, engine_args: dict, env: dict, build: str):
            with scoped_env(env):
                return load(build)(**engine_args)

    monkeypatch.setattr(vllm_engine, "LLMProcess", LLMBuiltHere)
