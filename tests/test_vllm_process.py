"""`LLMProcess`: the `LLM` of `VLLMEngine(process="separate")` built and called in a spawned process.

Real processes, with `tests/llm_process_fakes.py`'s stand-in for `vllm.LLM` (the child imports it by
name), and `VLLMEngine(process="separate")` end to end with tests/fixtures/fake_vllm as `vllm`. The
real vLLM path runs on the GPU machine: tests/gpu/test_vllm_separate_process.py.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_models import char_tokenizer, char_vocab, tiny_qwen2

from r1_lightning.rollout import (
    SamplingConfig,
    VLLMEngine,
    WeightSyncError,
)
from r1_lightning.rollout.vllm import build as vllm_build
from r1_lightning.rollout.vllm import engine as vllm_engine
from r1_lightning.rollout.vllm import transfer as vllm_transfer
from r1_lightning.rollout.vllm.llm_process import LLMProcess
from r1_lightning.rollout.vllm.worker import WORKER_EXTENSION

FAKE = "llm_process_fakes:EchoLLM"


@pytest.fixture(scope="module")
def llm():
    process = LLMProcess({"model": "folder", "seed": 3}, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}, build=FAKE)
    yield process
    process.close()


def test_the_llm_is_built_in_another_process_with_its_own_environment(llm):
    pid, multiprocessing_env, engine_args = llm.where()
    assert pid == llm.pid != os.getpid()
    assert multiprocessing_env == "1" and engine_args == {"model": "folder", "seed": 3}
    assert llm.add(2, b=5) == 7  # positional and keyword arguments reach the method
    # call(): a function of this package (or any importable one) runs there with the LLM first
    tokens, where = llm.call("llm_process_fakes:first_tokens", [[1, 2, 3], [4]], 2)
    assert tokens == [[1, 2], [4]] and where == llm.pid


def test_an_error_in_the_child_raises_here_and_the_process_stays_usable(llm):
    with pytest.raises(RuntimeError, match=r"vLLM process, fail: RuntimeError: engine core died in update_weights$"):
        llm.fail()
    with pytest.raises(RuntimeError, match="vLLM process, unpicklable: its result could not be sent back"):
        llm.unpicklable()
    with pytest.raises(RuntimeError, match="vLLM process, no_such_method: AttributeError"):
        llm.no_such_method()
    assert llm.add(1) == 1


def test_a_failed_build_raises_at_construction_with_the_childs_error():
    with pytest.raises(RuntimeError, match="building the engine: ValueError: no model folder at missing"):
        LLMProcess({"model": "missing"}, env={}, build=FAKE)


def test_a_child_that_dies_fails_the_waiting_call_with_its_exit_code_and_every_later_one():
    process = LLMProcess({}, env={}, build=FAKE)
    with pytest.raises(RuntimeError, match="exited with code 3 during exit"):
        process.exit(3)
    with pytest.raises(RuntimeError, match="vLLM process is gone|exited with code 3"):
        process.add(1)
    process.close()


def test_a_hung_engine_fails_the_weight_sync_and_close_ends_it(monkeypatch):
    """The sender's deadline covers calls into the child: a hung weight receive there raises
    WeightSyncError here; close() then terminates the child, which never answers."""
    monkeypatch.setattr(vllm_transfer, "trainer_connect", lambda info: "communicator")
    monkeypatch.setattr(vllm_transfer, "trainer_send", lambda named_tensors, communicator, dtype: None)
    process = LLMProcess({}, env={}, build=FAKE)
    sender = vllm_transfer.NCCLWeightSender(process, "engine", timeout_s=5.0, dtype=torch.bfloat16)
    start = time.monotonic()
    with pytest.raises(WeightSyncError, match=r"load_weights_in_place\) did not finish within sync_timeout_s=5 s"):
        sender.send([("w", torch.zeros(2))])
    assert time.monotonic() - start < 30
    process.close(timeout_s=1.0)
    assert not process._process.is_alive()
    with pytest.raises(RuntimeError, match="gone|exited"):
        process.add(1)


@pytest.fixture
def fake_vllm(monkeypatch):
    """tests/fixtures/fake_vllm's `vllm` importable here and in spawned processes (they take this
    sys.path); every `vllm` module it imported here is forgotten afterwards."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fixtures" / "fake_vllm"))
    yield
    for name in [name for name in sys.modules if name == "vllm" or name.startswith("vllm.")]:
        del sys.modules[name]


