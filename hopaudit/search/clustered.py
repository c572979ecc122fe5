"""Nearest-neighbour search over k-means lists that measures its own recall (torch, any device).

For layers too large for exact search. The stored patterns are split into lists by their
nearest k-means centroid (about sqrt(n) lists); a query is compared with the patterns of its
``probes`` nearest lists only, with matrix tiles (float32 by default, :data:`TILES`; bfloat16
on request), and the best candidates are re-ranked by exact distances from the
float32 patterns. The distances returned are exact; a neighbour can be missed when it sits in a
list farther than the ``probes`` nearest.

How many lists to probe is not guessed: unless given, it is chosen on the layer itself. A
seeded sample of the stored patterns is searched exactly (brute force) and with 4, 8, 16, ...
probes, and the smallest count whose recall@1 and recall@k on the sample reach
``RECALL_AT_1`` and ``RECALL_AT_K`` is kept; ``index.recall`` reports the sample, the count
and both recalls, so an audit shows what its search found (docs/theory.md, "Search").

A float32 index holds one copy of its layer (the patterns, centred, in their own order), as
the exact search does; a list's rows are gathered a tile at a time. In float32 tiles one matrix
product scores the queries against them, ``|y|^2 - 2 q.y`` (the query's own ``|q|^2`` added to
none, so the scores rank and prune alike). In bfloat16 tiles each stored row is also kept, list
after list, as ``[-2 (y - c_j), e, 1]`` and each query as ``[q, 1, |q - c_j|^2]``, where ``e``
is ``|y - c_j|^2 + 2 c_j.(y - c_j)`` and the numbers in ``e`` and ``|q - c_j|^2`` are each
split into three bfloat16 (``_PARTS``), so the product is ``|q - y|^2`` itself: small for near
neighbours, where a bfloat16 product rounds to 2^-9 of its size; a stored row held relative to
its list's centroid rounds relative to the list's spread, not to the patterns' norms.
"""

from __future__ import annotations

import math

import numpy as np

from hopaudit.cpus import cpu_bf16_native
from hopaudit.errors import SearchError
from hopaudit.search.exact import ExactIndex
from hopaudit.search.rows import (
    Progress,
    as_2d,
    centred_in_place,
    centred_rows,
    check_query,
    chunk_rows,
    column_mean,
    squared_norms,
)

__all__ = [
    "CALIBRATION_SAMPLE",
    "RECALL_AT_1",
    "RECALL_AT_K",
    "TILES",
    "ClusteredIndex",
    "default_lists",
    "recall_by_distance",
]

#: Recall on the calibration sample the chosen probe count must reach: a margin above the
#: 0.99 and 0.95 an audit promises, for the sample's noise.
RECALL_AT_1 = 0.995
RECALL_AT_K = 0.97
#: Stored patterns searched exactly to choose the probe count (seeded).
CALIBRATION_SAMPLE = 512
#: The probe counts tried, in order, until the recall holds (then all lists: exact).
PROBE_STEPS = (4, 8, 16, 32, 64, 128)
#: Lloyd iterations and sampled patterns per list for the centroids: the lists need to be
#: compact, not optimal.
KMEANS_ITERATIONS = 10
KMEANS_SAMPLE_PER_LIST = 40
#: The products' dtype by default: float32 (the BLAS's). bfloat16 tiles (``"auto"`` on a CPU
#: that multiplies bfloat16 natively) are oneDNN's, which keeps memory for every product shape,
#: and each list's product has its own (benchmarks/README.md, tiles_memory.py).
TILES = "float32"
#: Rows of queries or patterns per (rows x lists) float32 tile of centroid distances.
_ROWS = 4096
#: Sampled rows k-means gathers at once (3 MiB of 768-d float32 rows).
_KMEANS_TILE = 1024
#: Numbers (of the tiles' dtype) that carry one float64 sum into a product: three bfloat16
#: hold it to 2^-27 of its size, below the rounding of the products themselves.
_PARTS = 3
#: Bytes of one (queries x patterns) tile of scores: bounds what a large list costs. The
#: buffers are sized to the largest tile a search needs, never more than these.
_TILE_BYTES = 16 << 20
#: Bytes of the queries' rows gathered for one tile.
_QUERY_BYTES = 8 << 20
#: Float32 differences the re-rank makes at once (4 MiB): freed pages a heap keeps stay few.
_RERANK_VALUES = 1 << 20
#: (query, list) pairs searched at once, at least: a block's probe lists, their order and its
#: candidates take about ``_PAIR_BYTES`` a pair, so a layer's queries go a block at a time.
_SEARCH_PAIRS = 1 << 19
#: Bytes a (query, list) pair takes while searched; a block takes up to a quarter of the
#: layer's float32 bytes, so a large layer with few probes is still one block.
_PAIR_BYTES = 48


