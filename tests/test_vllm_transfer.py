"""The weight-sync protocol of `VLLMEngine(process="separate")` on the CPU, without vLLM.

These are protocol tests: a fake `vllm.LLM` (its weight-transfer methods) and fake trainer-side
calls (`vllm_transfer.trainer_connect` / `trainer_send`, monkeypatched) check the order of the calls,
the metadata the engine is told to expect, and what happens when a side hangs or fails. The real
NCCL path (vLLM's engine core in its own process, a broadcast between two GPUs) runs only on the
GPU machine: tests/gpu/test_vllm_separate_process.py.
"""

from __future__ import annotations

import math
import os
import threading
import time
from types import SimpleNamespace

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

VOCAB = char_vocab("abcdef")
ENGINE_SIDE_PHASES = ["init_weight_transfer_engine", "load_weights_in_place", "reset_prefix_cache"]


class FakeLLM:
    """`vllm.LLM`'s weight-transfer surface (0.26) with our worker extension's method behind
    `collective_rpc`. `hang`: the call that never returns (until the test ends); `fail`: the one that
    raises. `load_weights_in_place` and `init_weight_transfer_engine` meet the trainer's side at a
    barrier, as NCCL would: they only finish if both sides run at once."""

    def __init__(self, calls: list, meet: threading.Barrier, release: threading.Event, hang=None, fail=None,
                 prefix_cache_reset=True):
        self.calls, self.meet, self.release = calls, meet, release
        self.hang, self.fail, self.prefix_cache_reset = hang, fail, prefix_cache_reset
        self.update_infos, self.init_infos = [], []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name == self.hang:
            self.release.wait()
        if name == self.fail:
            raise RuntimeError(f"engine core died in {name}")

    def init_weight_transfer_engine(self, request):
        self._call("init_weight_transfer_engine")
        self.init_infos.append(request["init_info"])
        self.meet.wait()

    def collective_rpc(self, method, args=()):
        assert method == "load_weights_in_place", method  # the only worker call a sync makes
        self.update_infos.append(args[0])
        self.meet.wait()  # the broadcast, with the trainer
        self._call(method)  # then loading what arrived: may hang or fail

    def reset_prefix_cache(self):
        self._call("reset_prefix_cache")
        return self.prefix_cache_reset

    def generate(self, *args, **kwargs):
        raise AssertionError("a broken engine must not reach LLM.generate")


