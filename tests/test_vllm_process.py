"""`LLMProcess`: the `LLM` of `VLLMEngine(process="separate")` built and called in a spawned process.

Real processes, with `tests/llm_process_fakes.py`'s stand-in for `vllm.LLM` (the child imports it by
name). The real vLLM path runs on the GPU machine: tests/gpu/test_vllm_separate_process.py.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from r1_lightning.rollout import WeightSyncError, vllm_transfer
from r1_lightning.rollout.vllm_process import LLMProcess

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
    """The sender's deadline covers calls into the child: a hung update_weights there raises
    WeightSyncError here; close() then terminates the child, which never answers."""
    monkeypatch.setattr(vllm_transfer, "trainer_connect", lambda info: "communicator")
    monkeypatch.setattr(vllm_transfer, "trainer_send", lambda named_tensors, communicator, dtype: None)
    process = LLMProcess({}, env={}, build=FAKE)
    sender = vllm_transfer.NCCLWeightSender(process, "engine", timeout_s=5.0, dtype=torch.bfloat16)
    start = time.monotonic()
    with pytest.raises(WeightSyncError, match=r"update_weights\) did not finish within sync_timeout_s=5 s"):
        sender.send([("w", torch.zeros(2))])
    assert time.monotonic() - start < 30
    process.close(timeout_s=1.0)
    assert not process._process.is_alive()
    with pytest.raises(RuntimeError, match="gone|exited"):
        process.add(1)
