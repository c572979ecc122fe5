"""The one description of every binary array a view sends: the array carries it.

Each array of a widget state is a dict ``{"dtype": "uint16", "shape": [m, 2], "view": bytes}``
(little-endian, C order), as jupyter-scatter sends its points. ipywidgets ships the ``view`` as
a binary buffer; the report writes it as one; the front end (js/src/schema.ts) and
:func:`unpack` read the dtype and shape from the dict itself, so no reader keeps a table of
its own. What each array *means* is written where it is packed (hopaudit/views/widget.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The dtypes a view may send, by the name the front end reads (all little-endian).
DTYPES = {
    "uint8": "u1",
    "uint16": "<u2",
    "uint32": "<u4",
    "float16": "<f2",
    "float32": "<f4",
    "float64": "<f8",
}
KEYS = frozenset({"dtype", "shape", "view"})


def pack(a: Any, dtype: str) -> dict[str, Any]:
    """``a`` as a self-describing array of ``dtype`` (a name of :data:`DTYPES`)."""
    arr = np.ascontiguousarray(a, dtype=np.dtype(DTYPES[dtype]))
    return {"dtype": dtype, "shape": [int(s) for s in arr.shape], "view": arr.tobytes()}


def is_array(value: Any) -> bool:
    """Whether ``value`` is a packed array (a dict of exactly dtype, shape and view)."""
    return isinstance(value, dict) and value.keys() == KEYS


def unpack(value: dict[str, Any]) -> np.ndarray:
    """The numpy array of a packed one (read-only, no copy). Raises ``ValueError`` when the
    dict does not describe its bytes."""
    if not is_array(value):
        raise ValueError(
            f"not a packed array: keys {sorted(value) if isinstance(value, dict) else value!r}"
        )
    name, shape = value["dtype"], value["shape"]
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    dtype = np.dtype(DTYPES[name])
    view = value["view"]
    count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    if count * dtype.itemsize != len(view):
        raise ValueError(f"{len(view)} bytes cannot be a {name} array of shape {shape}")
    return np.frombuffer(view, dtype=dtype).reshape(shape)
