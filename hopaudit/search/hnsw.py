"""HNSW search with hnswlib: float32 chunks in, true L2 distances out."""

from __future__ import annotations

import numpy as np

from hopaudit.cpus import usable_cpus
from hopaudit.errors import SearchError
from hopaudit.search.hugepages import huge_pages
from hopaudit.search.rows import (
    Progress,
    as_2d,
    check_query,
    chunk_rows,
    column_mean,
    float32_chunks,
)

__all__ = ["DEFAULT_EF", "DEFAULT_EF_CONSTRUCTION", "DEFAULT_M", "HnswIndex", "default_threads"]

#: Default query-time ``ef`` of the HNSW backend (raised to ``k + 1`` when needed): the smallest
#: that reached recall@1 = 1 on clustered data, a margin for real activations
#: (benchmarks/README.md, "Constants").
DEFAULT_EF = 64
#: HNSW's graph degree and build-time candidate list: at 1e5 patterns the fastest build and
#: search with recall@1 >= 0.995 on synthetic and real activations, a margin for larger
#: layers (``benchmarks/hnsw_params.py``; benchmarks/README.md, "Constants").
DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 100


def default_threads() -> int:
    """The CPUs this process may run on (affinity and cgroup quota, unlike ``os.cpu_count``)."""
    return usable_cpus()


class HnswIndex:
    """hnswlib HNSW graph (space ``l2``) with chunked float32 input and true-L2 output."""

    kind = "hnsw"

    def __init__(
        self,
        dim: int,
        *,
        max_elements: int,
        M: int = DEFAULT_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef: int | None = None,
        threads: int | None = None,
        seed: int = 100,
    ) -> None:
        import hnswlib

        self.dim = int(dim)
        self.M = int(M)
        self.ef_construction = int(ef_construction)
        self.ef = ef
        self.threads = int(threads) if threads else default_threads()
        self._index = hnswlib.Index(space="l2", dim=self.dim)
        rows = max(int(max_elements), 1)
        # hnswlib's level-0 block: each row's vector, 2 M links, their count and its label
        with huge_pages(rows * (4 * self.dim + 8 * self.M + 12)):
            self._index.init_index(
                max_elements=rows,
                M=self.M,
                ef_construction=self.ef_construction,
                random_seed=int(seed),
            )
        self._index.set_num_threads(self.threads)
        self._count = 0
        self._center: np.ndarray | None = None  # float64 (dim,): mean of the first batch

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"HnswIndex(len={self._count}, dim={self.dim}, M={self.M}, threads={self.threads})"

    def add(self, data: np.ndarray, progress: Progress = None) -> None:
        """Append patterns (ids continue from the current size), fed as float32 chunks;
        ``progress(rows)`` after each chunk."""
        arr = as_2d(data, "patterns")
        if arr.shape[1] != self.dim:
            raise SearchError(
                f"patterns have dimension {arr.shape[1]}; this index holds dimension {self.dim}."
            )
        need = self._count + arr.shape[0]
        if need > self._index.get_max_elements():
            self._index.resize_index(need)
        rows = chunk_rows(self.dim, minimum=8 * self.threads)
        if self._center is None:
            # Coordinates are shifted by the stored set's mean before the float32 cast, so
            # patterns far from the origin keep their small differences.
            self._center = column_mean(arr, rows, "patterns")
        for start, chunk in float32_chunks(arr, rows, "patterns", self._center):
            ids = np.arange(self._count + start, self._count + start + chunk.shape[0])
            self._index.add_items(chunk, ids, num_threads=self.threads)
            if progress is not None:
                progress(chunk.shape[0])
        self._count = need

    def query(
        self, x: np.ndarray, k: int, progress: Progress = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest stored patterns of each row of ``x``: (ids int64, L2 float32);
        ``progress(rows)`` after each chunk of queries."""
        arr = check_query(self, x, k)
        k = int(k)
        m = arr.shape[0]
        ids = np.empty((m, k), dtype=np.int64)
        dists = np.empty((m, k), dtype=np.float32)
        ef = max(self.ef or DEFAULT_EF, k + 1)
        # More than 4 x threads rows per call, or hnswlib runs the batch on one thread.
        rows = chunk_rows(self.dim, minimum=4 * self.threads + 1)
        for start, chunk in float32_chunks(arr, rows, "queries", self._center):
            labels, sq = self._knn(chunk, k, ef)
            stop = start + chunk.shape[0]
            ids[start:stop] = labels.astype(np.int64, copy=False)
            np.sqrt(np.maximum(sq, 0.0, out=sq), out=dists[start:stop])
            if progress is not None:
                progress(chunk.shape[0])
        return ids, dists

    def _knn(self, chunk: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        # hnswlib refuses to return fewer than k results (a sparse graph at small ef); retry
        # with a larger candidate list before giving up.
        while True:
            self._index.set_ef(ef)
            try:
                return self._index.knn_query(chunk, k=k, num_threads=self.threads)
            except RuntimeError as exc:
                if ef >= self._count:
                    raise SearchError(
                        f"hnswlib could not return {k} neighbours ({exc}); use kind='exact'."
                    ) from exc
                ef = min(2 * ef, self._count)