def default_lists(n: int) -> int:
    """About sqrt(n) lists: the centroid work (n x lists) balances a probe's list reads."""
    return max(1, round(math.sqrt(n)))


def _torch():
    import torch

    return torch


class ClusteredIndex:
    """Search over k-means lists, exact distances, recall measured on a sample (module doc)."""

    kind = "clustered"

    def __init__(
        self,
        dim: int,
        *,
        lists: int | None = None,
        probes: int | None = None,
        device: object = None,
        tiles: str | None = None,
        seed: int = 0,
    ) -> None:
        torch = _torch()
        self.dim = int(dim)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        tiles = TILES if tiles is None else tiles
        if tiles not in ("auto", "float32", "bfloat16"):
            raise SearchError(f"tiles must be 'auto', 'float32' or 'bfloat16'; got {tiles!r}.")
        if tiles == "auto":
            native = self.device.type == "cpu" and cpu_bf16_native()
            tiles = "bfloat16" if native else "float32"
        if lists is not None and (int(lists) != lists or lists < 1):
            raise SearchError(f"lists must be a positive integer; got {lists!r}.")
        if probes is not None and (int(probes) != probes or probes < 1):
            raise SearchError(f"probes must be a positive integer; got {probes!r}.")
        self.tiles = tiles
        self.lists = None if lists is None else int(lists)
        self.probes = None if probes is None else int(probes)
        self.seed = int(seed)
        self.recall: dict | None = None  # set when the probe count is chosen
        self._count = 0
        self._data = None

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return (
            f"ClusteredIndex(len={self._count}, dim={self.dim}, lists={self.lists}, "
            f"probes={self.probes}, tiles={self.tiles})"
        )

    # ------------------------------------------------------------------ building

    def add(self, data: np.ndarray, progress: Progress = None, *, adopt: bool = False) -> None:
        """Index the patterns, once (the lists are trained on them); ``progress(rows)`` at the
        end. ``adopt=True``: ``data`` is a float32 array no one reads afterwards (``measure``'s
        own normalized copy), centred in place and kept instead of copied (a layer less)."""
        torch = _torch()
        if self._data is not None:
            raise SearchError("a clustered index is built once; build a new one to add rows.")
        arr = as_2d(data, "patterns")
        if arr.shape[1] != self.dim:
            raise SearchError(
                f"patterns have dimension {arr.shape[1]}; this index holds dimension {self.dim}."
            )
        n = arr.shape[0]
        if n == 0:
            return
        rows = chunk_rows(self.dim)
        self._center = column_mean(arr, rows, "patterns")  # validates every row too
        gen = torch.Generator().manual_seed(self.seed)
        nlist = min(n, self.lists or default_lists(n))
        sample = np.sort(torch.randperm(n, generator=gen)[: KMEANS_SAMPLE_PER_LIST * nlist].numpy())
        lent = centred_in_place(arr, self._center, self.device, adopt)
        if lent is not None:
            data = torch.from_numpy(lent)
        else:
            data = torch.empty((n, self.dim), dtype=torch.float32, device=self.device)
            for s in range(0, n, rows):
                data[s : s + rows] = self._centred(arr, s, s + rows, None)  # checked above
        centroids = _kmeans(data, torch.from_numpy(sample).to(self.device), nlist, gen)
        assign = _nearest(data, centroids, 1)[:, 0]
        counts = np.bincount(assign, minlength=nlist)
        kept = counts > 0  # a centroid no pattern chose holds no list
        centroids = centroids[torch.from_numpy(kept).to(self.device)]
        assign = (np.cumsum(kept) - 1)[assign]
        counts = counts[kept]
        self._data = data  # in the patterns' order; a list's rows gathered by self._ids
        # the float32 tiles' |y|^2 (bfloat16 tiles carry theirs in the augmented rows)
        self._sqnorm = squared_norms(data, torch.float32, rows) if self.tiles == "float32" else None
        self._ids = torch.from_numpy(np.argsort(assign, kind="stable")).to(self.device)
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._centroids = centroids
        self._aug = self._augmented(data, centroids) if self.tiles == "bfloat16" else None
        self.lists = int(centroids.shape[0])
        self._count = n
        if progress is not None:
            progress(n)

    def _centred(self, arr, start: int, stop: int, what: str | None):
        """Rows start:stop minus the stored set's mean, in float64 from the original values, as
        float32 (:func:`~hopaudit.search.rows.centred_rows`), on the index's device."""
        torch = _torch()
        return torch.from_numpy(centred_rows(arr, start, stop, self._center, what)).to(self.device)

    def _augmented(self, data, centroids):
        """Each row (list after list) as [-2 (y - c_j), e, 1] in bfloat16 (module doc)."""
        torch = _torch()
        dt = torch.bfloat16
        d = self.dim
        aug = torch.empty((data.shape[0], d + 2 * _PARTS), dtype=dt, device=self.device)
        aug[:, d + _PARTS :] = 1.0
        for j, (a, b) in enumerate(zip(self._offsets[:-1], self._offsets[1:], strict=True)):
            for s in range(int(a), int(b), _ROWS):
                e = min(int(b), s + _ROWS)
                r = data.index_select(0, self._ids[s:e]) - centroids[j]
                extra = (r * r).sum(1, dtype=torch.float64) + 2.0 * (
                    r.double() @ centroids[j].double()
                )
                aug[s:e, :d] = r.mul_(-2.0).to(dt)  # times -2: exact in any dtype
                aug[s:e, d : d + _PARTS] = _split(extra, dt)
        return aug

    # ------------------------------------------------------------------ searching

    def query(
        self, x: np.ndarray, k: int, progress: Progress = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest stored patterns of each row of ``x``: (ids int64, L2 float32,
        ascending; exact distances, ties to the lower id); ``progress(rows)`` per chunk."""
        arr = check_query(self, x, k)
        k = int(k)
        self._calibrate(k)
        m = arr.shape[0]
        ids = np.empty((m, k), dtype=np.int64)
        dists = np.empty((m, k), dtype=np.float32)
        rows = chunk_rows(self.dim)
        for s in range(0, m, rows):
            chunk = self._centred(arr, s, s + rows, "queries")
            ids[s : s + len(chunk)], dists[s : s + len(chunk)] = self._search(chunk, k, self.probes)
            if progress is not None:
                progress(len(chunk))
        return ids, dists

    def query_stored(self, k: int, progress: Progress = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`query` of every stored pattern, read from the index's own rows."""
        if int(k) != k or not 1 <= k <= self._count:
            raise SearchError(f"k must be an integer in [1, {self._count}]; got {k!r}.")
        k = int(k)
        self._calibrate(k)
        return self._search(self._data, k, self.probes, progress)

    def _calibrate(self, k: int) -> None:
        """Choose ``probes`` on a seeded sample searched exactly (module docstring)."""
        torch = _torch()
        if self.probes is not None and self.recall is not None:
            return
        gen = torch.Generator().manual_seed(self.seed + 1)
        size = min(self._count, CALIBRATION_SAMPLE)
        rows = torch.randperm(self._count, generator=gen)[:size].to(self.device)
        q = self._data[rows]
        exact = ExactIndex.wrapping(self._data, tiles="float32")
        _, true_d = exact.query(q.cpu().numpy(), k)
        steps = [self.probes] if self.probes is not None else list(PROBE_STEPS)
        steps = [p for p in steps if p < self.lists] + [self.lists]
        for p in steps:
            _, d = self._search(q, k, p)
            r1, rk = recall_by_distance(d, true_d)
            if self.probes is not None or (r1 >= RECALL_AT_1 and rk >= RECALL_AT_K):
                break
        self.probes = p
        self.recall = {"sample": size, "probes": p, "k": k, "recall_at_1": r1, "recall_at_k": rk}

    def _search(self, q, k: int, probes: int, progress: Progress = None):
        """(original ids, distances) of the k nearest of centred float32 queries ``q``, a block
        of :meth:`query_block` queries at a time (each query's search is its own)."""
        m = q.shape[0]
        step = self.query_block(probes)
        if m <= step:
            return self._search_block(q, k, probes, progress)
        ids = np.empty((m, k), dtype=np.int64)
        dists = np.empty((m, k), dtype=np.float32)
        for s in range(0, m, step):
            ids[s : s + step], dists[s : s + step] = self._search_block(
                q[s : s + step], k, probes, progress
            )
        return ids, dists

    def query_block(self, probes: int) -> int:
        """Queries searched at once with ``probes`` lists each: ``_SEARCH_PAIRS`` pairs, or up to
        a quarter of the layer's float32 bytes at ``_PAIR_BYTES`` a pair where that is more."""
        pairs = max(_SEARCH_PAIRS, self._count * self.dim // _PAIR_BYTES)
        return max(1, pairs // min(probes, self.lists))

    def _search_block(self, q, k: int, probes: int, progress: Progress = None):
        torch = _torch()
        m = q.shape[0]
        c = min(self._count, k + max(8, k // 2))
        p = min(probes, self.lists)
        near, dc = _nearest(q, self._centroids, p, distances=True)  # (m, p) each
        dt = torch.float32 if self._aug is None else self._aug.dtype
        d = self.dim
        best_d = torch.full((m, c), math.inf, dtype=torch.float32, device=self.device)
        best_i = torch.full((m, c), -1, dtype=torch.int64, device=self.device)
        # pairs (list, query, slot), grouped by list: the nearest list of every query first
        passes = []
        for first in (True, False):
            slots = near[:, :1] if first else near[:, 1:]
            if slots.shape[1] == 0:
                break
            flat = slots.reshape(-1)
            order = torch.argsort(flat, stable=True)
            lists, counts = torch.unique_consecutive(flat[order], return_counts=True)
            consts = dc[:, :1] if first else dc[:, 1:]
            passes.append(
                (first, order // slots.shape[1], consts.reshape(-1)[order], lists, counts)
            )
        sizes = np.diff(self._offsets)
        needs = [(sizes[j.cpu().numpy()], n.cpu().numpy()) for *_, j, n in passes]
        bufs = _Buffers(d, 0 if self._aug is None else 2 * _PARTS, dt, self.device, needs)
        done = [0, 0]  # (query, list) pairs read, and queries reported: m once all p are read

        def advance(pairs: int) -> None:
            done[0] += pairs
            reached = done[0] // p
            if progress is not None and reached > done[1]:
                progress(reached - done[1])
            done[1] = reached

        for first, qi_all, const_all, lists, counts in passes:
            pos = 0
            for j, cnt in zip(lists.tolist(), counts.tolist(), strict=True):
                qi = qi_all[pos : pos + cnt]
                const = const_all[pos : pos + cnt]
                pos += cnt
                a, b = int(self._offsets[j]), int(self._offsets[j + 1])
                rows_step, cols_step = bufs.tile(b - a)
                for s in range(a, b, cols_step):
                    e = min(b, s + cols_step)
                    listed = self._list_rows(s, e, bufs)
                    for r in range(0, cnt, rows_step):
                        qr, cr = qi[r : r + rows_step], const[r : r + rows_step]
                        qa = bufs.rows(q, qr)
                        if self._aug is not None:  # [q, 1, |q - c_j|^2]
                            qa[:, d + _PARTS :] = _split(cr.double(), dt)
                        self._merge(qa, qr, listed, s, best_d, best_i, not first or s > a, bufs)
                advance(cnt)
        short = torch.nonzero(best_i[:, k - 1] < 0)[:, 0]  # fewer than k read: read all lists
        ids, dists = self._rerank(q, best_i, k)
        if short.numel() and p < self.lists:
            ids[short.cpu().numpy()], dists[short.cpu().numpy()] = self._search(
                q[short], k, self.lists
            )
        return ids, dists

    def _list_rows(self, a: int, b: int, bufs):
        """The stored rows at list positions a..b as a product reads them: (their rows, their
        squared norms) gathered into ``bufs`` in float32 tiles, the augmented rows' slice in
        bfloat16 (None for the norms)."""
        torch = _torch()
        if self._aug is not None:
            return self._aug[a:b], None
        ids = self._ids[a:b]
        rows, norms = bufs.listed(b - a)
        torch.index_select(self._data, 0, ids, out=rows)
        torch.index_select(self._sqnorm, 0, ids, out=norms)
        return rows, norms

    def _merge(self, qa, qi, listed, a: int, best_d, best_i, prune: bool, bufs) -> None:
        """Score queries ``qi`` (their rows ``qa``) against the stored rows ``listed``
        (:meth:`_list_rows`, list positions from ``a``) and merge each query's best into
        ``best_d``/``best_i``; with ``prune``, queries whose best score here cannot enter
        their current best are skipped."""
        torch = _torch()
        c = best_d.shape[1]
        rows, norms = listed
        b = a + rows.shape[0]
        out = bufs.scores(len(qi), b - a)
        if norms is not None:  # |y|^2 - 2 q.y
            est = torch.addmm(norms, qa, rows.T, alpha=-2.0, out=out)
        else:  # |q - y|^2
            est = torch.mm(qa, rows.T, out=out)
        if prune:
            thr = best_d[:, -1].index_select(0, qi)
            keep = (est.amin(1).float() < thr).nonzero()[:, 0]
            if keep.numel() == 0:
                return
            if keep.numel() < len(qi):
                qi = qi[keep]
                est = torch.index_select(est, 0, keep, out=bufs.kept(len(keep), b - a))
        vals, cols = torch.topk(est, min(c, b - a), dim=1, largest=False, sorted=False)
        vals = vals.float()
        alld = torch.cat([best_d.index_select(0, qi), vals], dim=1)
        alli = torch.cat([best_i.index_select(0, qi), cols + a], dim=1)
        top, at = torch.topk(alld, c, dim=1, largest=False, sorted=True)
        best_d.index_copy_(0, qi, top)
        best_i.index_copy_(0, qi, alli.gather(1, at))

    def _rerank(self, q, cand, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact distances of the candidates (positions in the lists) by direct differences
        from the float32 patterns; the k smallest, the lower id first on ties. Empty slots
        (-1) never win. A block of rows at a time: the sorts' copies stay small."""
        ids = np.empty((cand.shape[0], k), dtype=np.int64)
        dists = np.empty((cand.shape[0], k), dtype=np.float32)
        step = max(1, _RERANK_VALUES // max(1, cand.shape[1] * self.dim))
        for s in range(0, cand.shape[0], step):
            ids[s : s + step], dists[s : s + step] = self._rerank_rows(
                q[s : s + step], cand[s : s + step], k
            )
        return ids, dists

    def _rerank_rows(self, q, cand, k: int) -> tuple[np.ndarray, np.ndarray]:
        torch = _torch()
        empty = cand < 0
        orig = torch.where(empty, self._count, self._ids[cand.clamp_min(0)])
        orig, perm = torch.sort(orig, dim=1)
        diff = self._data[orig.clamp_max(self._count - 1)] - q.unsqueeze(1)
        d = torch.linalg.vector_norm(diff, dim=2)
        d[empty.gather(1, perm)] = math.inf
        at = torch.sort(d, dim=1, stable=True).indices[:, :k]
        return orig.gather(1, at).cpu().numpy(), d.gather(1, at).cpu().numpy()


class _Buffers:
    """A search's large temporaries, allocated once and viewed at each tile's size (tiles of a
    few MB allocated anew between small live arrays fragment glibc's heap), each sized to the
    largest tile the search's lists need and at most ``_TILE_BYTES`` or ``_QUERY_BYTES``.

    A tile's stored rows are gathered into one buffer in float32 tiles (bfloat16 tiles read
    their augmented rows in place). The queries' rows are ``dim`` wide, and ``extra`` columns
    more (bfloat16 tiles: the ones and the split ``|q - c_j|^2``, module doc); ``needs`` is,
    for each pass over the lists, (the lists' sizes, the queries probing each).
    """

    def __init__(self, dim: int, extra: int, dtype, device, needs) -> None:
        torch = _torch()
        self.dim = dim
        self.tile_values = max(64, _TILE_BYTES // dtype.itemsize)
        self.query_rows = max(64, _QUERY_BYTES // ((dim + extra) * dtype.itemsize))
        rows, cols, scores = 1, 1, 1
        for sizes, counts in needs:
            for size, count in zip(sizes.tolist(), counts.tolist(), strict=True):
                rows_step, cols_step = self.tile(size)
                rows = max(rows, min(count, rows_step))
                cols = max(cols, cols_step)
                scores = max(scores, min(count, rows_step) * cols_step)
        self._listed = None
        if dtype == torch.float32:  # a list's float32 rows and norms, gathered for a tile
            self._listed = torch.empty((cols, dim), dtype=dtype, device=device)
            self._norms = torch.empty(cols, dtype=dtype, device=device)
        self._rows = torch.empty((rows, dim + extra), dtype=dtype, device=device)
        self._rows[:, dim : dim + extra // 2] = 1.0
        self._gathered = None
        if dtype != torch.float32:  # the queries' float32 rows, gathered before their cast
            self._gathered = torch.empty((rows, dim), dtype=torch.float32, device=device)
        self._scores = torch.empty(scores, dtype=dtype, device=device)
        self._kept = torch.empty(scores, dtype=dtype, device=device)

    def tile(self, size: int) -> tuple[int, int]:
        """(queries, patterns) per tile of a list of ``size`` patterns: at most
        ``tile_values`` scores and ``query_rows`` rows of either, however large the list."""
        cols = max(1, min(size, self.query_rows, self.tile_values // 64))
        return min(self.query_rows, max(64, self.tile_values // cols)), cols

    def listed(self, m: int):
        return self._listed[:m], self._norms[:m]

    def rows(self, q, qi):
        """Rows ``qi`` of the queries ``q`` in the tiles' dtype, before the extra columns."""
        torch = _torch()
        out = self._rows[: len(qi)]
        if self._gathered is None:  # gathered straight into the tile's rows
            torch.index_select(q, 0, qi, out=out[:, : self.dim])
        else:
            out[:, : self.dim] = torch.index_select(q, 0, qi, out=self._gathered[: len(qi)])
        return out

    def scores(self, n: int, m: int):
        return self._scores[: n * m].view(n, m)

    def kept(self, n: int, m: int):
        return self._kept[: n * m].view(n, m)


def _split(v, dt):
    """(len(v), _PARTS) numbers of dtype ``dt`` summing to ``v`` (float64) nearly exactly."""
    torch = _torch()
    out = torch.empty((v.shape[0], _PARTS), dtype=dt, device=v.device)
    rest = v
    for i in range(_PARTS):
        out[:, i] = rest.to(dt)
        rest = rest - out[:, i].double()
    return out


def recall_by_distance(found: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """recall@1 and recall@k by distance: a found neighbour counts when it is no farther than
    the true one of its rank (ties are interchangeable)."""
    tol = 1e-6 * np.maximum(true, 1e-30)
    r1 = float(np.mean(found[:, 0] <= true[:, 0] + tol[:, 0]))
    rk = float(np.mean(found <= true[:, -1:] + tol[:, -1:]))
    return r1, rk


def _nearest(x, centroids, p: int, distances: bool = False):
    """Each row's ``p`` nearest centroids (float32 distances by |x|^2 - 2 x.c + |c|^2), nearest
    first; with ``distances`` also their squared distances. One tile, reused, and outputs
    allocated once: tiles of a few MB freed between small live arrays fragment glibc's heap."""
    torch = _torch()
    n, m = x.shape[0], centroids.shape[0]
    csq = (centroids * centroids).sum(1).unsqueeze(0)
    ids = torch.empty((n, p), dtype=torch.int64, device=x.device)
    ds = torch.empty((n, p), dtype=torch.float32, device=x.device)
    tile = torch.empty((min(n, _ROWS), m), dtype=torch.float32, device=x.device)
    norms = torch.empty((min(n, _ROWS), 1), dtype=torch.float32, device=x.device)
    for s in range(0, n, _ROWS):
        xs = x[s : s + _ROWS]
        d, sq = tile[: xs.shape[0]], norms[: xs.shape[0]]
        torch.addmm(csq, xs, centroids.T, alpha=-2.0, out=d)
        torch.linalg.vector_norm(xs, dim=1, keepdim=True, out=sq)
        d.add_(sq.square_())
        torch.topk(
            d, p, dim=1, largest=False, sorted=True, out=(ds[s : s + _ROWS], ids[s : s + _ROWS])
        )
    if not distances:
        return ids.cpu().numpy()
    return ids, ds.clamp_min_(0)


def _kmeans(data, rows, nlist: int, gen):
    """Lloyd's k-means on the float32 ``data[rows]``, from distinct sampled rows; returns the
    centroids. The rows are gathered ``_KMEANS_TILE`` at a time, never all at once (a sample of
    ``KMEANS_SAMPLE_PER_LIST`` rows a list is a quarter of a layer at 160 lists)."""
    torch = _torch()
    c = data[rows[torch.randperm(rows.shape[0], generator=gen)[:nlist].to(rows.device)]]
    tiles = [rows[s : s + _KMEANS_TILE] for s in range(0, rows.shape[0], _KMEANS_TILE)]
    for _ in range(KMEANS_ITERATIONS):
        sums = torch.zeros_like(c)
        cnt = torch.zeros(nlist, dtype=torch.int64, device=c.device)
        for t in tiles:
            x = data[t]
            a = torch.from_numpy(_nearest(x, c, 1)[:, 0]).to(c.device)
            sums.index_add_(0, a, x)
            cnt += torch.bincount(a, minlength=nlist)
        filled = cnt > 0
        c[filled] = sums[filled] / cnt[filled, None].to(c.dtype)
    return c
