"""Fault injection for tests/test_ray.py, importable by Ray's workers (tests/ is on their path).

``ray_options={"before_batch": f}``: every capture actor calls ``f(start)`` before the token
batch that starts at sequence ``start``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


class KillOnce:
    """Kills the actor (``ray.kill``, restart allowed) the first time batch ``at`` starts; the
    flag file, created exclusively, makes it once across actors and restarts."""

    def __init__(self, flag: str, at: int) -> None:
        self.flag, self.at = flag, at

    def __call__(self, start: int) -> None:
        if start != self.at:
            return
        try:
            fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        import ray

        ray.kill(ray.get_runtime_context().current_actor, no_restart=False)
        time.sleep(60)  # the kill lands while the batch is in flight


class FailAlways:
    """Raises on batch ``at`` every time: a failure that no retry can fix. Before raising it
    writes how many shards the earlier batches left in ``shards`` to ``seen``."""

    def __init__(self, at: int, shards: str, seen: str) -> None:
        self.at, self.shards, self.seen = at, shards, seen

    def __call__(self, start: int) -> None:
        if start == self.at:
            Path(self.seen).write_text(str(len(os.listdir(self.shards))))
            raise RuntimeError(f"injected failure on the batch at sequence {start}")
