"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a shared two-core machine, two threads are many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked ``cuda`` where torch sees no GPU, and say why."""
    if torch.cuda.is_available():
        return
    build = (
        "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    )
    skip = pytest.mark.skip(reason=f"no CUDA GPU: torch {torch.__version__} is {build}")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
