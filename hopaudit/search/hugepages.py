"""Transparent huge pages for hnswlib's graph: fewer TLB misses on its random reads.

hnswlib keeps every vector and its level-0 links in one block it mallocs when the index is made
(about 2.4 GB for 10^6 patterns of width 576). Its build and search read that block at random,
and on 4 KB pages nearly every read misses the TLB. Linux backs a mapping with 2 MB pages when
asked (``madvise(MADV_HUGEPAGE)``; numpy already asks for its own large arrays). hnswlib does
not ask, so :func:`huge_pages` does, for the large anonymous mappings that appear while it runs.

Best effort: elsewhere than Linux, where the kernel offers none (:func:`kernel_mode` is
``None`` or ``"never"``), with ``ENABLED = False``, or when anything fails, nothing happens;
the pages are then ordinary ones and the results are the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["ENABLED", "MIN_BYTES", "huge_pages", "kernel_mode"]

#: Switch (benchmarks/hugepages.py turns it off to time the difference).
ENABLED = True
#: Mappings smaller than this are left alone: a small index gains nothing measurable.
MIN_BYTES = 64 << 20
_MADV_HUGEPAGE = 14  # linux/mman.h
_THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
_libc = None


def kernel_mode() -> str | None:
    """The kernel's transparent-huge-page mode for this process: ``"always"``, ``"madvise"``
    or ``"never"``; ``None`` where the kernel has none (not Linux, no THP, unreadable).

    The bracketed word of ``/sys/kernel/mm/transparent_hugepage/enabled``, and ``"never"``
    when this process has them turned off (``THP_enabled: 0`` in ``/proc/self/status``, set
    by ``prctl(PR_SET_THP_DISABLE)`` and inherited by children).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open(_THP_ENABLED) as handle:
            words = handle.read().split()
    except OSError:
        return None
    mode = next((w.strip("[]") for w in words if w.startswith("[")), None)
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("THP_enabled:") and line.split()[1:] == ["0"]:
                    return "never"
    except OSError:
        pass
    return mode


def _anonymous_mappings() -> set[tuple[int, int]]:
    """(start, stop) of this process's anonymous mappings (no file, no [name])."""
    out = set()
    with open("/proc/self/maps") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) == 5:  # address perms offset dev inode, and no path
                start, stop = (int(v, 16) for v in parts[0].split("-"))
                out.add((start, stop))
    return out


def _madvise(start: int, length: int) -> bool:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return _libc.madvise(start, length, _MADV_HUGEPAGE) == 0


@contextmanager
def huge_pages(expected_bytes: int) -> Iterator[None]:
    """Advise huge pages for the anonymous mappings of at least ``MIN_BYTES`` (and at least half
    of ``expected_bytes``) made inside the ``with`` block, before anything is written to them."""
    before = None
    if ENABLED and expected_bytes >= MIN_BYTES and kernel_mode() in ("always", "madvise"):
        try:
            before = _anonymous_mappings()
        except OSError:
            before = None
    yield
    if before is None:
        return
    try:
        for start, stop in _anonymous_mappings() - before:
            if stop - start >= max(MIN_BYTES, expected_bytes // 2):
                _madvise(start, stop - start)
    except (OSError, AttributeError, ValueError):
        pass
