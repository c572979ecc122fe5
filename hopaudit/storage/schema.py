"""What a saved audit's values may be, checked after a file's digest and before any use.

A digest only says a file is the one the manifest names; a crafted audit from someone else has
consistent digests. So every value a load passes on is checked against this declared schema:
audit.json (nesting depth, ``saved_at``, every count: an integer in range), the activation
store's meta.json (shapes against the audit's), and the npz members (1-D where one value per
row or sequence is meant, numeric, lengths equal to their siblings', ids inside what they
index). A value out of schema is a :class:`FormatError` naming the file and the field, never
a raw exception later in a table, a view or a save (docs/saved-audits.md).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from hopaudit.errors import FormatError

__all__ = [
    "MAX_DEPTH",
    "check_arrays",
    "check_depth",
    "check_meta",
    "check_store",
    "check_texts",
]

#: Deepest nesting of lists and objects accepted in a saved JSON file (a model config is < 8).
MAX_DEPTH = 64
_MAX_COUNT = 1 << 53  # a count JSON can hold exactly

# counts: field -> least value (integers, never NaN, inf or a float)
_AUDIT_COUNTS = {
    "hidden_size": 1,
    "n_blocks": 0,
    "n_params_total": 0,
    "n_params_blocks": 0,
    "n_tokens": 0,
}
_CAPTURE_COUNTS = {"n_tokens": 0, "n_predicted": 0, "batch_size": 0}
_REPORT_COUNTS = {
    "n": 1,
    "n_patterns": 0,
    "n_queries": 0,
    "nonfinite": 0,
    "nonfinite_queries": 0,
    "twonn_zero_pairs": 0,
    "bootstrap": 0,
}
_EMBEDDING_COUNTS = {"n_total": 0}


def _bad(file: Path, field: str, what: str) -> FormatError:
    return FormatError(f"{file}: damaged ({field}: {what})")


def check_depth(value: Any, file: Path, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON nested deeper than ``limit`` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                raise _bad(file, "nesting", f"deeper than {limit} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


def _count(scope: dict, name: str, least: int, file: Path, where: str) -> None:
    if name not in scope or scope[name] is None:
        return
    value = scope[name]
    ok = isinstance(value, int) and not isinstance(value, bool) and least <= value < _MAX_COUNT
    if not ok:
        raise _bad(file, f"{where}{name}", f"{value!r} is not a whole number >= {least}")


def _saved_at(meta: dict, file: Path) -> None:
    value = meta.get("saved_at")
    if value is None:
        return
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) and len(value) < 64 else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None or not 1970 <= when.year <= 9999:
        raise _bad(file, "saved_at", f"{str(value)[:40]!r} is not an ISO 8601 time with a zone")


def check_meta(meta: dict, file: Path) -> None:
    """audit.json's nesting, ``saved_at`` and counts (see the module docstring)."""
    check_depth(meta, file)
    _saved_at(meta, file)
    for scope, counts, where in (
        (meta.get("audit"), _AUDIT_COUNTS, "audit."),
        (meta.get("capture"), _CAPTURE_COUNTS, "capture."),
        (meta.get("heldout"), _CAPTURE_COUNTS, "heldout."),
    ):
        if scope is not None and not isinstance(scope, dict):
            raise _bad(file, where.rstrip("."), "not an object")
        for name, least in counts.items():
            _count(scope or {}, name, least, file, where)
    for key, counts in (("reports", _REPORT_COUNTS), ("embeddings", _EMBEDDING_COUNTS)):
        layers = meta.get(key)
        if not isinstance(layers, dict):
            raise _bad(file, key, "not an object")
        for layer, scope in layers.items():
            if not isinstance(scope, dict):
                raise _bad(file, f"{key}.{layer}", "not an object")
            for name, least in counts.items():
                _count(scope, name, least, file, f"{key}.{layer}.")


def check_store(store: Any, file: Path, rows: int | None, hidden: int) -> None:
    """An activation store's layers: ``rows`` rows (the capture's row count; None where stacks
    of an encoder-decoder hold different counts) of ``hidden`` values each."""
    for name in store.layer_names:
        n, h = store.shape(name)
        if h != hidden or (rows is not None and n != rows):
            raise _bad(file, f"layers.{name}", f"{n} x {h}, expected {rows} x {hidden}")


def check_texts(texts: Any, file: Path, n: int) -> None:
    """texts.json: a list of ``n`` strings (one per sequence)."""
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise FormatError(f"{file}: damaged (not a list of texts)")
    if len(texts) != n:
        raise _bad(file, "texts", f"{len(texts)} texts for {n} sequences")


def check_arrays(
    arrays: dict[str, np.ndarray],
    file: Path,
    *,
    lengths: dict[str, int],
    bounds: dict[str, int],
    two_d: tuple[str, ...] = (),
) -> None:
    """The members of one npz: numeric, 1-D (2-D for ``two_d``, C order), each member named
    in ``lengths`` (a prefix ends with ``*``) of that length, each in ``bounds`` an integer
    array inside ``[0, bound)``."""
    for name, arr in arrays.items():
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
            raise _bad(file, name, "not a numeric array")
        ndim = 2 if name in two_d else 1
        if arr.ndim != ndim or (ndim == 2 and not arr.flags.c_contiguous):
            raise _bad(file, name, f"shape {arr.shape}, expected {ndim}-D in C order")
        for pattern, n in lengths.items():
            hit = name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern
            if hit and len(arr) != n:
                raise _bad(file, name, f"{len(arr)} values, expected {n}")
        bound = bounds.get(name)
        if bound is not None and arr.size:
            if arr.dtype.kind not in "iu":
                raise _bad(file, name, "not integers")
            low, high = int(arr.min()), int(arr.max())
            if low < 0 or high >= bound:
                raise _bad(file, name, f"values {low}..{high} outside 0..{bound - 1}")
