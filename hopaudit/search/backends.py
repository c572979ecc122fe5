"""Nearest-neighbour search over one layer's stored patterns: HNSW (hnswlib) or exact (torch).

Two backends behind one small interface (:class:`NeighborIndex`): ``query(x, k)`` returns ids
(int64) and *true* L2 distances (float32, not squared), ascending.

- ``"hnsw"``: hnswlib's graph index on the CPU. Its ``l2`` space returns squared distances and
  uint64 labels, takes float32 only, and runs a batch of at most ``4 * threads`` rows on a single
  thread; this module feeds it float32 chunks (never a float32 copy of a whole float16 memmap),
  queries in large chunks, sets the thread count explicitly and converts the outputs.
- ``"exact"``: brute force with torch on any device. Data are centred on the stored set's mean
  (distances are shift invariant; centring removes the cancellation of ``|x|^2 - 2x.y + |y|^2``
  when the patterns sit far from the origin), candidates come from a tiled float32 matmul, and
  the final ``k`` are re-ranked by direct difference norms (float64 on the CPU). ``torch.cdist``
  is never used and float16 is never used for squared norms.

:func:`knn_self` excludes each pattern's own match *by id*, so exact duplicates count as
distance 0 instead of disappearing.
"""

from __future__ import annotations

import os
import shutil
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from hopaudit.cpus import cpu_bf16_native, usable_cpus
from hopaudit.errors import SearchError
from hopaudit.search.hnsw_file import check_hnsw_file
from hopaudit.search.hugepages import huge_pages

__all__ = [
    "AUTO_EXACT_MAX",
    "BF16_DOT_ERROR",
    "DEFAULT_EF",
    "DEFAULT_EF_CONSTRUCTION",
    "DEFAULT_M",
    "EXACT_TILES",
    "INDEX_KINDS",
    "ExactIndex",
    "HnswIndex",
    "LazyIndex",
    "NeighborIndex",
    "build_index",
    "default_threads",
    "keeps_rows",
    "knn_self",
]

#: ``kind="auto"`` uses exact search up to this many patterns on the CPU (the clustered search
#: above): up to about here exact costs no more than HNSW and has no misses. The crossover
#: ``benchmarks/search.py`` prints (``exact_hnsw_crossover``), rounded down
#: (benchmarks/README.md, "Constants").
AUTO_EXACT_MAX = 35_000
#: Default query-time ``ef`` of the HNSW backend (raised to ``k + 1`` when needed): the smallest
#: that reached recall@1 = 1 on clustered data, a margin for real activations
#: (benchmarks/README.md, "Constants").
DEFAULT_EF = 64
#: HNSW's graph degree and build-time candidate list: at 1e5 patterns the fastest build and
#: search with recall@1 >= 0.995 on synthetic and real activations, a margin for larger
#: layers (``benchmarks/hnsw_params.py``; benchmarks/README.md, "Constants").
DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 100
#: Bytes of float32 handed to hnswlib or torch per chunk: bounds the temporary copies (a float64
#: one twice this size), small beside one layer at 1e5 x 576 (230 MB), thousands of rows per call.
_CHUNK_BYTES = 16 << 20
#: Elements of one (queries x stored) float32 score tile in the exact backend.
_TILE_ELEMS = 1 << 22


#: Called with the number of rows just added or queried, chunk by chunk (a progress bar's update).
Progress = Callable[[int], object] | None