@pytest.fixture
def setup(monkeypatch, llm_process_here):
    """A separate-process VLLMEngine attached (fake vLLM) to a float32 policy, engine dtype bfloat16."""
    calls, release = [], threading.Event()
    meet = threading.Barrier(2, timeout=10)
    state = SimpleNamespace(calls=calls, sent=[], trainer_fail=False, llm_options={}, built=[], env_at_build=[])

    def make_llm(**kwargs):
        state.built.append(kwargs)
        state.env_at_build.append(os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING"))
        state.llm = FakeLLM(calls, meet, release, **state.llm_options)
        return state.llm

    def trainer_connect(info):
        calls.append("trainer_connect")
        meet.wait()
        return "communicator"

    def trainer_send(named_tensors, communicator, dtype):
        calls.append("trainer_send")
        assert communicator == "communicator"
        if state.trainer_fail:
            raise RuntimeError("NCCL error: unhandled cuda error")
        state.sent.append(list(vllm_transfer.wire_tensors(named_tensors, dtype)))
        meet.wait()

    fake_vllm = SimpleNamespace(LLM=make_llm, __version__=vllm_build.TESTED_VLLM_VERSION,
                                envs=SimpleNamespace(disable_envs_cache=lambda: state.built.append("envs cache dropped")))
    monkeypatch.setattr(vllm_build, "import_vllm", lambda: fake_vllm)
    monkeypatch.setattr(vllm_build, "engine_arg_exists", lambda name: True)  # EngineArgs of vLLM 0.26
    monkeypatch.setattr(vllm_engine, "engine_gpus", lambda *args, **kwargs: [-1])  # cuda.device(-1): no-op
    monkeypatch.setattr(vllm_transfer, "trainer_connect", trainer_connect)
    monkeypatch.setattr(vllm_transfer, "trainer_send", trainer_send)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # as benchmarks/gpu/setup.sh exports it
    state.policy = tiny_qwen2(len(VOCAB))  # float32 master weights
    state.tokenizer = char_tokenizer(VOCAB)

    def attach(**options):
        engine = VLLMEngine(process="separate", model="model-folder", dtype="bfloat16", **options)
        engine.attach(state.policy, state.tokenizer)
        return engine

    state.attach = attach
    yield state
    release.set()  # lets the hung fake calls end
    meet.abort()


def sync(state, engine):
    engine.load_weights(state.policy.named_parameters())


def assert_refuses_to_generate(engine):
    with pytest.raises(WeightSyncError, match="refuses to generate: a weight sync failed"):
        engine.generate(["ab"], SamplingConfig(max_tokens=4))
    with pytest.raises(WeightSyncError, match="refuses to sync weights"):
        engine.load_weights([])


def test_sync_sequence_and_what_the_engine_is_told_to_expect(setup):
    engine = setup.attach()
    sync(setup, engine)
    first = list(setup.calls)
    sync(setup, engine)
    second = setup.calls[len(first):]

    # connect (both sides at once, the first time only), receive in place || send, drop the prefix cache
    assert set(first[:2]) == {"init_weight_transfer_engine", "trainer_connect"}
    assert set(first[2:4]) == {"load_weights_in_place", "trainer_send"} and first[4:] == ["reset_prefix_cache"]
    assert set(second[:2]) == {"load_weights_in_place", "trainer_send"} and second[2:] == ["reset_prefix_cache"]
    info = setup.llm.init_infos[0]
    assert (info["rank_offset"], info["world_size"], info["master_address"]) == (1, 2, "127.0.0.1")

    params = dict(setup.policy.named_parameters())
    for update in setup.llm.update_infos:
        assert update["names"] == list(params) and update["packed"] is True
        assert update["dtype_names"] == ["bfloat16"] * len(params)  # the engine's dtype, not the policy's float32
        assert update["shapes"] == [list(p.shape) for p in params.values()]
        assert all(getattr(torch, name) is torch.bfloat16 for name in update["dtype_names"])
    # the bytes sent are what the engine splits its buffers by: 2 bytes per parameter, the values cast
    sent = setup.sent[0]
    expected_bytes = sum(math.prod(shape) * 2 for shape in setup.llm.update_infos[0]["shapes"])
    assert sum(t.numel() * t.element_size() for _, t in sent) == expected_bytes == 2 * sum(p.numel() for p in params.values())
    for name, tensor in sent:
        assert tensor.dtype == torch.bfloat16 and not tensor.requires_grad
        assert torch.equal(tensor, params[name].detach().to(torch.bfloat16))


def test_separate_engine_is_built_in_its_own_process_with_nccl_weight_transfer(setup):
    engine = setup.attach()
    assert setup.built[0]["weight_transfer_config"] == {"backend": "nccl"}
    # VLLM_ENABLE_V1_MULTIPROCESSING=0 in the environment, 1 where this engine is built (its own
    # process: this one's environment is left as it was)
    assert setup.env_at_build == ["1"] and os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    in_process = VLLMEngine(model="model-folder")
    in_process.attach(setup.policy, setup.tokenizer)
    # an earlier in-process engine's cached variables are dropped before an in-process engine is built
    assert setup.built[1] == "envs cache dropped"
    assert setup.env_at_build[1] == "0" and "weight_transfer_config" not in setup.built[2]
    assert "separate" in str(engine) and "in-process" in str(in_process)
    with pytest.raises(ValueError, match="cannot be colocated"):
        VLLMEngine(process="separate", colocate=True)
    with pytest.raises(ValueError, match="process must be one of"):
        VLLMEngine(process="subprocess")


@pytest.mark.parametrize("phase", ENGINE_SIDE_PHASES)
def test_a_hung_engine_side_call_raises_within_the_timeout_and_the_engine_refuses(setup, phase):
    setup.llm_options = {"hang": phase}
    engine = setup.attach(sync_timeout_s=0.3)
    start = time.monotonic()
    with pytest.raises(WeightSyncError, match=rf"weight sync 1: .*{phase}.* did not finish within sync_timeout_s=0.3 s"):
        sync(setup, engine)
    assert time.monotonic() - start < 2.0
    later = ENGINE_SIDE_PHASES[ENGINE_SIDE_PHASES.index(phase) + 1:]
    assert not set(later) & set(setup.calls)  # nothing after the hung call ran
    assert_refuses_to_generate(engine)


def test_a_trainer_side_exception_raises_at_once_and_the_engine_refuses(setup):
    setup.trainer_fail = True
    engine = setup.attach(sync_timeout_s=30)
    start = time.monotonic()
    with pytest.raises(WeightSyncError, match="trainer sending .* failed: RuntimeError: NCCL error: unhandled cuda error"):
        sync(setup, engine)
    assert time.monotonic() - start < 5.0  # not the 30 s timeout: the engine side is still waiting
    assert "reset_prefix_cache" not in setup.calls
    assert_refuses_to_generate(engine)


def test_an_engine_side_exception_or_a_refused_prefix_cache_reset_fails_the_sync(setup):
    setup.llm_options = {"fail": "load_weights_in_place"}
    engine = setup.attach()
    with pytest.raises(WeightSyncError, match=r"receiving \(load_weights_in_place\) failed: RuntimeError: engine core died"):
        sync(setup, engine)
    assert_refuses_to_generate(engine)

    setup.llm_options = {"prefix_cache_reset": False}
    engine = setup.attach()
    with pytest.raises(WeightSyncError, match="reset_prefix_cache.*refused"):
        sync(setup, engine)
    assert_refuses_to_generate(engine)


def test_a_failed_in_process_sync_also_leaves_the_engine_refusing(setup):
    engine = VLLMEngine(model="model-folder")
    engine.attach(setup.policy, setup.tokenizer)

    def load_halfway(func):
        raise RuntimeError("CUDA out of memory")

    engine.llms = [SimpleNamespace(apply_model=load_halfway)]
    with pytest.raises(WeightSyncError, match="in-process engine core.*CUDA out of memory"):
        sync(setup, engine)
    assert_refuses_to_generate(engine)


def test_the_module_names_the_step_of_a_failed_sync_and_keeps_its_engine_version(setup, tiny_model_dir):
    from r1_lightning.modules.rollout import RolloutModule

    setup.llm_options = {"fail": "reset_prefix_cache"}
    module = RolloutModule(tiny_model_dir, engine=setup.attach())
    module.policy = setup.policy  # what configure_model loads (the engine is attached to it already)
    with pytest.raises(WeightSyncError, match=r"^at global step 0, syncing policy version 0: VLLMEngine on .* weight "
                                              r"sync 1: LLM.reset_prefix_cache failed"):
        module.sync_engine()
    assert module.engine_version is None  # the engine is not known to hold any version
    assert_refuses_to_generate(module.engine)
