"""Peak memory of an audit: the process's resident-set high-water mark and where it was reached.

Linux keeps the high-water mark in ``/proc/self/status`` (``VmHWM``) and resets it when ``5``
is written to ``/proc/self/clear_refs``; :class:`PeakTracker` resets it once at the start of an
audit, then reads it after every stage: the stage after which it last rose is where the peak
was reached. Elsewhere (or when the reset is refused) the process's lifetime maximum from
``resource.getrusage`` stands in, and ``reset`` says so.

Under ``engine="ray"`` the work happens in other processes: each Ray actor and task resets its
own mark when it starts and sends it back, and :meth:`PeakTracker.worker` keeps the largest,
so the summary gives the driver's peak and the largest worker's, each with its stage.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["PeakTracker", "current_rss", "peak_rss"]

_STATUS = Path("/proc/self/status")


def _status_kib(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss() -> int:
    """Resident bytes of this process now (0 where unknown)."""
    kib = _status_kib("VmRSS")
    return 0 if kib is None else kib * 1024


def peak_rss() -> int:
    """Resident high-water mark of this process in bytes (since the last reset on Linux)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return 0
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS


def reset_peak() -> bool:
    """Reset the high-water mark to the current RSS (Linux); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class PeakTracker:
    """Reads the high-water mark after each named stage; :meth:`result` names the stage."""

    def __init__(self) -> None:
        self.reset = reset_peak()
        self.start = peak_rss()
        self.peak = self.start
        self.where = "before the audit"
        self.worker_peak: int | None = None
        self.worker_where: str | None = None

    def mark(self, stage: str) -> None:
        """Call after a stage: if the high-water mark rose during it, the peak is there."""
        now = peak_rss()
        if now > self.peak:
            self.peak, self.where = now, stage

    def worker(self, stage: str, peak: int) -> None:
        """A peak (bytes) another process reached during ``stage`` (a Ray actor or task)."""
        if self.worker_peak is None or peak > self.worker_peak:
            self.worker_peak, self.worker_where = int(peak), stage

    def result(self) -> dict[str, object]:
        """``peak_rss_mb``, ``peak_rss_stage``, whether the mark was reset at the start, and
        the largest worker's ``peak_rss_worker_mb`` and ``peak_rss_worker_stage`` (None when
        every stage ran in this process)."""
        return {
            "peak_rss_mb": round(self.peak / 2**20, 1),
            "peak_rss_stage": self.where,
            "peak_rss_reset": self.reset,
            "peak_rss_worker_mb": (
                None if self.worker_peak is None else round(self.worker_peak / 2**20, 1)
            ),
            "peak_rss_worker_stage": self.worker_where,
        }
