"""glibc's heap through a pass of same-shaped batches: freed blocks reused, not mapped anew.

glibc serves a block above its mmap threshold (128 KiB, adapting up to 32 MiB) with a fresh
mapping, unmaps it on ``free``, and hands the top of the heap back to the OS past its trim
threshold. A forward pass allocates and frees tensors of a few MB at every operation, so by
default each one was page-faulted in anew: much of the forward's element-wise time
(docs/performance.md, "The heap"). Within :func:`kept_heap` every block comes from the heap and
stays there for the next batch, which has the same shapes; the heap is trimmed
(``malloc_trim``) only when the resident anonymous memory exceeds what the last trim left by a
working set and a quarter (:class:`HeapKeeper`: kept rows, fragmentation), not after every
batch, which made the next one fault its working set in again.

Elsewhere than glibc (macOS, musl), and where the user set glibc's thresholds through its
environment variables, the thresholds are left alone and the heap trimmed after every batch.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from collections.abc import Callable, Iterator, Mapping

__all__ = ["HeapKeeper", "kept_heap", "release_freed_memory", "user_set_thresholds"]

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks up to 1 GiB come from the heap within a pass (a batch's logits are the largest).
KEEP_MMAP_THRESHOLD = 1 << 30
#: glibc's own cap on the mmap threshold in some versions (HEAP_MAX_SIZE / 2 on 64 bits).
FALLBACK_MMAP_THRESHOLD = 32 << 20
#: No trim on ``free`` within a pass: :class:`HeapKeeper` decides when to trim.
KEEP_TRIM_THRESHOLD = 2**31 - 1
#: glibc cannot go back to adapting its thresholds once set: after a pass they are left where
#: its adaptation ends for large blocks (DEFAULT_MMAP_THRESHOLD_MAX, and twice it to trim).
AFTER_MMAP_THRESHOLD = 32 << 20
AFTER_TRIM_THRESHOLD = 64 << 20
#: Growth below this never triggers a trim (tiny batches would otherwise trim at every one).
MIN_SLACK = 16 << 20

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_depth = 0
_kept = False  # whether the outermost pass set the thresholds
_depth_lock = threading.Lock()


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``malloc_trim`` and ``mallopt``), else None."""
    try:
        lib = ctypes.CDLL(None)
    except OSError:
        return None
    return lib if hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt") else None


def release_freed_memory() -> None:
    """Hand the heap pages freed so far back to the OS (glibc; a no-op elsewhere).

    Freed arrays of a few MB fragment the heap, so without a trim the peak resident memory of
    a long capture kept growing with the number of batches (SmolLM2, 600 x 64 tokens: 6.6 GB;
    trimmed 2.0 GB), and of a measure with the number of layers.
    """
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)


def anon_resident_bytes() -> int | None:
    """Resident memory not backed by a file (``/proc/self/statm``: resident less shared), or
    None where that file is not there."""
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
        return (int(fields[1]) - int(fields[2])) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class HeapKeeper:
    """When to trim a kept heap: after each batch, :meth:`batch_done`.

    The working set is the resident growth one batch leaves above what the pass's start or a
    trim left (at least :data:`MIN_SLACK`), the largest seen on a batch right after either: what
    the next batch reuses. A batch trims when the resident memory exceeds that by more than a
    quarter of it (kept rows, fragmentation), so what stays resident unused is bounded by a
    fraction of one batch, and same-shaped batches do not trim. ``read`` and ``trim`` are the
    resident reading and the trim (injected in tests).
    """

    def __init__(
        self,
        read: Callable[[], int | None] = anon_resident_bytes,
        trim: Callable[[], None] = release_freed_memory,
    ) -> None:
        self._read, self._trim = read, trim
        self.floor = read()
        self.slack = 0
        self.trims = 0
        self._fresh = True  # the next batch starts from the pass's start or a trim

    def batch_done(self) -> None:
        now = self._read()
        if now is None or self.floor is None:
            self._trim()  # nothing to read: trim as before, after every batch
            self.trims += 1
            return
        if self._fresh:
            self.slack = max(self.slack, MIN_SLACK, now - self.floor)
            self._fresh = False
        elif now > self.floor + self.slack + max(MIN_SLACK, self.slack // 4):
            self._trim()
            self.trims += 1
            after = self._read()
            self.floor = now if after is None else after
            self._fresh = True


#: Environment variables by which a user sets glibc's malloc thresholds: then they are kept.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def user_set_thresholds(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the process was started with glibc's malloc thresholds set by hand (its
    environment variables, or ``GLIBC_TUNABLES`` naming them): hopaudit leaves those alone."""
    tunables = env.get("GLIBC_TUNABLES", "")
    return any(name in env for name in USER_SETTINGS) or any(
        f"glibc.malloc.{t}" in tunables for t in ("mmap_threshold", "trim_threshold", "top_pad")
    )


def _set(lib: ctypes.CDLL, mmap: int, trim: int) -> bool:
    ok = bool(lib.mallopt(M_MMAP_THRESHOLD, mmap))
    if not ok and mmap > FALLBACK_MMAP_THRESHOLD:
        ok = bool(lib.mallopt(M_MMAP_THRESHOLD, FALLBACK_MMAP_THRESHOLD))
    return bool(lib.mallopt(M_TRIM_THRESHOLD, trim)) and ok


@contextlib.contextmanager
def kept_heap() -> Iterator[HeapKeeper]:
    """glibc's heap kept for a pass of batches (call ``batch_done()`` after each); on exit the
    thresholds are left at their adapted values (:data:`AFTER_MMAP_THRESHOLD`) and the heap is
    trimmed. Nested passes keep the outer one's settings. Elsewhere than glibc, or where the
    user set glibc's thresholds (:func:`user_set_thresholds`), the thresholds are not touched
    and the keeper trims after every batch, as the capture always did."""
    global _depth, _kept
    lib = None if user_set_thresholds() else _glibc()
    with _depth_lock:
        if _depth == 0:
            _kept = lib is not None and _set(lib, KEEP_MMAP_THRESHOLD, KEEP_TRIM_THRESHOLD)
        _depth += 1
        kept = _kept
    try:
        yield HeapKeeper() if kept else HeapKeeper(read=lambda: None)
    finally:
        with _depth_lock:
            _depth -= 1
            if _depth == 0 and _kept and lib is not None:
                _set(lib, AFTER_MMAP_THRESHOLD, AFTER_TRIM_THRESHOLD)
        release_freed_memory()
