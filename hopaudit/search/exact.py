"""Exact search with torch on any device: centred data, tiled products, exact re-rank.

Data are centred on the stored set's mean (distances are shift invariant; centring removes the
cancellation of ``|x|^2 - 2x.y + |y|^2`` when the patterns sit far from the origin), candidates
come from tiled matrix products (bfloat16 where the CPU multiplies it natively, else float32),
each query's choice certified by a rounding bound or scored again a tier finer (float32, then
float64), and the final ``k`` are re-ranked by direct difference norms (float64 on the CPU).
``torch.cdist`` is never used and float16 is never used for squared norms.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from hopaudit.cpus import cpu_bf16_native
from hopaudit.errors import SearchError
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

__all__ = ["BF16_DOT_ERROR", "EXACT_TILES", "TIERS", "ExactIndex", "dot_error"]

#: Elements of one (queries x stored) float32 score tile in the exact backend.
_TILE_ELEMS = 1 << 22
#: Elements of the re-rank's difference tensor (1 MiB of float32): it stays in a core's cache.
_RERANK_ELEMS = 1 << 18

#: Bound on |x.y - bf16(x).bf16(y) rounded to bfloat16| over |x| |y|, beside the float32
#: accumulation's own: each input rounds by at most 2^-9 relative per coordinate (2^-8 for the
#: product), the output by 2^-9, and 2^-12 covers the cross terms (Cauchy-Schwarz: |x| |y|).
BF16_DOT_ERROR = 2.0**-8 + 2.0**-9 + 2.0**-12

#: The candidate tiers, coarsest first: a query a tier cannot certify is scored again by the
#: next; float64, the last, is kept as it is (its rounding is about 1e-16 of the scores).
TIERS = ("bfloat16", "float32", "float64")

#: Queries a search scores with one tier before it may give it up (a few tiles' worth).
TRIAL_QUERIES = 2048
#: The share of uncertified queries past which a search goes on with the next tier alone: each
#: one is scored twice, and a coarser tier saves a half at most (``exact_bf16_speedup``).
GIVE_UP = 0.4
#: Bytes of one float64 tile of stored rows (cast from the float32 rows as the tier needs it).
_FLOAT64_TILE_BYTES = 8 << 20


def dot_error(tier: str, dim: int) -> float:
    """A bound on |computed x.y - x.y| over |x| |y| for a tier's products of width ``dim``: the
    accumulation's gamma_dim = dim u / (1 - dim u) in the tier's unit roundoff u (any summation
    order), plus ``BF16_DOT_ERROR`` for bfloat16 inputs and output."""
    unit = 2.0**-53 if tier == "float64" else 2.0**-24
    gamma = dim * unit / (1.0 - dim * unit)
    return gamma + (BF16_DOT_ERROR if tier == "bfloat16" else 0.0)


#: The exact backend's first tier by default: float32, since on real activations bfloat16
#: products leave most queries uncertified and their copy costs half a layer
#: (``bf16_speedup_real`` of ``benchmarks/exact_give_up.py``; benchmarks/README.md).
EXACT_TILES = "float32"


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """float32 matrix products computed in float32 for the block, whatever the process set
    (``torch.set_float32_matmul_precision``: TF32 on a GPU, bfloat16 passes on some CPUs),
    restored after: the certificate's bound is float32's rounding."""
    import torch

    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


class ExactIndex:
    """Brute-force search with torch: centred data, tiled matmul for candidates, exact re-rank.

    ``tiles`` is the first tier: ``"bfloat16"`` matrix tiles, ``"float32"`` ones, or
    ``"auto"`` (bfloat16 where the CPU multiplies it natively, see
    :func:`hopaudit.cpus.cpu_bf16_native`; the default is ``EXACT_TILES``). A query's
    candidates are then certified: every stored pattern left out must score, by the tier's
    :func:`dot_error`, worse than the k-th exact distance among those kept, and a query that
    is not certified is searched again with the next of ``TIERS`` (float64 last). The re-rank
    computes the distances from the float32 patterns, so results are exact.
    ``uncertified`` counts the queries each tier sent on, ``gave_up`` the tiers a search left
    for the next (``GIVE_UP``).
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
        self.uncertified = dict.fromkeys(TIERS[:-1], 0)  # queries a tier sent on to the next
        self.gave_up = 0  # tiers a search left for the next one (GIVE_UP)

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
        index._sqnorm = squared_norms(data, index._rerank_dtype, chunk_rows(index.dim))
        index._max_norm = float(index._sqnorm.double().max().sqrt())
        if index.tiles == "bfloat16":
            index._data_bf16 = data.to(torch.bfloat16)
        return index

    def _centred(self, arr: np.ndarray, start: int, stop: int, what: str | None):
        """Rows start:stop minus the centre, in float64 from the *original* values, as float32
        (:func:`~hopaudit.search.rows.centred_rows`), on the index's device."""
        import torch

        return torch.from_numpy(centred_rows(arr, start, stop, self._center, what)).to(self.device)

    def add(self, data: np.ndarray, progress: Progress = None, *, adopt: bool = False) -> None:
        """Append patterns. The centre is the mean of the first batch (any fixed shift keeps
        distances exact; the mean of the stored set is the one that removes cancellation).
        ``progress(rows)`` once they are stored. ``adopt=True``: ``data`` is a float32 array no
        one reads afterwards, centred in place and kept instead of copied (a layer less), on
        the CPU and on the first add."""
        import torch

        arr = as_2d(data, "patterns")
        if arr.shape[1] != self.dim:
            raise SearchError(
                f"patterns have dimension {arr.shape[1]}; this index holds dimension {self.dim}."
            )
        if arr.shape[0] == 0:
            return
        rows = chunk_rows(self.dim)
        mean = column_mean(arr, rows, "patterns")  # also validates everything before storing
        if self._center is None:
            self._center = mean
        lent = None
        if self._data is None:
            lent = centred_in_place(arr, self._center, self.device, adopt)
        if lent is not None:
            self._data = torch.from_numpy(lent)
        else:
            # one float32 tensor filled chunk by chunk: no list of parts and concatenated copy
            start = 0 if self._data is None else self._count
            data = torch.empty(
                (start + arr.shape[0], self.dim), dtype=torch.float32, device=self.device
            )
            if self._data is not None:
                data[:start] = self._data
                self._data = self._data_bf16 = None
            for s in range(0, arr.shape[0], rows):
                data[start + s : start + s + rows] = self._centred(arr, s, s + rows, None)
            self._data = data
        self._sqnorm = squared_norms(self._data, self._rerank_dtype, rows)
        self._count = int(self._data.shape[0])
        self._max_norm = float(self._sqnorm.double().max().sqrt())
        if self.tiles == "bfloat16":
            self._data_bf16 = self._data.to(torch.bfloat16)
        if progress is not None:
            progress(arr.shape[0])

    def query(
        self, x: np.ndarray, k: int, progress: Progress = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest stored patterns of each row of ``x``: (ids int64, L2 float32);
        ``progress(rows)`` after each tile of queries.

        Ties among the candidates are broken by the lower id; where more patterns tie than
        there are candidates (k + max(8, k / 2)), which of them are kept is the selection's
        (``topk``), their distances the same.
        """
        arr = check_query(self, x, k)
        rows = chunk_rows(self.dim)

        def centred():
            for start in range(0, arr.shape[0], rows):
                yield start, self._centred(arr, start, start + rows, "queries")

        return self._search(centred(), arr.shape[0], int(k), progress)

    def query_stored(self, k: int, progress: Progress = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`query` of every stored pattern, read from the index itself: the same ids and
        distances as ``query(data, k)`` with the indexed ``data`` (each stored row is that
        row of ``data`` centred as :meth:`query` centres it), without the caller keeping
        ``data``."""
        if int(k) != k or not 1 <= k <= self._count:
            raise SearchError(f"k must be an integer in [1, {self._count}]; got {k!r}.")
        rows = chunk_rows(self.dim)
        chunks = ((s, self._data[s : s + rows]) for s in range(0, self._count, rows))
        return self._search(chunks, self._count, int(k), progress)

    def _search(
        self, chunks: Iterator, m: int, k: int, progress: Progress
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, distances) of ``m`` centred queries given as (start, tensor) chunks."""
        import torch

        n = self._count
        # Candidates beyond k absorb the rounding of the tiles' scores; the re-rank by direct
        # differences then decides, and the certificate checks the margin was enough.
        c = min(n, k + max(8, k // 2))
        tile_s = min(n, max(1024, _TILE_ELEMS // 256))
        tile_q = max(1, min(_TILE_ELEMS // tile_s, 4096))
        ids = np.empty((m, k), dtype=np.int64)
        dists = np.empty((m, k), dtype=np.float32)
        # the tiles' products and scores, allocated once a search: a fresh pair for every tile
        # (24 MiB with bfloat16 tiles) left glibc's heap fragmented and resident after it
        scores = torch.empty(tile_q * tile_s, dtype=torch.float32, device=self.device)
        tier = self.tiles
        dots = torch.empty_like(scores, dtype=torch.bfloat16) if tier == "bfloat16" else None
        searched, before = 0, self.uncertified.get(tier, 0)
        with torch.no_grad(), ieee_float32():
            for start, xq_all in chunks:
                for q0 in range(0, xq_all.shape[0], tile_q):
                    xq = xq_all[q0 : q0 + tile_q]
                    sent_on = self.uncertified.get(tier, 0) - before
                    if searched >= TRIAL_QUERIES and sent_on > GIVE_UP * searched:
                        # too many queries scored twice: the next tier alone from here
                        tier = TIERS[TIERS.index(tier) + 1]
                        searched, before = 0, self.uncertified.get(tier, 0)
                        self.gave_up += 1
                    i, d = self._search_tile(xq, k, c, tile_s, (scores, dots), tier)
                    searched += xq.shape[0]
                    lo = start + q0
                    ids[lo : lo + xq.shape[0]] = i
                    dists[lo : lo + xq.shape[0]] = d
                    if progress is not None:
                        progress(xq.shape[0])
        return ids, dists

    def _search_tile(
        self, xq, k: int, c: int, tile_s: int, bufs: tuple, tier: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, distances) of a tile of queries from the ``tier``'s candidates, those it
        cannot certify searched again by the next tier; ``bufs`` the search's (scores,
        products) buffers."""
        import torch

        scores, cand = self._candidates(xq, c, tile_s, bufs, tier)
        ids, dists = self._rerank(xq, cand, k)
        if tier == TIERS[-1] or c >= self._count:  # the last tier, or every pattern kept
            return ids, dists
        # the best score left out, lowered by the rounding bound, against the k-th kept one
        xnorm = torch.linalg.vector_norm(xq, dim=1, dtype=torch.float64)
        top = self._max_norm
        # the float32 norms and subtraction round too: 2^-20 of the scores' scale covers them
        bound = 2.0 * dot_error(tier, self.dim) * xnorm * top
        bound += 2.0**-20 * (top * top + 2 * xnorm * top)
        left_out = scores.max(dim=1).values.double() - bound
        kth = torch.from_numpy(dists[:, -1]).to(xq.device, torch.float64) ** 2
        # the k-th distance is the re-rank's: float64 on the CPU, float32 on a GPU (its norm
        # summed over dim terms, so it may fall short of the true one by dot_error's share)
        slack = 1e-6 if self._rerank_dtype == torch.float64 else 2 * dot_error("float32", self.dim)
        # k exact duplicates (a k-th distance of 0: identical float32 rows differ by exactly 0)
        # need no bound: no pattern is nearer than 0, whichever tied ones were kept
        ok = ((left_out > kth * (1 + slack) - xnorm**2) | (kth == 0)).cpu().numpy()
        redo = np.flatnonzero(~ok)
        if redo.size:
            self.uncertified[tier] += int(redo.size)
            xr = xq[torch.from_numpy(redo).to(xq.device)]
            ids[redo], dists[redo] = self._search_tile(
                xr, k, c, tile_s, bufs, TIERS[TIERS.index(tier) + 1]
            )
        return ids, dists

    def _candidates(self, xq, c: int, tile_s: int, bufs: tuple, tier: str):
        """(scores, ids) of the c best stored patterns by the score |y|^2 - 2 x.y in a tier's
        tiles: bfloat16 products with float32 scores, float32, or float64 (the stored rows
        and their norms cast a tile at a time, never a float64 copy of them all)."""
        import torch

        best_s = best_i = None
        scores, dots = bufs
        if tier == "float64":
            xq = xq.to(torch.float64)
            tile_s = max(1, _FLOAT64_TILE_BYTES // (8 * self.dim))
        elif tier == "bfloat16":
            xb = xq.to(torch.bfloat16)
        for s0 in range(0, self._count, tile_s):
            if tier == "float64":
                y = self._data[s0 : s0 + tile_s].to(torch.float64)
                norms = (y * y).sum(dim=1).unsqueeze(0)
                score = torch.addmm(norms, xq, y.T, alpha=-2.0)
            else:
                norms = self._sqnorm[s0 : s0 + tile_s].unsqueeze(0)
                shape = (xq.shape[0], norms.shape[1])
                score = scores[: shape[0] * shape[1]].view(shape)
                if tier == "bfloat16":
                    dot = dots[: shape[0] * shape[1]].view(shape)
                    torch.mm(xb, self._data_bf16[s0 : s0 + tile_s].T, out=dot)
                    score.copy_(dot).mul_(-2.0).add_(norms)
                else:
                    y = self._data[s0 : s0 + tile_s]
                    torch.addmm(norms, xq, y.T, alpha=-2.0, out=score)
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
        c = cand.shape[1]
        step = max(1, _RERANK_ELEMS // max(1, c * self.dim))
        for r0 in range(0, cand.shape[0], step):
            rows = cand[r0 : r0 + step]
            diff = torch.index_select(self._data, 0, rows.reshape(-1)).view(-1, c, self.dim)
            diff.sub_(xq[r0 : r0 + step].unsqueeze(1))
            out_d[r0 : r0 + step] = torch.linalg.vector_norm(diff, dim=2, dtype=self._rerank_dtype)
        order = torch.sort(out_d, dim=1, stable=True).indices[:, :k]
        ids = torch.gather(cand, 1, order)
        d = torch.gather(out_d, 1, order)
        return ids.cpu().numpy().astype(np.int64), d.to(torch.float32).cpu().numpy()
