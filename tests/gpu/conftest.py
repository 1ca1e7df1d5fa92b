"""Tests under tests/gpu need a CUDA GPU (and most need vLLM): on a machine without one they are
collected and reported as skipped, never failed."""

from pathlib import Path

import pytest
import torch

GPU_TESTS = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU: run tests/gpu on the GPU machine")
    for item in items:
        if GPU_TESTS in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(skip)
