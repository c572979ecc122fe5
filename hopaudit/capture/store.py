"""Per-layer activation store: rows arrive batch by batch, each layer reads back as one array.

In RAM the chunks of each layer are kept in a list and concatenated once at :meth:`finalize`.
With a ``path`` every layer streams to its own raw file (opened in append mode, written as rows
arrive), so a capture larger than RAM works; :meth:`get` then returns a read-only
``np.memmap``. A small ``meta.json`` (format, dtype, layer names, files, shapes) is written when
the store is created and again at :meth:`finalize`, so a finished store directory can be
reopened with :meth:`ActivationStore.open`.

Files are named by layer index (``layer_000.f16``), never by layer name, so names such as
``model.layers.3`` or ``final`` need no escaping; the names live in ``meta.json``.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import numpy as np

from hopaudit.errors import DataError, FormatError
from hopaudit.storage.atomic import write_text

FORMAT_NAME = "hopaudit-activation-store"
FORMAT_VERSION = 1
META_FILE = "meta.json"

_SUFFIX = {"float16": "f16", "float32": "f32", "float64": "f64"}


def normalize_dtype(dtype: Any) -> np.dtype:
    """numpy dtype of a storage dtype given as numpy dtype, torch dtype or name ("float16")."""
    torch = sys.modules.get("torch")  # a torch dtype exists only once torch is imported
    if torch is not None and isinstance(dtype, torch.dtype):
        dtype = str(dtype).replace("torch.", "")
    if isinstance(dtype, str):
        dtype = {"half": "float16", "float": "float32", "double": "float64"}.get(dtype, dtype)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in _SUFFIX:
        raise DataError(
            f"storage dtype {dtype!r} is not supported; use float16 (default, half the disk), "
            "float32 or float64"
        )
    return dt


class ActivationStore:
    """Rows of activations per layer, in RAM or memory-mapped from one raw file per layer.

    ``append(layer, rows)`` while capturing, ``finalize()`` once, then ``get(layer)`` returns the
    (n_rows, hidden) array. ``path=None`` keeps everything in RAM. A ``path`` must be a missing
    or empty directory, or a previous store directory (it is replaced).
    """

    def __init__(self, layer_names: list[str], dtype: Any = np.float16, path: Any = None):
        names = [str(n) for n in layer_names]
        if not names:
            raise DataError("an activation store needs at least one layer name")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DataError(f"layer names must be unique; repeated: {dupes}")
        self.layer_names: list[str] = names
        self.dtype: np.dtype = normalize_dtype(dtype)
        self.path: Path | None = None if path is None else Path(path)
        self._index = {n: i for i, n in enumerate(names)}
        self._hidden: dict[str, int | None] = {n: None for n in names}
        self._rows: dict[str, int] = {n: 0 for n in names}
        self._chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
        self._arrays: dict[str, np.ndarray] = {}
        self._files: dict[str, Any] = {}
        self._finalized = False
        self._created_dir = False
        if self.path is not None:
            self._prepare_dir()
            self._write_meta(complete=False)

    # ----------------------------------------------------------------- construction helpers
    def _filename(self, layer: str) -> str:
        return f"layer_{self._index[layer]:03d}.{_SUFFIX[self.dtype.name]}"

    def _prepare_dir(self) -> None:
        path = self.path
        assert path is not None
        if path.is_symlink():
            raise FormatError(
                f"store path {str(path)!r} is a symbolic link; give a real directory (the "
                "store never writes or deletes through a link)"
            )
        if path.exists() and not path.is_dir():
            raise FormatError(
                f"store path {str(path)!r} is a file; give a new or empty directory for the "
                "memory-mapped activations"
            )
        if path.is_dir():
            entries = list(path.iterdir())
            if entries:
                old = _read_meta(path) if (path / META_FILE).is_file() else None
                if old is None:
                    raise FormatError(
                        f"store path {str(path)!r} is a non-empty directory that is not an "
                        "activation store; give a new or empty directory so nothing of yours "
                        "is overwritten"
                    )
                strangers = _foreign_entries(path, old)
                if strangers:
                    raise FormatError(
                        f"store path {str(path)!r} holds a previous activation store plus other "
                        f"files ({strangers[:5]}); give a new or empty directory"
                    )
                _remove_store(path, old)  # replace the previous store
        else:
            path.mkdir(parents=True)
            self._created_dir = True

    def _write_meta(self, complete: bool) -> None:
        assert self.path is not None
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "dtype": self.dtype.name,
            "complete": complete,
            "layers": [
                {
                    "name": n,
                    "file": self._filename(n),
                    "rows": self._rows[n],
                    "hidden": self._hidden[n],
                }
                for n in self.layer_names
            ],
        }
        write_text(self.path / META_FILE, json.dumps(meta, indent=1))

    # ------------------------------------------------------------------------------ writing
    def append(self, layer: str, rows: np.ndarray, *, copy: bool = True) -> None:
        """Add rows (m, hidden) to a layer, cast to the store's dtype.

        In RAM the rows are copied unless ``copy=False`` (the caller hands over a fresh array
        it will not touch again, as :func:`hopaudit.capture.capture` does).
        """
        if self._finalized:
            raise DataError(
                "this activation store is finalized (read-only); create a new store to capture "
                "again"
            )
        if layer not in self._index:
            raise DataError(f"unknown layer {layer!r}; this store holds {self.layer_names}")
        arr = np.asarray(rows)
        if arr.ndim != 2:
            raise DataError(
                f"rows for layer {layer!r} must be 2-D (rows, hidden); got shape {arr.shape}"
            )
        hidden = self._hidden[layer]
        if hidden is None:
            self._hidden[layer] = int(arr.shape[1])
        elif arr.shape[1] != hidden:
            raise DataError(
                f"layer {layer!r} has hidden size {hidden} but these rows have {arr.shape[1]}; "
                "every append to one layer must have the same width"
            )
        if arr.shape[0] == 0:
            return
        with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf, counted by capture
            out = np.ascontiguousarray(arr, dtype=self.dtype)
        if self.path is None:
            if copy and (out is arr or out.base is not None):
                out = out.copy()  # the caller may reuse its buffer
            self._chunks[layer].append(out)
        else:
            f = self._files.get(layer)
            if f is None:
                # created exclusively: a file (or link) planted at this name is refused
                fd = os.open(
                    self.path / self._filename(layer),
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                    0o666,
                )
                f = os.fdopen(fd, "wb")
                self._files[layer] = f
            f.write(out.data)
        self._rows[layer] += int(out.shape[0])

    def truncate(self, layer: str, rows: int) -> None:
        """Drop what was appended to ``layer`` after it held ``rows`` rows (a batch that runs
        again, :func:`hopaudit.capture.capture`); only whole appends, before :meth:`finalize`."""
        if self._finalized:
            raise DataError("this activation store is finalized (read-only)")
        if layer not in self._index:
            raise DataError(f"unknown layer {layer!r}; this store holds {self.layer_names}")
        if not 0 <= rows <= self._rows[layer]:
            raise DataError(f"layer {layer!r} holds {self._rows[layer]} rows, not {rows} or more")
        if self.path is None:
            chunks = self._chunks[layer]
            keep, total = len(chunks), self._rows[layer]
            while keep and total - len(chunks[keep - 1]) >= rows:
                keep -= 1
                total -= len(chunks[keep])
            if total != rows:
                raise DataError(f"layer {layer!r} cannot be cut within an append, at row {rows}")
            del chunks[keep:]
            self._rows[layer] = rows
            return
        f = self._files.get(layer)
        if f is not None:
            f.flush()
            size = rows * int(self._hidden[layer] or 0) * self.dtype.itemsize
            f.truncate(size)
            f.seek(size)
        self._rows[layer] = rows

    def finalize(self) -> None:
        """Flush and close the files (or join the chunks) and switch to read mode."""
        if self._finalized:
            return
        if self.path is None:
            for n in self.layer_names:
                chunks = self._chunks[n]
                hidden = self._hidden[n] or 0
                if len(chunks) == 1:
                    arr = chunks[0]
                elif chunks:
                    arr = np.concatenate(chunks, axis=0)
                else:
                    arr = np.empty((0, hidden), dtype=self.dtype)
                arr.setflags(write=False)
                self._arrays[n] = arr
                self._chunks[n] = []
        else:
            self._close_files()
            self._write_meta(complete=True)
        self._finalized = True

    def _close_files(self) -> None:
        files, self._files = self._files, {}
        for f in files.values():
            f.close()

    def discard(self) -> None:
        """Drop everything written (used when a capture fails): files, meta, and the directory
        when this store created it."""
        self._close_files()
        self._chunks = {n: [] for n in self.layer_names}
        self._arrays = {}
        if self.path is not None and self.path.is_dir() and not self.path.is_symlink():
            # unlink() removes a link itself, never what it points to
            for n in self.layer_names:
                (self.path / self._filename(n)).unlink(missing_ok=True)
            (self.path / META_FILE).unlink(missing_ok=True)
            if self._created_dir and not any(self.path.iterdir()):
                self.path.rmdir()
        self._rows = {n: 0 for n in self.layer_names}
        self._finalized = True

    # ------------------------------------------------------------------------------ reading
    @property
    def finalized(self) -> bool:
        return self._finalized

    def shape(self, layer: str) -> tuple[int, int]:
        """(n_rows, hidden) of a layer, also while capturing (hidden 0 before any row)."""
        if layer not in self._index:
            raise DataError(f"unknown layer {layer!r}; this store holds {self.layer_names}")
        return self._rows[layer], self._hidden[layer] or 0

    @property
    def nbytes(self) -> int:
        """Bytes of all stored rows (on disk when memory-mapped)."""
        rows = sum(self._rows[n] * (self._hidden[n] or 0) for n in self.layer_names)
        return rows * self.dtype.itemsize

    def get(self, layer: str) -> np.ndarray:
        """The (n_rows, hidden) array of a layer: read-only, a ``np.memmap`` when on disk."""
        if not self._finalized:
            raise DataError("call finalize() on the activation store before reading it")
        if layer not in self._index:
            raise DataError(f"unknown layer {layer!r}; this store holds {self.layer_names}")
        if self.path is None:
            return self._arrays[layer]
        arr = self._arrays.get(layer)
        if arr is None:
            rows, hidden = self._rows[layer], self._hidden[layer] or 0
            file = self.path / self._filename(layer)
            if rows == 0:
                arr = np.empty((0, hidden), dtype=self.dtype)
            else:
                expected = rows * hidden * self.dtype.itemsize
                size = file.stat().st_size if file.is_file() else -1
                if size != expected:
                    raise FormatError(
                        f"activation file {str(file)!r} has {size} bytes, meta.json says "
                        f"{expected} ({rows} x {hidden} {self.dtype.name}); the store is damaged,"
                        " capture again"
                    )
                arr = np.memmap(file, dtype=self.dtype, mode="r", shape=(rows, hidden))
            self._arrays[layer] = arr
        return arr

    def release(self, layer: str) -> None:
        """Unmap a layer read from disk, so its pages leave this process's resident set (an
        audit measures one layer at a time); the next :meth:`get` maps it again. No-op in RAM."""
        if self.path is not None:
            self._arrays.pop(layer, None)

    def __contains__(self, layer: object) -> bool:
        return layer in self._index

    def __len__(self) -> int:
        return len(self.layer_names)

    def __repr__(self) -> str:
        where = "RAM" if self.path is None else str(self.path)
        return (
            f"ActivationStore({len(self.layer_names)} layers, {self.dtype.name}, {where}, "
            f"{self.nbytes / 2**20:.1f} MiB{'' if self._finalized else ', writing'})"
        )

    @property
    def meta(self) -> dict[str, Any]:
        """Format, dtype and per-layer shapes (what ``meta.json`` holds)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "dtype": self.dtype.name,
            "complete": self._finalized,
            "layers": [
                {"name": n, "file": self._filename(n), "rows": self._rows[n], "hidden": h}
                for n, h in self._hidden.items()
            ],
        }

    @classmethod
    def open(cls, path: Any) -> ActivationStore:
        """Reopen a finished store directory (read-only, memory-mapped)."""
        path = Path(path)
        if not path.is_dir():
            raise FormatError(f"no activation store at {str(path)!r}: not a directory")
        if not (path / META_FILE).is_file():
            raise FormatError(f"no activation store at {str(path)!r}: {META_FILE} is missing")
        meta = _read_meta(path)
        if not meta.get("complete"):
            raise FormatError(
                f"the activation store at {str(path)!r} was never finalized (the capture did "
                "not finish); capture again"
            )
        store = cls.__new__(cls)
        store.layer_names = [e["name"] for e in meta["layers"]]
        store.dtype = normalize_dtype(meta["dtype"])
        store.path = path
        store._index = {n: i for i, n in enumerate(store.layer_names)}
        store._hidden = {e["name"]: e["hidden"] for e in meta["layers"]}
        store._rows = {e["name"]: int(e["rows"]) for e in meta["layers"]}
        store._chunks = {n: [] for n in store.layer_names}
        store._arrays = {}
        store._files = {}
        store._finalized = True
        store._created_dir = False
        for n, e in zip(store.layer_names, meta["layers"], strict=True):
            if e["file"] != store._filename(n):
                raise FormatError(f"{path / META_FILE} names an unexpected file {e['file']!r}")
        return store


