"""How much a request may ask before the pass: token tensors against the memory this process
can still allocate, checked before anything is read or allocated (an endless generator with
``max_sequences=10**9`` is refused at once instead of being consumed until memory runs out)."""

from __future__ import annotations

import os
import resource

from hopaudit.errors import DataError

__all__ = ["BYTES_PER_TOKEN", "check_tokens", "memory_room"]

#: Bytes one token slot takes while data are prepared: the row kept (int64), then the padded
#: ids and the mask (int64 each).
BYTES_PER_TOKEN = 24


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_room() -> int:
    """Bytes this process can still allocate: the system's available memory, and no more than
    what is left of an address-space limit (``ulimit -v``)."""
    room = _meminfo_available()
    if room is None:
        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
        room = pages * os.sysconf("SC_PAGE_SIZE") if pages > 0 else 1 << 62
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            used = 0
        room = min(room, max(soft - used, 0))
    return room


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def check_tokens(n_sequences: int, length: int, what: str, room: int | None = None) -> None:
    """Refuse ``n_sequences`` sequences of up to ``length`` tokens when their token tensors
    alone would not fit in :func:`memory_room`; the message names the limit and the fix."""
    room = memory_room() if room is None else room
    need = n_sequences * length * BYTES_PER_TOKEN
    if need > room:
        most = max(room // (length * BYTES_PER_TOKEN), 0)
        raise DataError(
            f"{what}: {n_sequences} sequences of {length} tokens need {_size(need)} for their "
            f"token ids alone, more than the {_size(room)} this process can still allocate; "
            f"pass max_sequences={most} or less (or a smaller max_length)"
        )
