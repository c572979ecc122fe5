"""Per-row and per-prediction outputs of a capture, written into arrays made before its batches.

A capture keeps a few small arrays from every batch (each row's sequence and position, each
prediction's log-probability, top-1 hit and Min-K%++ z). Kept as one small tensor a batch, they
were allocated between the batches' large blocks on the heap the capture keeps
(:mod:`hopaudit.heap`) and outlived them, which can split freed blocks the next batch would
reuse, and were concatenated into new arrays at the end. A :class:`Column` is allocated once,
before the batches, at the size the data bounds, and each batch's values are copied into it
(benchmarks/many_layers.py showed no change in the capture's peak beyond its spread).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["Column"]


class Column:
    """A 1-D array filled batch by batch: :meth:`extend` copies values in (doubling the array
    in the rare case the first size was short), :meth:`values` is what was written."""

    def __init__(self, dtype: np.dtype | type, capacity: int) -> None:
        self._data = np.empty(max(0, int(capacity)), dtype=dtype)
        self._n = 0

    def extend(self, values: torch.Tensor | np.ndarray, offset: int = 0) -> None:
        """Append ``values`` (a 1-D tensor on any device, or array), plus ``offset``."""
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().numpy()
        values = np.asarray(values).reshape(-1)
        end = self._n + values.size
        if end > self._data.size:
            grown = np.empty(max(end, 2 * self._data.size), dtype=self._data.dtype)
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        out = self._data[self._n : end]
        out[...] = values
        if offset:
            out += offset
        self._n = end

    def values(self) -> np.ndarray:
        """The values written so far: the array itself when full, else a copy (so a short fill
        does not keep the whole array alive)."""
        if self._n == self._data.size:
            return self._data
        return self._data[: self._n].copy()

    def __len__(self) -> int:
        return self._n
