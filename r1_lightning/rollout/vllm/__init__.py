"""The vLLM wing: every vLLM-specific line of the package, behind one engine, `VLLMEngine`.

- `engine.py`: `VLLMEngine`, the `RolloutEngine` (attach, generate, weight sync, sleep mode).
- `build.py`: vLLM's import (warning off the tested version), the engine's options (`EngineOptions`)
  and the `LLM(...)` keyword arguments they make, each replica's memory share included.
- `layout.py`: which GPU each trainer rank's engine takes, and how it launches beside the ranks.
- `llm_process.py`: `LLMProcess`, a whole `LLM` in a process of its own.
- `generation.py`: sampling options, generate calls and their outputs as `Completion`s.
- `transfer.py`: the NCCL weight sync into an engine in processes of its own.
- `worker.py`: the methods r1-lightning adds to vLLM's workers.

vLLM itself is imported only when an engine is attached, so `import r1_lightning.rollout` (and a
config naming `r1_lightning.rollout.VLLMEngine`) works on a machine without it. Tested against
vLLM 0.26.0; the vLLM API each call relies on is named next to it.
"""

from r1_lightning.rollout.vllm.engine import VLLMEngine

__all__ = ["VLLMEngine"]
