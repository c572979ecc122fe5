"""The tidy tables of an audit as parquet: one row per layer, per sequence, per score, each led
by the columns that name the audit (for pandas, DuckDB and polars over many audits)."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from hopaudit.errors import FormatError
from hopaudit.jsonable import json_safe
from hopaudit.storage.atomic import write_bytes

#: The columns that name the audit a row belongs to, first in every table.
ID_COLUMNS = ["audit", "model", "label", "step", "saved_at"]
#: The tables a saved audit writes as ``<name>.parquet`` (membership only when present).
TABLES = ("layers", "samples", "membership")


def option_text(value: Any) -> str:
    """An option as JSON text: one stable type (str) whatever the option's type in each run."""
    return json.dumps(json_safe(value), sort_keys=True)


def audit_tables(audit: Any) -> dict[str, pd.DataFrame]:
    """The tidy tables of one audit (``layers``, ``samples``, and ``membership`` when the
    audit has one as a DataFrame), without the id columns."""
    tables = {"layers": audit.layers, "samples": audit.samples}
    membership = getattr(audit, "membership", None)
    if callable(membership):
        membership = None  # a method needing arguments: not a table of the audit
    if isinstance(membership, pd.DataFrame):
        tables["membership"] = membership
    return tables


def with_ids(
    df: pd.DataFrame, *, audit: str, model: str, label: str, step: Any, saved_at: Any
) -> pd.DataFrame:
    """``df`` with :data:`ID_COLUMNS` first (replaced when it has them already)."""
    out = df.drop(columns=[c for c in ID_COLUMNS if c in df.columns])
    n = len(out)
    ids = pd.DataFrame(
        {
            "audit": pd.Series([audit] * n, dtype="string"),
            "model": pd.Series([model] * n, dtype="string"),
            "label": pd.Series([label] * n, dtype="string"),
            "step": pd.Series([step] * n, dtype="Int64"),
            "saved_at": pd.Series(
                pd.to_datetime([saved_at] * n, utc=True), dtype="datetime64[ns, UTC]"
            ),
        },
        index=out.index,
    )
    return pd.concat([ids, out], axis=1)


def parquet_bytes(df: pd.DataFrame) -> bytes:
    """``df`` as the bytes of one parquet file (pyarrow, zstd, no pandas index)."""
    buffer = io.BytesIO()
    df.to_parquet(buffer, engine="pyarrow", index=False, compression="zstd")
    return buffer.getvalue()


def now_utc() -> str:
    """The time a save happens, ISO 8601 in UTC (audit.json's ``saved_at``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_tables(audit: Any, root: Path, *, name: str, saved_at: str) -> list[str]:
    """Write the parquet tables of ``audit`` into the folder ``root`` (atomically, each);
    ``name`` is the audit's folder name (the ``audit`` and ``label`` columns). Returns the
    files written, relative to ``root``."""
    written = []
    step = audit.options.get("step")
    for table, df in audit_tables(audit).items():
        tidy = with_ids(
            df, audit=name, model=audit.model_name, label=name, step=step, saved_at=saved_at
        )
        write_bytes(root / f"{table}.parquet", parquet_bytes(tidy))
        written.append(f"{table}.parquet")
    return written


def read_parquet(data: bytes, where: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(io.BytesIO(data)).to_pandas()
    except Exception as exc:  # pyarrow's errors are many; any of them means a damaged file
        raise FormatError(f"{where}: damaged ({type(exc).__name__}: {exc})") from None
