"""Each measured layer's index and kNN graph on disk, opened on demand.

:func:`hopaudit.audit` measures one layer at a time; with a ``store`` it moves each layer's
index and graph into a folder beside the store (``<store>.layers/``) before the next layer is
measured, so only one layer's vectors, index and graph are in memory at once. What stays in the
:class:`~hopaudit.measure.LayerReport` is a :class:`~hopaudit.search.LazyIndex` (the HNSW file
read back, or an exact index rebuilt from the store, on its first query) and the graph as
read-only memory maps of ``.npy`` files.

Files::

    layer_NNN.ids.npy    (n, k + 1) int32 neighbour ids (int64 beyond 2**31 - 1 patterns)
    layer_NNN.dists.npy  (n, k + 1) float32 distances (float16 when asked: half the disk)
    layer_NNN.bin        the HNSW index in hnswlib's format (none for an exact index)

Every file is written to a temporary sibling and renamed; :meth:`LayerFiles.discard` deletes
only the files this object wrote, and the folder when it created it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hopaudit.errors import FormatError
from hopaudit.search.backends import HnswIndex, LazyIndex, NeighborIndex, load_index, save_index
from hopaudit.storage.atomic import fsync_dir

__all__ = ["GRAPH_DIST_DTYPES", "LayerFiles", "compact_graph", "layer_files_path"]

GRAPH_DIST_DTYPES = ("float32", "float16")
_INT32_MAX = np.iinfo(np.int32).max


def layer_files_path(store: str | os.PathLike[str]) -> Path:
    """Where the index and graph files of an audit with ``store=PATH`` go: beside the store."""
    p = Path(store)
    return p.with_name(p.name + ".layers")


def compact_graph(
    ids: np.ndarray, dists: np.ndarray, dist_dtype: str = "float32"
) -> tuple[np.ndarray, np.ndarray]:
    """int32 ids where every id fits, distances in ``dist_dtype`` (float32 or float16)."""
    if dist_dtype not in GRAPH_DIST_DTYPES:
        raise FormatError(f"graph distances must be one of {GRAPH_DIST_DTYPES}, got {dist_dtype!r}")
    ids = np.asarray(ids)
    if ids.size == 0 or int(ids.max()) <= _INT32_MAX:
        ids = ids.astype(np.int32, copy=False)
    return ids, np.asarray(dists).astype(dist_dtype, copy=False)


class LayerFiles:
    """A folder of per-layer derived data (indexes and kNN graphs) of one audit."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._created = False
        self._written: list[Path] = []
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_dir()):
            raise FormatError(
                f"{str(self.path)!r} is not a folder; hopaudit keeps each layer's index and "
                "graph there. Remove it or give the audit another store path"
            )
        if self.path.is_dir():
            strangers = [e.name for e in self.path.iterdir() if not _ours(e.name)]
            if strangers:
                raise FormatError(
                    f"{str(self.path)!r} holds files hopaudit did not write ({strangers[:5]}); "
                    "it keeps each layer's index and graph there: move them or give another store"
                )
        else:
            self.path.mkdir(parents=True)
            self._created = True

    def _name(self, i: int, suffix: str) -> Path:
        return self.path / f"layer_{i:03d}.{suffix}"

    def _write(self, target: Path, writer: Any) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=self.path)
        os.close(fd)
        try:
            writer(tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._written.append(target)

    def put_graph(
        self, i: int, ids: np.ndarray, dists: np.ndarray, dist_dtype: str = "float32"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Write layer ``i``'s graph (compacted); returns read-only memory maps of it."""
        ids, dists = compact_graph(ids, dists, dist_dtype)
        out = []
        for suffix, arr in (("ids.npy", ids), ("dists.npy", dists)):
            target = self._name(i, suffix)

            def write(tmp: str, arr: np.ndarray = arr) -> None:
                with open(tmp, "wb") as handle:
                    np.save(handle, np.ascontiguousarray(arr), allow_pickle=False)

            self._write(target, write)
            out.append(np.load(target, mmap_mode="r", allow_pickle=False))
        return out[0], out[1]

    def adopt_graph(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Layer ``i``'s graph written by another process (a Ray task): read-only memory maps,
        and the files count as this object's (``discard`` deletes them)."""
        out = []
        for suffix in ("ids.npy", "dists.npy"):
            target = self._name(i, suffix)
            self._written.append(target)
            out.append(np.load(target, mmap_mode="r", allow_pickle=False))
        return out[0], out[1]

    def adopt_index(self, i: int, meta: dict, patterns: Any) -> LazyIndex:
        """Layer ``i``'s index written by another process, from its :func:`save_index` meta."""
        if meta["kind"] == "hnsw":
            target = self._name(i, "bin")
            self._written.append(target)
            return LazyIndex(meta, lambda: load_index(meta, target, patterns=None), file=target)
        return LazyIndex(meta, lambda: load_index(meta, self.path, patterns=patterns))

    def put_index(self, i: int, index: NeighborIndex, patterns: Any) -> LazyIndex:
        """Write layer ``i``'s index; returns it as a :class:`LazyIndex` opened on demand.

        An HNSW index goes to its file; an exact index is its data, so ``patterns()`` (the
        normalized patterns, read back from the store) rebuilds it when it is queried.
        """
        if isinstance(index, LazyIndex):
            return index
        if isinstance(index, HnswIndex):
            target = self._name(i, "bin")
            meta: dict[str, Any] = {}
            self._write(target, lambda tmp: meta.update(save_index(index, Path(tmp))))
            threads = index.threads

            def open_hnsw() -> NeighborIndex:
                loaded = load_index(meta, target, patterns=None)
                loaded._index.set_num_threads(threads)  # type: ignore[attr-defined]
                loaded.threads = threads  # type: ignore[attr-defined]
                return loaded

            return LazyIndex(meta, open_hnsw, file=target)
        meta = save_index(index, self.path / "unused")
        device = getattr(index, "device", None)

        def open_exact() -> NeighborIndex:
            from hopaudit.search.backends import ExactIndex

            if meta["kind"] == "clustered":  # the same lists again: seeded
                return load_index(meta, self.path, patterns=patterns)
            exact = ExactIndex(int(meta["dim"]), device=device)
            exact.add(patterns())
            return exact

        return LazyIndex(meta, open_exact)

    def finish(self) -> None:
        """Flush the folder's entries (the renames) to disk."""
        fsync_dir(self.path)

    def discard(self) -> None:
        """Delete the files this object wrote, and the folder if it created it and it is empty."""
        for f in self._written:
            f.unlink(missing_ok=True)
        self._written = []
        if self._created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def __repr__(self) -> str:
        return f"LayerFiles({str(self.path)!r}, {len(self._written)} files)"


def move_to_saved(audit: Any, root: str | os.PathLike[str]) -> None:
    """Point an audit's on-disk indexes at its saved copy (``root/indexes/``) and delete its
    ``<store>.layers/`` files: for a caller that removes the store once the audit is saved
    (hopaudit.training). The graphs stay mapped (an unlinked file stays readable)."""
    folder = audit.options.get("layer_files")
    if not folder:
        return
    root = Path(root)
    for i, name in enumerate(audit.layer_names):
        rep = audit.reports.get(name)
        index = None if rep is None else rep.index
        if isinstance(index, LazyIndex) and index.kind == "hnsw" and not index.loaded:
            meta, saved = dict(index.meta), root / "indexes" / f"layer_{i:03d}.bin"
            index.file = saved
            index._opener = lambda meta=meta, saved=saved: load_index(meta, saved, patterns=None)
    folder = Path(folder)
    if folder.is_dir() and not folder.is_symlink():
        for entry in folder.iterdir():
            if _ours(entry.name) and entry.is_file() and not entry.is_symlink():
                entry.unlink()
        if not any(folder.iterdir()):
            folder.rmdir()


def _ours(name: str) -> bool:
    """A file this module writes (or its temporary sibling left by a killed process)."""
    base = name[1:].split(".tmp-")[0] if name.startswith(".") else name
    return base.startswith("layer_") and base.endswith((".ids.npy", ".dists.npy", ".bin"))
