"""Nearest-neighbour search over one layer's stored patterns: one interface, three backends.

Every backend (:class:`NeighborIndex`) answers ``query(x, k)`` with ids (int64) and *true* L2
distances (float32, not squared), ascending:

- ``"exact"`` (:mod:`hopaudit.search.exact`): brute force with torch, exact;
- ``"clustered"`` (:mod:`hopaudit.search.clustered`): k-means lists, its recall measured on the
  layer;
- ``"hnsw"`` (:mod:`hopaudit.search.hnsw`): hnswlib's graph on the CPU.

This module picks one (:func:`build_index`), searches a layer against itself
(:func:`knn_self`, which excludes each pattern's own match *by id*, so exact duplicates count
as distance 0 instead of disappearing), and saves and loads indexes (:class:`LazyIndex`).
"""

from __future__ import annotations

import os
import shutil
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from hopaudit.errors import SearchError
from hopaudit.search.clustered import CALIBRATION_SAMPLE, ClusteredIndex, recall_by_distance
from hopaudit.search.exact import BF16_DOT_ERROR, EXACT_TILES, ExactIndex
from hopaudit.search.hnsw import (
    DEFAULT_EF,
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_M,
    HnswIndex,
    default_threads,
)
from hopaudit.search.hnsw_file import check_hnsw_file
from hopaudit.search.rows import Progress, as_2d

__all__ = [
    "AUTO_EXACT_MAX",
    "BF16_DOT_ERROR",
    "DEFAULT_EF",
    "DEFAULT_EF_CONSTRUCTION",
    "DEFAULT_M",
    "EXACT_TILES",
    "INDEX_KINDS",
    "ClusteredIndex",
    "ExactIndex",
    "HnswIndex",
    "LazyIndex",
    "NeighborIndex",
    "Progress",
    "build_index",
    "default_threads",
    "graph_recall",
    "keeps_rows",
    "knn_self",
    "load_index",
    "save_index",
]

#: ``kind="auto"`` uses exact search up to this many patterns on the CPU (the clustered search
#: above): the measured crossover of their times (benchmarks/README.md, "Constants").
AUTO_EXACT_MAX = 5_500


