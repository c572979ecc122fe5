"""Tidy tables over many saved audits: ``hopaudit.catalog(paths_or_glob)``.

A saved audit carries its per-layer table and its per-sequence table as ``layers.parquet`` and
``samples.parquet`` (``membership.parquet`` when the audit has one), each with the columns that
say which audit a row came from (:data:`ID_COLUMNS`), so DuckDB or polars read a folder of
audits directly (``SELECT * FROM 'runs/*/layers.parquet'``). :func:`catalog` reads the same
tables into one long pandas DataFrame, each file checked against the audit's manifest (size and
SHA-256) before pyarrow parses it. Audits saved before the parquet files existed are loaded
whole and their tables computed.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import math
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import DataError, FormatError

#: The columns that name the audit a row belongs to, first in every table.
ID_COLUMNS = ["audit", "model", "label", "step", "saved_at"]
#: The tables a saved audit writes as ``<name>.parquet`` (membership only when present).
TABLES = ("layers", "samples", "membership")


# ------------------------------------------------------------------------------ JSON safety
def json_safe(value: Any) -> Any:
    """``value`` with plain Python types only: NaN and inf become None, numpy scalars become
    int/float/bool, tuples become lists, so ``json.dumps(..., allow_nan=False)`` takes it."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, datetime):  # pandas Timestamps too
        return value.isoformat()
    return str(value)


def _option_text(value: Any) -> str:
    """An option as JSON text: one stable type (str) whatever the option's type in each run."""
    return json.dumps(json_safe(value), sort_keys=True)


# ------------------------------------------------------------------------------ writing
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
    from .atomic import write_bytes

    written = []
    step = audit.options.get("step")
    for table, df in audit_tables(audit).items():
        tidy = with_ids(
            df, audit=name, model=audit.model_name, label=name, step=step, saved_at=saved_at
        )
        write_bytes(root / f"{table}.parquet", parquet_bytes(tidy))
        written.append(f"{table}.parquet")
    return written


# ------------------------------------------------------------------------------ reading
def _audit_paths(paths_or_glob: Any) -> list[Path]:
    """Globs expanded; a folder holding saved audits (not itself one) stands for them."""
    if isinstance(paths_or_glob, (str, os.PathLike)):
        items: list[Any] = [paths_or_glob]
    elif isinstance(paths_or_glob, Iterable):
        items = list(paths_or_glob)
    else:
        raise DataError(
            f"catalog expects a path, a glob or a list of paths, got {type(paths_or_glob).__name__}"
        )
    found: list[Path] = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise DataError(f"audit paths must be str or Path, got {type(item).__name__}")
        text = os.path.expanduser(os.fspath(item))
        if glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text) if Path(p, "audit.json").exists())
            if not matches:
                raise DataError(f"no saved audit matches {text!r} (a folder with audit.json)")
            found.extend(matches)
            continue
        path = Path(text)
        if not path.is_dir():
            raise DataError(f"{path}: no such folder (expected a saved audit, or a folder of them)")
        if not (path / "audit.json").exists():
            inner = sorted(p.parent for p in path.glob("*/audit.json"))
            if not inner:
                raise DataError(f"{path} is not a saved audit and holds none (no audit.json)")
            found.extend(inner)
            continue
        found.append(path)
    if not found:
        raise DataError("no audit paths given")
    return list(dict.fromkeys(found))


def _read_listed(root: Path, rel: str, manifest: dict[str, tuple[int, str | None]]) -> bytes:
    """The bytes of a manifest file, checked (regular, size, SHA-256) before any parser."""
    from .atomic import lstat_regular
    from .persist import _open_regular

    size, digest = manifest[rel]
    st = lstat_regular(root, rel)
    if isinstance(st, str):
        raise FormatError(f"{root / rel}: {st}")
    with os.fdopen(_open_regular(root / rel), "rb") as handle:
        data = handle.read(size + 1)
    if len(data) != size:
        raise FormatError(f"{root / rel}: {len(data)} bytes, expected {size}: the file is damaged")
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise FormatError(f"{root / rel}: damaged (its SHA-256 does not match the manifest)")
    return data


def _read_parquet(data: bytes, where: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(io.BytesIO(data)).to_pandas()
    except Exception as exc:  # pyarrow's errors are many; any of them means a damaged file
        raise FormatError(f"{where}: damaged ({type(exc).__name__}: {exc})") from None


def _one_audit(root: Path, table: str) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """(audit.json's metadata, the table or None when this audit has no such table)."""
    from .persist import _manifest, _read_meta, load

    meta = _read_meta(root)
    manifest = _manifest(meta, root / "audit.json")
    rel = f"{table}.parquet"
    if rel in manifest:
        return meta, _read_parquet(_read_listed(root, rel, manifest), root / rel)
    if "layers.parquet" in manifest:
        return meta, None  # written with the tables (layers always among them), not this one
    tables = audit_tables(load(root))  # saved before the tables existed
    return meta, tables.get(table)


def _audits_row(meta: dict[str, Any]) -> dict[str, Any]:
    """One row of ``catalog(..., table="audits")``: the summary, then every option as JSON
    text (options may differ in type between runs: ``positions`` is "last" or [0, -1])."""
    row = dict(meta.get("summary") or {})
    options = (meta.get("audit") or {}).get("options") or {}
    for key in sorted(options):
        row[f"option_{key}"] = _option_text(options[key])
    return row


def catalog(
    paths_or_glob: Any, table: str = "layers", *, labels: list[str] | None = None
) -> pd.DataFrame:
    """One long DataFrame of a table of many saved audits.

    ``paths_or_glob``: a saved audit folder, a folder holding saved audits (an
    ``AuditCallback`` run's ``hopaudit/``), a glob (``"runs/*/hopaudit/step-*"``) or a list of
    these. ``table``: ``"layers"`` (one row per layer per audit), ``"samples"`` (one row per
    sequence), ``"membership"`` (audits without it contribute no rows), or ``"audits"`` (one
    row per audit: its summary and its options as JSON text). Every row starts with
    :data:`ID_COLUMNS`: ``audit`` (the folder), ``model``, ``label`` (``labels`` or the folder
    name), ``step`` (the training step, or missing) and ``saved_at`` (UTC).
    """
    if table not in (*TABLES, "audits"):
        raise DataError(f"table must be one of {', '.join((*TABLES, 'audits'))}; got {table!r}")
    paths = _audit_paths(paths_or_glob)
    if labels is not None and len(labels) != len(paths):
        raise DataError(f"{len(labels)} labels for {len(paths)} audits; give one label per audit")
    frames = []
    for i, root in enumerate(paths):
        if table == "audits":
            from .persist import _read_meta

            meta = _read_meta(root)
            df: pd.DataFrame | None = pd.DataFrame([_audits_row(meta)])
        else:
            meta, df = _one_audit(root, table)
        if df is None:
            continue
        fields = meta.get("audit") or {}
        options = fields.get("options") or {}
        step = options.get("step")
        frames.append(
            with_ids(
                df,
                audit=str(root),
                model=str(fields.get("model_name")),
                label=labels[i] if labels is not None else root.name,
                step=step if isinstance(step, int) and not isinstance(step, bool) else None,
                saved_at=meta.get("saved_at"),
            )
        )
    if not frames:
        return with_ids(pd.DataFrame(), audit="", model="", label="", step=None, saved_at=None)
    return pd.concat(frames, ignore_index=True)
