"""The audit's thread pools capped to the CPUs this process may use.

On a shared machine every pool sized by ``os.cpu_count()`` (torch's intra-op and inter-op
pools, the tokenizers' Rayon pool, numba's pool behind UMAP, hnswlib's threads) oversubscribes
the CPUs the process may really run on (its affinity mask, and a cgroup's CPU quota in a
container): OpenMP's barriers then wait on threads the kernel has descheduled, and a
competing process costs the audit far more than its share. :func:`capped_threads` sets every
pool to :func:`usable_cpus` for the length of an audit, and puts back what it changed.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from hopaudit.cpus import usable_cpus

__all__ = ["ENV_CAPS", "capped_threads", "thread_settings", "usable_cpus"]

#: Environment variables read by pools created later in the process (tokenizers' Rayon pool,
#: numba's, OpenMP and BLAS ones in subprocesses); set only when the user has not.
ENV_CAPS = ("RAYON_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def thread_settings() -> dict[str, int | str | None]:
    """What each pool is set to now (for benchmarks and bug reports)."""
    import torch

    numba = sys.modules.get("numba")
    return {
        "usable_cpus": usable_cpus(),
        "torch_intra_op": torch.get_num_threads(),
        "torch_inter_op": torch.get_num_interop_threads(),
        "numba": None if numba is None else int(numba.get_num_threads()),
        **{k.lower(): os.environ.get(k) for k in (*ENV_CAPS, "TOKENIZERS_PARALLELISM")},
    }


@contextlib.contextmanager
def capped_threads(cpus: int | None = None) -> Iterator[int]:
    """Within the block no pool runs more threads than ``cpus`` (default :func:`usable_cpus`).

    Lowers torch's intra-op pool and numba's (if loaded) when they are larger, sets the
    environment caps of pools not yet created (never overriding the user's), and restores all
    of it on the way out, also after an exception. Torch's inter-op pool can only be sized
    before its first use; the audit runs nothing on it.
    """
    import torch

    n = max(1, int(cpus) if cpus else usable_cpus())
    before_torch = torch.get_num_threads()
    env_set = [k for k in ENV_CAPS if k not in os.environ]
    numba = sys.modules.get("numba")
    before_numba = None if numba is None else int(numba.get_num_threads())
    try:
        for key in env_set:
            os.environ[key] = str(n)
        if before_torch > n:
            torch.set_num_threads(n)
        if before_numba is not None and before_numba > n:
            numba.set_num_threads(n)
        yield n
    finally:
        if torch.get_num_threads() != before_torch:
            torch.set_num_threads(before_torch)
        if before_numba is not None and int(numba.get_num_threads()) != before_numba:
            numba.set_num_threads(before_numba)
        for key in env_set:
            os.environ.pop(key, None)
