"""VLLMEngine(process="separate") on two GPUs: vLLM's engine core in its own process on cuda:1, the
weights sent over NCCL from a float32 policy on cuda:0 (cast to bf16 on the way).

The real NCCL path of what tests/test_vllm_transfer.py checks on the CPU with fakes: after each sync
the engine's log-probs of its own samples match the policy's (bf16 vs fp32 rounding only), a sync
after the policy changed moves them, and a sync whose trainer side sends nothing fails within the
timeout and leaves the engine refusing to generate. The model is tests/gpu/test_vllm_engine.py's.

    pytest tests/gpu/test_vllm_separate_process.py      # 2 GPUs; about a minute
"""

from __future__ import annotations

import gc
import time
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("vllm", reason="needs vLLM: pip install 'r1-lightning[vllm]'")
pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (policy on cuda:0, engine on cuda:1)")

from test_vllm_engine import PROMPTS, VOCAB, mean_logprob_gap, save_tiny_model
from tiny_models import tiny_qwen2
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1_lightning.rollout import SamplingConfig, VLLMEngine, WeightSyncError
from r1_lightning.rollout.vllm import transfer as vllm_transfer

MAX_GAP = 0.05  # mean |engine - policy| log-prob of a synced engine (bf16 engine, fp32 policy)
SAMPLING = SamplingConfig(n=4, max_tokens=24, stop=[], seed=3, logprobs=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen2-separate")
    save_tiny_model(path)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to("cuda:0")  # FP32 master weights
    tokenizer = AutoTokenizer.from_pretrained(path)
    free_before = torch.cuda.mem_get_info(1)[0]
    engine = VLLMEngine(process="separate", device=1, dtype="bfloat16", gpu_memory_utilization=0.25,
                        max_model_len=256, enforce_eager=True, sync_timeout_s=30)
    engine.attach(policy, tokenizer)
    yield SimpleNamespace(policy=policy, engine=engine, engine_memory=free_before - torch.cuda.mem_get_info(1)[0])
    engine.close()
    gc.collect()


def test_engine_core_runs_on_the_second_gpu_and_leaves_the_trainer_device_alone(setup):
    assert setup.engine_memory > 1 << 30  # its KV cache (GiBs at 0.25 utilization)
    assert torch.cuda.current_device() == 0


def test_sync_over_nccl_gives_the_engine_the_policy_weights(setup):
    policy, engine = setup.policy, setup.engine
    # New random weights: the engine, built from the folder, no longer holds the policy's.
    other = tiny_qwen2(len(VOCAB), seed=7, hidden_size=256, intermediate_size=512, max_position_embeddings=512,
                       tie_word_embeddings=False, initializer_range=0.05)
    policy.load_state_dict(other.state_dict())
    assert mean_logprob_gap(policy, engine.generate(PROMPTS, SAMPLING)) > 2 * MAX_GAP

    start = time.perf_counter()
    engine.load_weights(policy.named_parameters())  # the first sync also connects
    first = time.perf_counter() - start
    start = time.perf_counter()
    engine.load_weights(policy.named_parameters())
    print(f"separate-process sync of {sum(p.numel() for p in policy.parameters())} parameters: "
          f"first {first:.3f} s (with the NCCL connection), then {time.perf_counter() - start:.3f} s")
    assert mean_logprob_gap(policy, engine.generate(PROMPTS, SAMPLING)) < MAX_GAP


def test_a_sync_after_optimizer_steps_moves_the_engine(setup):
    policy, engine = setup.policy, setup.engine
    before = engine.generate(PROMPTS, SAMPLING)
    target = torch.tensor([[VOCAB[ch] for ch in "12+34=46<>12+34=46"]], device=policy.device)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    policy.train()
    for _ in range(5):
        policy(target, labels=target).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    policy.eval()
    assert mean_logprob_gap(policy, before) > 2 * MAX_GAP  # the engine's samples are from the old weights

    engine.load_weights(policy.named_parameters())
    after = engine.generate(PROMPTS, SAMPLING)
    assert [c.logprobs for c in after] != [c.logprobs for c in before]
    assert mean_logprob_gap(policy, after) < MAX_GAP


def test_two_replicas_on_one_gpu_each_get_the_weights_and_sample_what_one_engine_does(setup):
    """replicas=2: two LLMs in processes of their own share cuda:1, each syncs over its own NCCL group,
    and with per-request seeds they sample what the one-replica engine samples from the same weights."""
    policy, one = setup.policy, setup.engine
    one.load_weights(policy.named_parameters())
    two = VLLMEngine(process="separate", device=1, dtype="bfloat16", gpu_memory_utilization=0.3,
                     max_model_len=256, enforce_eager=True, sync_timeout_s=30, replicas=2)
    two.attach(policy, AutoTokenizer.from_pretrained(policy.config._name_or_path))
    try:
        two.load_weights(policy.named_parameters())
        greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=24, stop=[], logprobs=True)
        same = [a.token_ids == b.token_ids for a, b in zip(two.generate(PROMPTS, greedy), one.generate(PROMPTS, greedy))]
        assert sum(same) >= len(PROMPTS) - 1, "other batches round otherwise in bf16: a near-tie may flip, rarely"
        sampled = two.generate(PROMPTS, SAMPLING)
        assert [c.prompt_index for c in sampled] == [i for i in range(len(PROMPTS)) for _ in range(SAMPLING.n)]
        assert mean_logprob_gap(policy, sampled) < MAX_GAP
    finally:
        two.close()


def test_a_sync_the_trainer_never_sends_times_out_and_the_engine_refuses(setup, monkeypatch):
    # Runs last: it leaves the engine waiting on a broadcast that never comes.
    engine = setup.engine
    engine._senders[0].timeout_s = 5.0
    monkeypatch.setattr(vllm_transfer, "trainer_send", lambda named_tensors, communicator, dtype: None)
    start = time.monotonic()
    with pytest.raises(WeightSyncError, match="did not finish within sync_timeout_s=5 s"):
        engine.load_weights(setup.policy.named_parameters())
    assert time.monotonic() - start < 10
    with pytest.raises(WeightSyncError, match="refuses to generate"):
        engine.generate(PROMPTS, SAMPLING)
