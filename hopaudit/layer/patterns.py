"""The patterns a layer's index holds: its finite rows, in float32, normalized as the report
says. One function, read by the measuring engines, a saved audit's index rebuild and queries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hopaudit.geometry import normalize_rows

__all__ = ["layer_patterns", "patterns_of"]


def layer_patterns(store: Any, name: str, rows: Any, mode: str) -> np.ndarray:
    """Rows ``rows`` of layer ``name`` of an activation store, float32, normalized by ``mode``;
    the store's mapping of the layer is released after (one layer in memory at a time)."""
    x = normalize_rows(np.asarray(store.get(name)[np.asarray(rows)], np.float32), mode)
    store.release(name)
    return x


def patterns_of(capture: Any, name: str, report: Any) -> Callable[[], np.ndarray]:
    """A function giving the patterns of ``report``'s index, read when called: ``capture.store``
    is looked up then (a saved or loaded audit may have replaced it)."""
    rows, mode = report.valid_rows, report.normalize
    return lambda: layer_patterns(capture.store, name, rows, mode)
