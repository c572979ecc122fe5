"""Per-sequence metadata: ``audit(..., metadata=df_or_dict)`` columns (source, split, label...)
that join ``Audit.samples`` and colour the basins view.

:func:`check_metadata` turns what the user gave into a DataFrame with one row per audited
sequence (or says what is wrong); :func:`metadata_state` packs it for the view: each column is
either numbers (a colour ramp) or categories (the :data:`TOP_CATEGORIES` most frequent get a
colour each, the rest are "other").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from hopaudit.errors import DataError
from hopaudit.views.schema import pack

#: Categories of a column drawn in distinct colours; the rest are drawn as "other".
TOP_CATEGORIES = 10
OTHER, MISSING = TOP_CATEGORIES, 255  # codes of a categorical column in ``meta_values``
#: hopaudit's own column names: those of ``Audit.samples`` (its scores among them) and the
#: columns naming the audit in the saved tables and ``catalog`` (storage/tables.py's
#: ID_COLUMNS). Metadata may not reuse them: a join would duplicate or replace a column.
RESERVED = (
    *("sequence", "text", "cross_entropy", "min_k", "top1", "distance_ratio", "basin"),
    *("loss", "zlib", "min_k_pp", "ref_loss_diff", "extracted", "extracted_tokens"),
    *("audit", "model", "label", "step", "saved_at"),
)


def check_metadata(metadata: Any, n_sequences: int | None) -> pd.DataFrame | None:
    """``metadata`` as a DataFrame of ``n_sequences`` rows (index 0..n-1), or None. Accepts a
    DataFrame or a dict of column name -> one value per sequence. ``n_sequences=None`` checks
    everything but the length (before the data is tokenized)."""
    if metadata is None:
        return None
    if isinstance(metadata, pd.DataFrame):
        df = metadata.reset_index(drop=True)
    elif isinstance(metadata, Mapping):
        try:
            df = pd.DataFrame({k: list(v) for k, v in metadata.items()})
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"metadata: each value must be a list with one entry per sequence ({exc})"
            ) from None
    else:
        raise DataError(
            f"metadata must be a pandas DataFrame or a dict of column -> values, one per "
            f"sequence; got {type(metadata).__name__}"
        )
    bad = [c for c in df.columns if not isinstance(c, str) or not c]
    if bad:
        raise DataError(f"metadata column names must be non-empty strings; got {bad!r}")
    clash = [c for c in df.columns if c in RESERVED]
    if clash:
        raise DataError(
            f"metadata columns {clash} are already columns of audit.samples or of the saved "
            f"tables; rename them (reserved: {', '.join(RESERVED)})"
        )
    if len(set(df.columns)) != len(df.columns):
        raise DataError(f"metadata column names must be unique; got {list(df.columns)}")
    for name in df.columns:
        _check_plain(df[name], name)
    if n_sequences is not None and len(df) != n_sequences:
        raise DataError(
            f"metadata has {len(df)} rows but the audit has {n_sequences} sequences: give one "
            "row per sequence (with chunking='document' that is one per text, in order; "
            "chunking='stream' cuts the texts into sequences of its own)"
        )
    return df


def _check_plain(col: pd.Series, name: str) -> None:
    """A column the views can draw: numbers, booleans, times, or text (missing allowed)."""
    if (
        pd.api.types.is_numeric_dtype(col)
        or pd.api.types.is_bool_dtype(col)
        or pd.api.types.is_datetime64_any_dtype(col)
        or isinstance(col.dtype, (pd.StringDtype, pd.CategoricalDtype))
    ):
        return
    plain = (str, int, float, bool, np.integer, np.floating, np.bool_, type(None))
    odd = next((v for v in col if not isinstance(v, plain)), None)
    if odd is not None or col.dtype != object:
        kind = type(odd).__name__ if odd is not None else str(col.dtype)
        raise DataError(
            f"metadata column {name!r} holds {kind} values; give numbers, booleans or text"
        )


def metadata_state(metadata: pd.DataFrame | None) -> dict[str, Any]:
    """The view's ``meta_columns`` (name, kind, categories) and ``meta_values`` (one float32
    row per column: the number, or the category's code; NaN / 255 = missing)."""
    if metadata is None or metadata.empty:
        return {"meta_columns": [], "meta_values": pack(np.zeros((0, 0)), "float32")}
    columns, rows = [], []
    for name in metadata.columns:
        col = metadata[name]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
            columns.append({"name": str(name), "kind": "number", "categories": []})
            rows.append(np.where(np.isfinite(values), values, np.nan))
            continue
        text = col.astype("object").where(col.notna(), None)
        counts = pd.Series([v for v in text if v is not None], dtype="object").astype(str)
        top = counts.value_counts(sort=True).index[:TOP_CATEGORIES].tolist()
        code = {c: i for i, c in enumerate(top)}
        values = np.array(
            [MISSING if v is None else code.get(str(v), OTHER) for v in text], dtype=np.float64
        )
        columns.append({"name": str(name), "kind": "category", "categories": top})
        rows.append(values)
    return {"meta_columns": columns, "meta_values": pack(np.vstack(rows), "float32")}