@runtime_checkable
class NeighborIndex(Protocol):
    """What every backend offers: add patterns, query the nearest ones, report its size."""

    kind: str  # "exact", "clustered" or "hnsw"
    dim: int

    def add(self, data: np.ndarray, progress: Progress = None) -> None: ...

    def query(
        self, x: np.ndarray, k: int, progress: Progress = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def __len__(self) -> int: ...


# --------------------------------------------------------------------------- public API


def keeps_rows(index: object) -> bool:
    """Whether the index holds its own copy of the patterns and searches them itself
    (``query_stored``: exact and clustered), so the caller need not keep them."""
    return hasattr(index, "query_stored")


#: The index kinds :func:`build_index` takes.
INDEX_KINDS = ("auto", "hnsw", "exact", "clustered")


def _resolve_kind(kind: str, n: int, device: object) -> str:
    if kind not in INDEX_KINDS:
        raise SearchError(
            f"index kind must be one of {', '.join(map(repr, INDEX_KINDS))}; got {kind!r}."
        )
    if kind != "auto":
        return kind
    if device is not None and str(device).startswith("cuda"):
        return "exact"
    return "exact" if n <= AUTO_EXACT_MAX else "clustered"


def build_index(
    data: np.ndarray,
    kind: str = "auto",
    *,
    device: object = None,
    M: int = DEFAULT_M,
    ef_construction: int = DEFAULT_EF_CONSTRUCTION,
    ef: int | None = None,
    threads: int | None = None,
    progress: Progress = None,
    adopt: bool = False,
) -> NeighborIndex:
    """Index the rows of ``data`` (n, dim; any float dtype, memmaps welcome) for L2 search.

    ``kind="auto"`` picks exact search on a CUDA device or for at most ``AUTO_EXACT_MAX``
    patterns, the clustered search otherwise (faster than HNSW at every size measured, with
    its recall measured on the layer: benchmarks/README.md); ``"hnsw"`` stays available.
    ``M``, ``ef_construction``, ``ef`` (query-time candidate list,
    default ``DEFAULT_EF``) and ``threads`` (default: the CPUs this process may use) are
    HNSW parameters; ``device`` is the torch device of the exact backend. Ids are row numbers.
    ``progress(rows)`` is called as the rows go in. ``adopt=True`` lets an exact or clustered
    index keep ``data`` itself (a float32 array the caller no longer reads: it is centred in
    place).
    """
    arr = as_2d(data, "patterns")
    n, dim = arr.shape
    if n < 2:
        raise SearchError(
            f"need at least 2 patterns to search for nearest other patterns; got {n}."
        )
    if dim < 1:
        raise SearchError("patterns have dimension 0; nothing to search.")
    chosen = _resolve_kind(kind, n, device)
    if chosen == "exact":
        index = ExactIndex(dim, device=device)
        index.add(arr, progress=progress, adopt=adopt)
        return index
    if chosen == "clustered":
        index = ClusteredIndex(dim, device=device)
        index.add(arr, progress=progress, adopt=adopt)
        return index
    index = HnswIndex(
        dim, max_elements=n, M=M, ef_construction=ef_construction, ef=ef, threads=threads
    )
    index.add(arr, progress=progress)
    return index


def knn_self(
    index: NeighborIndex, data: np.ndarray | None, k: int, progress: Progress = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest *other* stored patterns of every stored pattern: (n, k) ids, distances.

    ``data`` must be the indexed set itself, in the same order; an exact index searches its
    own rows (:meth:`ExactIndex.query_stored`, the same results), so there ``data`` may be
    None (the caller need not keep the patterns). Each row is queried with ``k + 1``; the
    entry whose id is the row's own is dropped (else the last one), so an exact duplicate of a
    pattern comes back at distance 0 rather than being mistaken for itself.
    ``progress(rows)`` is called as the rows are searched.
    """
    n = len(index)
    own_rows = keeps_rows(index)
    if data is None and not own_rows:
        raise SearchError(
            "knn_self needs the indexed patterns (data=None: an exact or clustered index only)"
        )
    arr = None if data is None else as_2d(data, "patterns")
    if arr is not None and arr.shape[0] != n:
        raise SearchError(
            f"knn_self needs the indexed patterns themselves: the index holds {n} rows, "
            f"data has {arr.shape[0]}."
        )
    if int(k) != k or k < 1:
        raise SearchError(f"k must be a positive integer; got {k!r}.")
    k = int(k)
    if k >= n:
        raise SearchError(
            f"k={k} nearest other patterns requested but there are only {n} patterns; "
            f"use k <= {n - 1}."
        )
    if own_rows:  # its own rows: the same queries, no second read
        ids, dists = index.query_stored(k + 1, progress=progress)
    else:
        ids, dists = index.query(arr, k + 1, progress=progress)  # type: ignore[arg-type]
    own = ids == np.arange(n, dtype=np.int64)[:, None]
    has_own = own.any(axis=1)
    drop = np.where(has_own, own.argmax(axis=1), k)
    keep = np.ones_like(own)
    keep[np.arange(n), drop] = False
    return ids[keep].reshape(n, k), dists[keep].reshape(n, k)


def graph_recall(
    data: np.ndarray, dists: np.ndarray, *, sample: int = CALIBRATION_SAMPLE, seed: int = 0
) -> tuple[float, float]:
    """recall@1 and recall@k of a self-search (``dists``, (n, k), from :func:`knn_self` on
    ``data``) on a seeded sample of rows searched exactly, each row's own match left out by id
    as :func:`knn_self` leaves it out; by distance (ties interchangeable)."""
    import torch

    arr = as_2d(data, "patterns")
    n, k = dists.shape
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False))
    exact = ExactIndex.wrapping(torch.from_numpy(np.ascontiguousarray(arr, np.float32)))
    ids, d = exact.query(arr[rows], k + 1)
    own = ids == rows[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones_like(own)
    keep[np.arange(len(rows)), drop] = False
    return recall_by_distance(np.asarray(dists)[rows], d[keep].reshape(len(rows), k))


# --------------------------------------------------------------------------- saving


class LazyIndex:
    """An index on disk, opened on its first query and dropped again by :meth:`release`.

    ``opener()`` returns the real :class:`NeighborIndex` (an HNSW file read back, an exact
    index rebuilt from the stored activations). ``kind``, ``dim`` and ``len`` are known
    without opening it, so an audit can list its layers while holding one index at a time.
    ``file`` is the HNSW file the opener reads (None for an exact index), ``meta`` the
    :func:`save_index` metadata: saving an unopened index copies the file. ``fd``, when given,
    is a descriptor of that file held since it was verified (a loaded audit): the opener reads
    through it and saving copies from it, so a file renamed or deleted later changes nothing;
    it is closed with this object (or by :meth:`pin`).
    """

    def __init__(
        self,
        meta: dict,
        opener: Callable[[], NeighborIndex],
        file: Path | None = None,
        fd: int | None = None,
    ) -> None:
        self.meta = dict(meta)
        self.kind = str(meta["kind"])
        self.dim = int(meta["dim"])
        self._count = int(meta["count"])
        self._opener = opener
        self.file = None if file is None else Path(file)
        self._index: NeighborIndex | None = None
        self._pinned = False
        self.fd = fd
        self._closer = None if fd is None else weakref.finalize(self, os.close, fd)

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        state = "pinned" if self._pinned else "open" if self._index is not None else "on disk"
        return f"LazyIndex({self.kind}, len={self._count}, dim={self.dim}, {state})"

    @property
    def loaded(self) -> bool:
        return self._index is not None

    def open(self) -> NeighborIndex:
        """The real index, opened now if it is not yet."""
        if self._index is None:
            self._index = self._opener()
        return self._index

    def release(self) -> None:
        """Drop the opened index (the next query opens it again), unless it is pinned."""
        if not self._pinned:
            self._index = None

    def pin(self) -> None:
        """Open the index and keep it in memory from now on, its file no longer read (for a
        caller about to delete the file); saving writes the index in memory."""
        self.open()
        self._pinned, self.file = True, None
        if self._closer is not None:
            self._closer()
            self.fd = self._closer = None

    def add(self, data: np.ndarray, progress: Progress = None) -> None:
        self.open().add(data, progress=progress)
        self._count = len(self._index)  # type: ignore[arg-type]

    def query(
        self, x: np.ndarray, k: int, progress: Progress = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.open().query(x, k, progress=progress)


def _copy_from(fd: int, path: Path) -> None:
    """The whole file held by ``fd`` copied to ``path`` (positional reads: the descriptor's
    offset is shared with nobody and left alone)."""
    with open(path, "wb") as out:
        offset = 0
        while chunk := os.pread(fd, 16 << 20, offset):
            out.write(chunk)
            offset += len(chunk)


def save_index(index: NeighborIndex, path: Path) -> dict:
    """Write an index beside a saved audit; returns the metadata :func:`load_index` needs.

    An HNSW graph goes to ``path`` in hnswlib's own format. An exact index *is* its data, so
    nothing is written: it is rebuilt from the saved activations on load. An unopened
    :class:`LazyIndex` is copied file to file, never read into memory.
    """
    if isinstance(index, LazyIndex):
        if index.loaded:
            return save_index(index.open(), path)
        if index.kind == "hnsw" and index.fd is not None:
            _copy_from(index.fd, path)
        elif index.kind == "hnsw" and index.file is not None:
            shutil.copyfile(index.file, path)
        return dict(index.meta)
    if isinstance(index, HnswIndex):
        index._index.save_index(str(path))
        return {
            "kind": "hnsw",
            "dim": index.dim,
            "count": index._count,
            "M": index.M,
            "ef_construction": index.ef_construction,
            "ef": index.ef,
            "center": None if index._center is None else index._center.tolist(),
        }
    if isinstance(index, ExactIndex):
        return {"kind": "exact", "dim": index.dim, "count": index._count}
    if getattr(index, "kind", None) == "clustered":  # rebuilt from the patterns, seeded
        return {
            "kind": "clustered",
            "dim": index.dim,
            "count": len(index),
            "lists": index.lists,
            "probes": index.probes,
            "seed": index.seed,
            "recall": index.recall,
        }
    raise SearchError(f"cannot save an index of type {type(index).__name__}")


def load_index(meta: dict, path: Path, *, patterns) -> NeighborIndex:
    """Rebuild a saved index; ``patterns()`` returns the normalized patterns of an exact one.
    An HNSW file is checked (:func:`~hopaudit.search.hnsw_file.check_hnsw_file`) before
    hnswlib reads it: a crafted one is a SearchError naming it, never a crash."""
    kind = meta.get("kind")
    if kind == "exact":
        index = ExactIndex(int(meta["dim"]))
        index.add(patterns())
        return index
    if kind == "clustered":
        index = ClusteredIndex(
            int(meta["dim"]), lists=meta.get("lists"), probes=meta.get("probes"),
            seed=int(meta.get("seed", 0)),
        )  # fmt: skip
        index.add(patterns())
        index.recall = meta.get("recall")
        return index
    if kind != "hnsw":
        raise SearchError(f"{path}: unknown index kind {kind!r}")
    import hnswlib

    index = HnswIndex.__new__(HnswIndex)
    index.dim, index.M = int(meta["dim"]), int(meta["M"])
    index.ef_construction, index.ef = int(meta["ef_construction"]), meta["ef"]
    index.threads = default_threads()
    index._count = int(meta["count"])
    center = meta.get("center")
    index._center = None if center is None else np.asarray(center, dtype=np.float64)
    check_hnsw_file(Path(path), dim=index.dim, m=index.M, count=index._count)
    index._index = hnswlib.Index(space="l2", dim=index.dim)
    try:
        index._index.load_index(str(path), max_elements=max(index._count, 1))
    except RuntimeError as exc:
        raise SearchError(f"{path}: damaged HNSW index ({exc})") from None
    if index._index.get_current_count() != index._count:
        raise SearchError(
            f"{path}: holds {index._index.get_current_count()} patterns, expected {index._count}"
        )
    index._index.set_num_threads(index.threads)
    return index