def _read_meta(path: Path) -> dict[str, Any]:
    file = path / META_FILE
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise FormatError(f"{str(file)!r} is not readable JSON ({e}); the store is damaged") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise FormatError(f"{str(file)!r} is not a hopaudit activation store")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise FormatError(
            f"{str(file)!r} was written by a newer hopaudit (format version "
            f"{meta['version']}); upgrade hopaudit to read it"
        )
    layers = meta.get("layers")
    if not isinstance(layers, list) or not all(
        isinstance(e, dict) and {"name", "file", "rows", "hidden"} <= e.keys() for e in layers
    ):
        raise FormatError(f"{str(file)!r} has no valid layer list; the store is damaged")
    return meta


def _foreign_entries(path: Path, meta: dict[str, Any]) -> list[str]:
    """Entries of a previous store directory that are not part of it (nested stores, such as
    the ``heldout`` store :func:`hopaudit.audit` writes inside the main one, are part of it)."""
    known = {META_FILE} | {e["file"] for e in meta["layers"]}
    foreign = []
    for e in path.iterdir():
        mode = os.lstat(e).st_mode  # a link is foreign: never followed, never deleted
        if stat.S_ISREG(mode) and (e.name in known or _is_meta_temp(e.name)):
            continue
        if stat.S_ISDIR(mode) and (e / META_FILE).is_file():
            try:
                inner = _read_meta(e)
            except FormatError:
                foreign.append(e.name)
                continue
            foreign += [f"{e.name}/{x}" for x in _foreign_entries(e, inner)]
            continue
        foreign.append(e.name)
    return sorted(foreign)


def _is_meta_temp(name: str) -> bool:
    """A temporary meta.json a killed process left (hopaudit.atomic's naming)."""
    return name.startswith(f".{META_FILE}.tmp-")


def _remove_store(path: Path, meta: dict[str, Any]) -> None:
    """Delete a previous store checked by :func:`_foreign_entries` (its files and nested
    stores); links are unlinked as links, never followed."""
    for e in path.iterdir():
        if stat.S_ISDIR(os.lstat(e).st_mode):
            _remove_store(e, _read_meta(e))
            e.rmdir()
        else:
            e.unlink()
