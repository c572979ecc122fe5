"""How many CPUs this process may use: its affinity mask, cut by a cgroup CPU quota.

``os.cpu_count()`` counts the machine's CPUs; a process pinned to fewer (``taskset``, a batch
scheduler) or in a container with a CPU quota may use fewer, and every pool sized larger
oversubscribes them (hopaudit/engines/threads.py).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["cgroup_quota", "cpu_bf16_native", "usable_cpus"]


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs a cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``) quota allows, or None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, cut by a cgroup quota if any."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def cpu_bf16_native() -> bool:
    """Whether torch multiplies bfloat16 matrices in hardware on this CPU (AVX512-BF16 or
    AMX), not emulated (an AVX2-only CPU runs them hundreds of times slower than float32)."""
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
