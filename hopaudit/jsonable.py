"""The one JSON converter: Python, numpy and pandas values to plain JSON, and back.

Two spellings of what JSON cannot hold (NaN, inf): ``json_safe`` writes them as ``null``, for
whatever a person or another program reads (the CLI, the widget's state, summaries), and
``to_json`` tags them as ``{"float": "nan"}`` so that ``from_json`` restores them exactly (a
saved audit's scalars). Anything else unknown becomes its ``str``.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import numpy as np

__all__ = ["from_json", "json_safe", "to_json"]


def _convert(value: Any, nonfinite: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else nonfinite(v)
    if isinstance(value, dict):
        return {str(k): _convert(v, nonfinite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_convert(v, nonfinite) for v in value]
    if isinstance(value, np.ndarray):
        return _convert(value.tolist(), nonfinite)
    if isinstance(value, datetime):  # pandas Timestamps too
        return value.isoformat()
    if _is_missing(value):
        return None
    return str(value)


def _is_missing(value: Any) -> bool:
    """pandas' NA and NaT, recognized without importing pandas."""
    return type(value).__name__ in ("NAType", "NaTType")


def json_safe(value: Any) -> Any:
    """``value`` with plain Python types only: NaN and inf become None, numpy scalars become
    int/float/bool, tuples become lists, so ``json.dumps(..., allow_nan=False)`` takes it."""
    return _convert(value, lambda v: None)


def to_json(value: Any) -> Any:
    """As :func:`json_safe`, but a non-finite float becomes ``{"float": "nan"}`` (or ``"inf"``,
    ``"-inf"``), which :func:`from_json` turns back into the float: a lossless round trip."""
    return _convert(value, lambda v: {"float": repr(v)})


def from_json(value: Any) -> Any:
    """Undo :func:`to_json`'s tags for non-finite floats."""
    if isinstance(value, dict):
        if set(value) == {"float"}:
            return float(value["float"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value
