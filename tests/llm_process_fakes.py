"""Stand-ins for `vllm.LLM` that `LLMProcess` builds in its spawned process (tests/test_vllm_process.py):
the child imports this module by name, so it lives beside the tests, not inside one."""

from __future__ import annotations

import os
import time


class EchoLLM:
    """Says where it runs and what it was built with; fails, hangs or exits on request."""

    def __init__(self, **engine_args):
        if engine_args.get("model") == "missing":
            raise ValueError("no model folder at missing")
        self.engine_args = engine_args

    def where(self):
        return os.getpid(), os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING"), self.engine_args

    def add(self, a, b=0):
        return a + b

    def fail(self):
        raise RuntimeError("engine core died\n   in update_weights")

    def unpicklable(self):
        return lambda: None

    def exit(self, code):
        os._exit(code)

    # the weight-transfer surface NCCLWeightSender calls, with an update that never ends
    def init_weight_transfer_engine(self, request):
        return None

    def collective_rpc(self, method, args=()):  # load_weights_in_place: receives forever
        time.sleep(3600)


def first_tokens(llm, prompt_ids, n):
    """A `LLMProcess.call` target: runs with the child's LLM as its first argument."""
    return [ids[:n] for ids in prompt_ids], os.getpid()