@runtime_checkable
class NeighborIndex(Protocol):
    """What every backend offers: add patterns, query the nearest ones, report its size."""

    kind: str  # "hnsw" or "exact"
    dim: int

    def add(self, data: np.ndarray, progress: Progress = None) -> None: ...

    def query(
        self, x: np.ndarray, k: int, progress: Progress = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def __len__(self) -> int: ...


def default_threads() -> int:
    """The CPUs this process may run on (affinity and cgroup quota, unlike ``os.cpu_count``)."""
    return usable_cpus()


# --------------------------------------------------------------------------- input checks


def as_2d(data: object, what: str) -> np.ndarray:
    """The input as a 2-D numpy array (memmaps and float16 kept as they are, torch converted)."""
    if hasattr(data, "detach") and hasattr(data, "cpu"):  # a torch tensor
        data = data.detach().cpu().numpy()
    arr = data if isinstance(data, np.ndarray) else np.asarray(data)
    if arr.ndim != 2:
        raise SearchError(
            f"{what} must be a 2-D array (rows, dim); got shape {tuple(arr.shape)}. "
            "Reshape to one pattern per row."
        )
    if arr.dtype.kind not in "fiu":
        raise SearchError(f"{what} must hold numbers; got dtype {arr.dtype}.")
    return arr


def _chunk_rows(dim: int, minimum: int = 1) -> int:
    return max(minimum, _CHUNK_BYTES // (4 * max(dim, 1)))


def _refuse_nonfinite(chunk: np.ndarray, start: int, what: str) -> None:
    finite = np.isfinite(chunk).all(axis=1)
    if not finite.all():
        bad = start + np.flatnonzero(~finite)
        raise SearchError(
            f"{what} has rows with NaN or inf (first at row {int(bad[0])}; {bad.size} in rows "
            f"{start}..{start + chunk.shape[0] - 1}). Remove non-finite rows before searching "
            "(hopaudit.measure drops and counts them)."
        )


def _float32_chunks(
    arr: np.ndarray, rows: int, what: str, center: np.ndarray | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """(start, float32 C-contiguous chunk) pairs, optionally minus ``center`` (subtracted in
    float64 from the original values); refuses non-finite rows with their index."""
    for start in range(0, arr.shape[0], rows):
        if center is None:
            chunk = np.ascontiguousarray(arr[start : start + rows], dtype=np.float32)
        else:
            wide = np.array(arr[start : start + rows], dtype=np.float64)  # a copy: ours to edit
            wide -= center
            chunk = np.ascontiguousarray(wide, dtype=np.float32)
        _refuse_nonfinite(chunk, start, what)
        yield start, chunk


def _column_mean(arr: np.ndarray, rows: int, what: str) -> np.ndarray:
    """Float64 mean of the rows, read chunk by chunk; refuses non-finite rows."""
    total = np.zeros(arr.shape[1], dtype=np.float64)
    for start in range(0, arr.shape[0], rows):
        chunk = np.asarray(arr[start : start + rows], dtype=np.float64)
        _refuse_nonfinite(chunk, start, what)
        total += chunk.sum(axis=0)
    return total / max(arr.shape[0], 1)


def _check_query(index: NeighborIndex, x: object, k: int) -> np.ndarray:
    arr = as_2d(x, "queries")
    if arr.shape[1] != index.dim:
        raise SearchError(
            f"queries have dimension {arr.shape[1]} but the index holds patterns of dimension "
            f"{index.dim}; query with vectors from the same layer."
        )
    n = len(index)
    if int(k) != k or k < 1:
        raise SearchError(f"k must be a positive integer; got {k!r}.")
    if k > n:
        raise SearchError(
            f"k={k} neighbours requested but the index holds only {n} patterns; use k <= {n}."
        )
    return arr


# --------------------------------------------------------------------------- HNSW backend


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
        rows = _chunk_rows(self.dim, minimum=8 * self.threads)
        if self._center is None:
            # Coordinates are shifted by the stored set's mean before the float32 cast, so
            # patterns far from the origin keep their small differences.
            self._center = _column_mean(arr, rows, "patterns")
        for start, chunk in _float32_chunks(arr, rows, "patterns", self._center):
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
        arr = _check_query(self, x, k)
        k = int(k)
        m = arr.shape[0]
        ids = np.empty((m, k), dtype=np.int64)
        dists = np.empty((m, k), dtype=np.float32)
        ef = max(self.ef or DEFAULT_EF, k + 1)
        # More than 4 x threads rows per call, or hnswlib runs the batch on one thread.
        rows = _chunk_rows(self.dim, minimum=4 * self.threads + 1)
        for start, chunk in _float32_chunks(arr, rows, "queries", self._center):
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


# --------------------------------------------------------------------------- exact backend


#: Bound on |x.y - bf16(x).bf16(y) rounded to bfloat16| over |x| |y|: each input rounds by
#: at most 2^-9 relative per coordinate (2^-8 for the product), the output by 2^-9, and the
#: float32 accumulation adds far less than the 2^-12 margin (Cauchy-Schwarz gives |x| |y|).
BF16_DOT_ERROR = 2.0**-8 + 2.0**-9 + 2.0**-12


#: The exact backend's candidate tiles by default: bfloat16 where the CPU multiplies it
#: natively, else float32 (``benchmarks/search.py`` prints ``exact_bf16_speedup_<n>``, the
#: float32 time over the bfloat16 one; benchmarks/README.md).
EXACT_TILES = "auto"


def _squared_norms(data, dtype, rows: int):
    """Squared norms of the rows of a float32 tensor, summed in ``dtype`` and returned in
    float32, ``rows`` rows at a time: never a ``dtype`` copy of the whole tensor (in float64 on
    the CPU two such copies, the cast and its square, were four times the data)."""
    import torch

    out = torch.empty(data.shape[0], dtype=torch.float32, device=data.device)
    for start in range(0, data.shape[0], rows):
        part = data[start : start + rows].to(dtype)
        out[start : start + rows] = (part**2).sum(dim=1).to(torch.float32)
    return out


class ExactIndex:
    """Brute-force search with torch: centred data, tiled matmul for candidates, exact re-rank.

    ``tiles="bfloat16"`` scores the candidates with bfloat16 matrix tiles (``"auto"``: where
    the CPU multiplies bfloat16 natively, see :func:`hopaudit.cpus.cpu_bf16_native`;
    the default is ``EXACT_TILES``); a
    query's candidates are then certified: every stored pattern left out must score, by
    ``BF16_DOT_ERROR``, worse than the k-th exact distance among those kept, and a query
    that is not certified is searched again with float32 tiles. Either way the re-rank
    computes the distances from the float32 patterns, so results are exact.
    """

    kind = "exact"

    def __init__(self, dim: int, *, device: object = None, tiles: str | None = None) -> None:
        import torch

        self.dim = int(dim)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._rerank_dtype = torch.float64 if self.device.type == "cpu" else torch.float32
        tiles = EXACT_TILES if tiles is None else tiles
        if tiles not in ("auto", "float32", "bfloat16"):
            raise SearchError(f"tiles must be 'auto', 'float32' or 'bfloat16'; got {tiles!r}.")
        if tiles == "auto":
            native = self.device.type == "cpu" and cpu_bf16_native()
            tiles = "bfloat16" if native else "float32"
        self.tiles = tiles
        self._center: np.ndarray | None = None  # float64 (dim,)
        self._data = None  # centred float32 (n, dim) tensor on the device
        self._data_bf16 = None  # its bfloat16 copy, for bfloat16 tiles
        self._max_norm = 0.0  # the largest stored |y|, for the certificate
        self._sqnorm = None
        self._count = 0
        self.uncertified = 0  # queries the bfloat16 tiles could not certify (searched again)

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"ExactIndex(len={self._count}, dim={self.dim}, device={self.device})"

    @classmethod
    def wrapping(cls, data, *, tiles: str | None = None) -> ExactIndex:
        """An exact index over ``data``, a float32 tensor of rows already centred (shared,
        not copied): what another backend uses to search its own rows exactly."""
        import torch

        index = cls(int(data.shape[1]), device=data.device, tiles=tiles)
        index._center = np.zeros(index.dim)
        index._data = data
        index._count = int(data.shape[0])
        index._sqnorm = _squared_norms(data, index._rerank_dtype, _chunk_rows(index.dim))
        if index.tiles == "bfloat16":
            index._data_bf16 = data.to(torch.bfloat16)
            index._max_norm = float(index._sqnorm.double().max().sqrt())
        return index

    def _centred(self, chunk: np.ndarray):
        """Subtract the centre in float64 from the *original* values, then go to float32."""
        import torch

        centred = np.asarray(chunk, dtype=np.float64) - self._center
        return torch.from_numpy(centred.astype(np.float32)).to(self.device)

    def add(self, data: np.ndarray, progress: Progress = None) -> None:
        """Append patterns. The centre is the mean of the first batch (any fixed shift keeps
        distances exact; the mean of the stored set is the one that removes cancellation).
        ``progress(rows)`` once they are stored."""
        import torch

        arr = as_2d(data, "patterns")
        if arr.shape[1] != self.dim:
            raise SearchError(
                f"patterns have dimension {arr.shape[1]}; this index holds dimension {self.dim}."
            )
        if arr.shape[0] == 0:
            return
        rows = _chunk_rows(self.dim)
        mean = _column_mean(arr, rows, "patterns")  # also validates everything before storing
        if self._center is None:
            self._center = mean
        # one float32 tensor filled chunk by chunk: no list of parts and concatenated copy
        start = 0 if self._data is None else self._count
        data = torch.empty(
            (start + arr.shape[0], self.dim), dtype=torch.float32, device=self.device
        )
        if self._data is not None:
            data[:start] = self._data
            self._data = self._data_bf16 = None
        for s in range(0, arr.shape[0], rows):
            data[start + s : start + s + rows] = self._centred(arr[s : s + rows])
        self._data = data
        self._sqnorm = _squared_norms(data, self._rerank_dtype, rows)
        self._count = int(self._data.shape[0])
        if self.tiles == "bfloat16":
            self._data_bf16 = self._data.to(torch.bfloat16)
            self._max_norm = float(self._sqnorm.double().max().sqrt())
        if progress is not None:
            progress(arr.shape[0])

    def query(
        self, x: np.ndarray, k: int, progress: Progress = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest stored patterns of each row of ``x``: (ids int64, L2 float32);
        ``progress(rows)`` after each tile of queries.

        Ties are broken by the lower id, so results are deterministic.
        """
        arr = _check_query(self, x, k)
        rows = _chunk_rows(self.dim)

        def centred():
            for start in range(0, arr.shape[0], rows):
                chunk = np.asarray(arr[start : start + rows], dtype=np.float64)
                _refuse_nonfinite(chunk, start, "queries")
                yield start, self._centred(chunk)

        return self._search(centred(), arr.shape[0], int(k), progress)

    def query_stored(self, k: int, progress: Progress = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`query` of every stored pattern, read from the index itself: the same ids and
        distances as ``query(data, k)`` with the indexed ``data`` (each stored row is that
        row of ``data`` centred as :meth:`query` centres it), without the caller keeping
        ``data``."""
        if int(k) != k or not 1 <= k <= self._count:
            raise SearchError(f"k must be an integer in [1, {self._count}]; got {k!r}.")
        rows = _chunk_rows(self.dim)
        chunks = ((s, self._data[s : s + rows]) for s in range(0, self._count, rows))
        return self._search(chunks, self._count, int(k), progress)

    def _search(
        self, chunks: Iterator, m: int, k: int, progress: Progress
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, distances) of ``m`` centred queries given as (start, tensor) chunks."""
        import torch

        n = self._count
        # Candidates beyond k absorb the float32 rounding of the matmul scores; the re-rank
        # by direct differences then decides.
        c = min(n, k + max(8, k // 2))
        tile_s = min(n, max(1024, _TILE_ELEMS // 256))
        tile_q = max(1, min(_TILE_ELEMS // tile_s, 4096))
        ids = np.empty((m, k), dtype=np.int64)
        dists = np.empty((m, k), dtype=np.float32)
        with torch.no_grad():
            for start, xq_all in chunks:
                for q0 in range(0, xq_all.shape[0], tile_q):
                    xq = xq_all[q0 : q0 + tile_q]
                    i, d = self._search_tile(xq, k, c, tile_s)
                    lo = start + q0
                    ids[lo : lo + xq.shape[0]] = i
                    dists[lo : lo + xq.shape[0]] = d
                    if progress is not None:
                        progress(xq.shape[0])
        return ids, dists

    def _search_tile(self, xq, k: int, c: int, tile_s: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, distances) of a tile of queries: bfloat16 candidates, certified, or float32."""
        import torch

        if self.tiles != "bfloat16" or c >= self._count:
            return self._rerank(xq, self._candidates(xq, c, tile_s)[1], k)
        scores, cand = self._candidates(xq, c, tile_s, bf16=True)
        ids, dists = self._rerank(xq, cand, k)
        # the best score left out, lowered by the rounding bound, against the k-th kept one
        xnorm = torch.linalg.vector_norm(xq, dim=1, dtype=torch.float64)
        top = self._max_norm
        # the float32 norms and subtraction round too: 2^-20 of the scores' scale covers them
        bound = 2.0 * BF16_DOT_ERROR * xnorm * top + 2.0**-20 * (top * top + 2 * xnorm * top)
        left_out = scores.max(dim=1).values.double() - bound
        kth = torch.from_numpy(dists[:, -1]).to(xq.device, torch.float64) ** 2
        ok = (left_out > kth * (1 + 1e-6) - xnorm**2).cpu().numpy()
        redo = np.flatnonzero(~ok)
        if redo.size:
            self.uncertified += int(redo.size)
            xr = xq[torch.from_numpy(redo).to(xq.device)]
            ids[redo], dists[redo] = self._rerank(xr, self._candidates(xr, c, tile_s)[1], k)
        return ids, dists

    def _candidates(self, xq, c: int, tile_s: int, bf16: bool = False):
        """(scores, ids) of the c best stored patterns by the score |y|^2 - 2 x.y: float32
        tiles, or bfloat16 ones (the products rounded to bfloat16, the scores in float32)."""
        import torch

        best_s = best_i = None
        xb = xq.to(torch.bfloat16) if bf16 else None
        for s0 in range(0, self._count, tile_s):
            norms = self._sqnorm[s0 : s0 + tile_s].unsqueeze(0)
            if bf16:
                dot = torch.mm(xb, self._data_bf16[s0 : s0 + tile_s].T)
                score = dot.float().mul_(-2.0).add_(norms)
            else:
                y = self._data[s0 : s0 + tile_s]
                score = torch.addmm(norms, xq, y.T, alpha=-2.0)
            cc = min(c, score.shape[1])
            s, i = torch.topk(score, cc, dim=1, largest=False, sorted=False)
            i = i + s0
            if best_s is not None:
                s = torch.cat([best_s, s], dim=1)
                i = torch.cat([best_i, i], dim=1)
                if s.shape[1] > c:
                    s, pos = torch.topk(s, c, dim=1, largest=False, sorted=False)
                    i = torch.gather(i, 1, pos)
            best_s, best_i = s, i
        return best_s, best_i

    def _rerank(self, xq, cand, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact distances of the candidates by direct differences; k smallest, lower id on ties."""
        import torch

        cand, _ = torch.sort(cand, dim=1)  # lower id first, then a stable sort by distance
        out_d = torch.empty(cand.shape, dtype=self._rerank_dtype, device=cand.device)
        # Bound the (rows, candidates, dim) difference tensor. The float32 difference of two
        # float32 vectors is exact to rounding; its squares are summed in the re-rank dtype.
        step = max(1, _TILE_ELEMS // max(1, cand.shape[1] * self.dim))
        for r0 in range(0, cand.shape[0], step):
            diff = self._data[cand[r0 : r0 + step]] - xq[r0 : r0 + step].unsqueeze(1)
            out_d[r0 : r0 + step] = torch.linalg.vector_norm(diff, dim=2, dtype=self._rerank_dtype)
        order = torch.sort(out_d, dim=1, stable=True).indices[:, :k]
        ids = torch.gather(cand, 1, order)
        d = torch.gather(out_d, 1, order)
        return ids.cpu().numpy().astype(np.int64), d.to(torch.float32).cpu().numpy()


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
    ``progress(rows)`` is called as the rows go in. ``adopt=True`` lets a clustered index
    keep ``data`` itself (a float32 array the caller no longer reads: it is centred in place).
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
    index: NeighborIndex
    if chosen == "exact":
        index = ExactIndex(dim, device=device)
    elif chosen == "clustered":
        from hopaudit.search.clustered import ClusteredIndex

        index = ClusteredIndex(dim, device=device)
        index.add(arr, progress=progress, adopt=adopt)
        return index
    else:
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
        from hopaudit.search.clustered import ClusteredIndex

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
