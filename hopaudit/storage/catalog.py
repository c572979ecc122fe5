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
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from hopaudit.errors import DataError
from hopaudit.storage.folder import Folder, read_whole
from hopaudit.storage.load import load
from hopaudit.storage.manifest import read_listed, read_manifest, read_meta
from hopaudit.storage.tables import (
    TABLES,
    audit_tables,
    option_text,
    read_parquet,
    with_ids,
)

__all__ = ["catalog"]


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


def _one_audit(root: Path, table: str) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """(audit.json's metadata, the table or None when this audit has no such table), both
    read through one descriptor of the folder (a concurrent save never mixes two audits)."""

    def read(folder: Folder) -> tuple[dict[str, Any], pd.DataFrame | None, bool]:
        io = folder.io
        meta = read_meta(io)
        if table == "audits":
            return meta, pd.DataFrame([_audits_row(meta)]), False
        manifest = read_manifest(meta, io / "audit.json")
        rel = f"{table}.parquet"
        if rel in manifest:
            return meta, read_parquet(read_listed(io, rel, manifest), io / rel), False
        # written with the tables (layers always among them) but not this one, or not at all
        return meta, None, "layers.parquet" not in manifest

    meta, df, old = read_whole(root, read)
    if old:  # saved before the tables existed
        df = audit_tables(load(root)).get(table)
    return meta, df


def _audits_row(meta: dict[str, Any]) -> dict[str, Any]:
    """One row of ``catalog(..., table="audits")``: the summary, then every option as JSON
    text (options may differ in type between runs: ``positions`` is "last" or [0, -1])."""
    row = dict(meta.get("summary") or {})
    options = (meta.get("audit") or {}).get("options") or {}
    for key in sorted(options):
        row[f"option_{key}"] = option_text(options[key])
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
