"""Fixtures shared by several test modules."""

from __future__ import annotations

import os

import pytest
import torch

from hopaudit.engines.threads import ENV_CAPS, usable_cpus


def _a_share_of_the_cpus_per_worker() -> None:
    """Under pytest-xdist, each worker's thread pools sized to its share of the usable CPUs
    (one each for two workers on two cores): two workers of two OpenMP threads each on two
    cores spin in each other's barriers. The user's own settings are kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers < 2:
        return
    share = max(1, usable_cpus() // workers)
    for key in ENV_CAPS:  # pools created later, here or in children (kernels, Ray, forks)
        os.environ.setdefault(key, str(share))
    torch.set_num_threads(min(torch.get_num_threads(), share))


_a_share_of_the_cpus_per_worker()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a shared two-core machine, two threads are many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: The files that take longest, scheduled first when the suite runs on several workers
#: (``pytest -n 2 --dist loadfile``, as the README says): the workers then end together
#: instead of one waiting out a long file at the end. Only the order changes.
LONGEST_FIRST = (
    "views/test_notebook.py",
    "storage/test_faults.py",
    "engines/test_ray.py",
    "browser/test_lab_reopen.py",
    "browser/test_lab_query.py",
    "browser/test_jupyterlab.py",
    "zoo/test_real_models.py",
    "browser/test_demo_untrusted.py",
)


def _first(item) -> int:
    path = item.path.as_posix()
    return next((i for i, f in enumerate(LONGEST_FIRST) if path.endswith(f)), len(LONGEST_FIRST))


def pytest_collection_modifyitems(config, items):
    """Longest files first (:data:`LONGEST_FIRST`); skip the tests marked ``cuda`` where torch
    sees no GPU, and say why."""
    items.sort(key=_first)  # stable: within a file, and among the rest, collection order
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