def test_a_separate_engine_samples_and_syncs_through_its_own_process(fake_vllm, monkeypatch):
    """VLLMEngine(process="separate") end to end but for vLLM itself: built by `build_llm` in a spawned
    process, prompts out and Completions back, and the weight-transfer calls made there in order."""
    monkeypatch.setattr(vllm_build, "engine_arg_exists", lambda name: True)  # EngineArgs of vLLM 0.26
    monkeypatch.setattr(vllm_engine, "engine_gpus", lambda *args, **kwargs: [1])  # no GPU here
    monkeypatch.setattr(vllm_transfer, "trainer_connect", lambda info: "communicator")
    sent = []
    monkeypatch.setattr(vllm_transfer, "trainer_send",
                        lambda named_tensors, communicator, dtype: sent.append(dict(named_tensors)))
    vocab = char_vocab("abcdef")
    tokenizer = char_tokenizer(vocab)
    policy = tiny_qwen2(len(vocab))
    engine = VLLMEngine(process="separate", model="model-folder", dtype="bfloat16", sync_timeout_s=30)
    engine.attach(policy, tokenizer)
    try:
        pid, multiprocessing_env, engine_args = engine.llm.where()
        assert pid != os.getpid() and multiprocessing_env == "1"
        assert engine_args["device_ids"] == [1] and engine_args["weight_transfer_config"] == {"backend": "nccl"}

        completions = engine.generate(["ab", "c"], SamplingConfig(n=2, max_tokens=4, stop=[], logprobs=True))
        a, c = vocab["a"], vocab["c"]  # each prompt's first token id; the stand-in samples from it
        assert [(x.prompt_index, x.token_ids) for x in completions] == [
            (0, [a, a + 1]), (0, [a + 1, a + 2]), (1, [c, c + 1]), (1, [c + 1, c + 2])]
        assert completions[3].logprobs == [-(c + 1) / 10, -(c + 2) / 10]
        assert engine_args["worker_extension_cls"] == WORKER_EXTENSION and engine.llm.calls() == []

        engine.per_request_seeds = False  # one seed per call: set in the workers, there, before sampling
        engine.generate(["ab"], SamplingConfig(n=2, max_tokens=4, stop=[], seed=7))
        assert engine.llm.calls() == [("collective_rpc", "reseed_sampler", (7,))]

        engine.load_weights(policy.named_parameters())
        calls = engine.llm.calls()
        assert [call[0] for call in calls] == ["collective_rpc", "init_weight_transfer_engine", "collective_rpc",
                                               "reset_prefix_cache"]
        assert calls[2][1] == "load_weights_in_place"
        assert calls[2][2][0]["names"] == list(sent[0]) == [name for name, _ in policy.named_parameters()]
    finally:
        engine.close()
    assert engine.llm is None


def test_two_replicas_each_in_their_own_processes_sample_what_one_engine_would(fake_vllm, monkeypatch):
    """replicas=2 end to end but for vLLM itself: two spawned processes with half the memory each,
    the prompts split between them, the completions as the one-replica engine returns them."""
    monkeypatch.setattr(vllm_build, "engine_arg_exists", lambda name: True)  # EngineArgs of vLLM 0.26
    monkeypatch.setattr(vllm_engine, "engine_gpus", lambda *args, **kwargs: [1])  # no GPU here
    vocab = char_vocab("abcdef")
    tokenizer, policy = char_tokenizer(vocab), tiny_qwen2(len(vocab))
    engine = VLLMEngine(process="separate", model="model-folder", replicas=2, gpu_memory_utilization=0.8)
    engine.attach(policy, tokenizer)
    try:
        (pid_0, _, args_0), (pid_1, _, args_1) = [llm.where() for llm in engine.llms]
        assert len({pid_0, pid_1, os.getpid()}) == 3
        assert args_0["gpu_memory_utilization"] == args_1["gpu_memory_utilization"] == 0.4
        completions = engine.generate(["ab", "c", "de"], SamplingConfig(n=2, max_tokens=4, stop=[]))
        a, c, d = vocab["a"], vocab["c"], vocab["d"]  # each prompt's first token id; the stand-in samples from it
        assert [(x.prompt_index, x.token_ids) for x in completions] == [
            (0, [a, a + 1]), (0, [a + 1, a + 2]), (1, [c, c + 1]), (1, [c + 1, c + 2]),
            (2, [d, d + 1]), (2, [d + 1, d + 2])]
    finally:
        engine.close()
    assert engine.llms == []
