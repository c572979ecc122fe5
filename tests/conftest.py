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


@pytest.fixture(scope="session")
def smollm2_shared():
    """SmolLM2-135M (model, tokenizer), loaded once per test run (its GGUF is dequantized on
    every load: seconds each). Tests must not change it; one that does loads its own."""
    from hopaudit.zoo import models as zoo

    return zoo.smollm2()


@pytest.fixture(scope="session")
def minilm_shared():
    """all-MiniLM-L6-v2 (model, tokenizer), loaded once per test run; read-only, as above."""
    from hopaudit.zoo import models as zoo

    return zoo.minilm()
