"""One layer's patterns in, one :class:`LayerReport` out: every THEORY.md quantity of a layer.

The flow of :func:`measure`: drop non-finite rows (counted), normalize, build one index, one
self-excluded kNN search (it gives the nearest-pattern distances, the TwoNN pair and the graph
UMAP reuses), then the pure functions of :mod:`hopaudit.geometry` and :mod:`hopaudit.theory`.
Held-out queries add one more search (k = 1) for containment and their basins.

The saturation curve (the paper's Fig. 2) uses one fixed query set for every fraction: the
patterns of the *smallest* nested subset (25 % by default), which lie inside every larger subset.
For each fraction, each of them gets its distance to the nearest *other* pattern of that subset,
so the curves are over the same queries and differ only in how many patterns are stored. These
distances come from the kNN lists already computed (the first neighbour that belongs to the
subset is the nearest one in it); the few queries with no subset member among their k neighbours
are searched again with a larger k, then, if still needed, by brute force. No extra index.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hopaudit import geometry, theory
from hopaudit.errors import DataError, SearchError
from hopaudit.search.backends import (
    NeighborIndex,
    as_2d,
    build_index,
    graph_recall,
    keeps_rows,
    knn_self,
)

__all__ = ["INTERVAL_COLUMNS", "ROW_COLUMNS", "LayerReport", "bootstrap_intervals", "measure"]

#: The estimates that get a 95 % bootstrap interval (columns ``<name>_lo`` and ``<name>_hi``).
INTERVAL_ESTIMATES = (
    "r_hat",
    "separated_frac",
    "twonn_id",
    "log_z_vol",
    "floor_low",
    "floor_high",
)
INTERVAL_COLUMNS = tuple(f"{e}_{s}" for e in INTERVAL_ESTIMATES for s in ("lo", "hi"))

#: The per-layer table's columns, in order (what :meth:`LayerReport.row` returns).
ROW_COLUMNS = (
    "n",
    "n_patterns",
    "n_queries",
    "nn_mean",
    "nn_median",
    "nn_q10",
    "nn_q90",
    "r_hat",
    "r_hat_mean",
    "r_star",
    "r_ratio",
    "separated_frac",
    "contained_frac",
    "log_z_gauss",
    "log_z_vol",
    "r_c",
    "floor_low",
    "floor_high",
    "floor_gauss",
    "twonn_id",
    "nonfinite",
    "search_recall_at_1",
    "search_recall_at_k",
    "normalize",
    *INTERVAL_COLUMNS,
)


@dataclass(repr=False)
class LayerReport:
    """Everything measured on one layer. Pattern ids index the finite rows (``valid_rows``)."""

    n: int  # hidden size (the dimension of a pattern)
    n_patterns: int  # d: finite stored patterns used
    n_queries: int  # finite held-out queries used (0 without queries)
    normalize: str
    nn: np.ndarray  # (n_patterns,) distance to the nearest other pattern
    nn_queries: np.ndarray | None  # (n_queries,) held-out distance to the nearest pattern
    basin: np.ndarray  # (n_patterns,) nearest other pattern of each stored pattern
    basin_sizes: np.ndarray  # (n_patterns,) how many stored patterns have it as basin
    r_hat: float  # median(nn) / 2
    r_hat_mean: float  # mean(nn) / 2
    r_star: float  # sqrt(n / 2 pi e)
    r_ratio: float  # r_hat / r_star
    separated_frac: float  # fraction with nn > 2 r_star
    contained_frac: float | None  # queries inside their basin's ball (None without queries)
    log_z_gauss: float  # log sum_i I_n(r_i)
    log_z_vol: float  # log d + log V_n(r_hat)
    r_c: float  # critical radius, d V_n(r_c) = 1
    floor_low: float  # F(Z_vol)
    floor_high: float  # F(Z_vol) + log n_blocks
    floor_gauss: float  # F(Z_gauss)
    twonn_id: float  # TwoNN intrinsic dimension (nan when undefined)
    r_star_id: float  # r_star(twonn_id)
    saturation: dict[float, tuple[float, float]]  # fraction -> (mean, median)
    knn_ids: np.ndarray  # (n_patterns, k + 1) int64, self in column 0
    knn_dists: np.ndarray  # (n_patterns, k + 1) float32, 0 in column 0
    nonfinite: int  # pattern rows dropped for NaN/inf
    valid_rows: np.ndarray  # (n_patterns,) int64 rows of the input that were used
    index: NeighborIndex | None  # the index over the normalized patterns, for later queries
    # Beyond the contract (additions only):
    nn2: np.ndarray | None = None  # (n_patterns,) distance to the second nearest other pattern
    saturation_nn: dict[float, np.ndarray] = field(default_factory=dict)  # fraction -> dists
    saturation_queries: np.ndarray | None = None  # pattern ids the saturation curve queries
    basin_queries: np.ndarray | None = None  # (n_queries,) nearest pattern of each query
    basin_sizes_queries: np.ndarray | None = None  # (n_patterns,) held-out queries per pattern
    query_rows: np.ndarray | None = None  # rows of the query input that were used
    nonfinite_queries: int = 0  # query rows dropped for NaN/inf
    twonn_zero_pairs: int = 0  # patterns with an exact duplicate, left out of TwoNN
    # the search's recall@1 and recall@k on a seeded sample of the layer searched exactly
    # (docs/theory.md, "Search"): 1 for exact search, measured for the others
    search_recall_at_1: float = math.nan
    search_recall_at_k: float = math.nan
    # 95 % bootstrap intervals (docs/theory.md §7); nan when bootstrap=0
    bootstrap: int = 0  # resamples behind the intervals
    r_hat_lo: float = math.nan
    r_hat_hi: float = math.nan
    separated_frac_lo: float = math.nan
    separated_frac_hi: float = math.nan
    twonn_id_lo: float = math.nan
    twonn_id_hi: float = math.nan
    log_z_vol_lo: float = math.nan
    log_z_vol_hi: float = math.nan
    floor_low_lo: float = math.nan
    floor_low_hi: float = math.nan
    floor_high_lo: float = math.nan
    floor_high_hi: float = math.nan

    def row(self) -> dict[str, Any]:
        """The per-layer table's columns (``ROW_COLUMNS``); None becomes nan."""
        stats = geometry.summarize(self.nn)
        values = {
            "n": self.n,
            "n_patterns": self.n_patterns,
            "n_queries": self.n_queries,
            "nn_mean": stats["mean"],
            "nn_median": stats["median"],
            "nn_q10": stats["q10"],
            "nn_q90": stats["q90"],
            "r_hat": self.r_hat,
            "r_hat_mean": self.r_hat_mean,
            "r_star": self.r_star,
            "r_ratio": self.r_ratio,
            "separated_frac": self.separated_frac,
            "contained_frac": math.nan if self.contained_frac is None else self.contained_frac,
            "log_z_gauss": self.log_z_gauss,
            "log_z_vol": self.log_z_vol,
            "r_c": self.r_c,
            "floor_low": self.floor_low,
            "floor_high": self.floor_high,
            "floor_gauss": self.floor_gauss,
            "twonn_id": self.twonn_id,
            "nonfinite": self.nonfinite,
            "search_recall_at_1": self.search_recall_at_1,
            "search_recall_at_k": self.search_recall_at_k,
            "normalize": self.normalize,
        }
        values.update({c: getattr(self, c) for c in INTERVAL_COLUMNS})
        return {c: values[c] for c in ROW_COLUMNS}

    def __repr__(self) -> str:
        kind = getattr(self.index, "kind", None)
        contained = "-" if self.contained_frac is None else f"{self.contained_frac:.3f}"
        return (
            f"LayerReport(n={self.n}, patterns={self.n_patterns}, queries={self.n_queries}, "
            f"normalize={self.normalize!r}, index={kind!r}, r_hat={self.r_hat:.4g}, "
            f"r_star={self.r_star:.4g}, ratio={self.r_ratio:.3g}, "
            f"separated={self.separated_frac:.3f}, contained={contained}, "
            f"log_z_vol={self.log_z_vol:.4g}, floor=({self.floor_low:.4g}, "
            f"{self.floor_high:.4g}), twonn_id={self.twonn_id:.3g})"
        )


def measure(
    patterns: np.ndarray,
    queries: np.ndarray | None = None,
    *,
    normalize: str = "rms",
    index: str = "auto",
    k: int = 15,
    fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    n_blocks: int = 1,
    seed: int = 0,
    device: object = None,
    bootstrap: int = 200,
    saturation_max: int | None = None,
    progress: Callable[[str, int], object] | None = None,
) -> LayerReport:
    """Measure one layer: ``patterns`` (d, n) are the stored set, ``queries`` (m, n) an
    optional held-out set. ``k`` neighbours per pattern (at least 2 are searched, for TwoNN)
    form the kNN graph; ``n_blocks`` is the model's block count for the loss band.
    ``bootstrap`` resamples (0: none) give the 95 % intervals ``r_hat_lo``/``r_hat_hi`` and the
    like, from the distances already found (:func:`bootstrap_intervals`).
    ``saturation_max`` caps the saturation curve's query set (a seeded subsample of the
    smallest subset; its size is ``len(saturation_queries)``), None for no cap.
    ``progress(stage, rows)`` follows the two long steps of a large layer: ``"index"`` as rows
    go into the index, then ``"search"`` as they are searched.

    Raises :class:`SearchError` for fewer than 3 finite patterns or mismatched query width.
    """
    if normalize not in geometry.NORMALIZE_MODES:
        raise DataError(
            f"normalize must be one of {geometry.NORMALIZE_MODES}; got {normalize!r}. 'rms' "
            "scales each vector to unit RMS per coordinate, 'none' keeps raw activations."
        )
    if int(k) != k or k < 1:
        raise SearchError(f"k must be a positive integer; got {k!r}.")
    raw = as_2d(patterns, "patterns")
    mask = geometry.finite_rows(raw)
    valid_rows = np.flatnonzero(mask).astype(np.int64)
    nonfinite = int(raw.shape[0] - valid_rows.size)
    d, n = int(valid_rows.size), int(raw.shape[1])
    if d < 3:
        raise SearchError(
            f"need at least 3 finite patterns to measure a layer; got {d} "
            f"({raw.shape[0]} rows, {nonfinite} with NaN/inf). Give the layer more sequences."
        )
    x = geometry.normalize_rows(raw if nonfinite == 0 else raw[valid_rows], normalize)
    if x is not raw:
        _drop_mapped_pages(raw)  # a memmapped layer: its pages leave the RSS before the index

    def step(stage: str) -> Callable[[int], object] | None:
        return None if progress is None else (lambda rows: progress(stage, rows))

    # a copy of our own (normalized, or the finite rows) may be taken over by the index
    own = x is not raw and not np.may_share_memory(x, raw)
    idx = build_index(x, index, device=device, progress=step("index"), adopt=own)
    if keeps_rows(idx):
        # the index searches its own rows, so the patterns go now (a layer less while it
        # searches); the few rows the saturation curve reads again are normalized anew, row
        # by row as before: the same values
        x = _PatternRows(raw, valid_rows, nonfinite, normalize)
    kk = min(max(int(k), 2), d - 1)
    ids, dists = knn_self(idx, None if isinstance(x, _PatternRows) else x, kk, step("search"))
    recall = _search_recall(idx, x, dists, seed)
    nn = dists[:, 0].astype(np.float64)
    nn2 = dists[:, 1].astype(np.float64)
    self_col = np.arange(d, dtype=np.int64)[:, None]
    knn_ids = np.concatenate([self_col, ids], axis=1)
    knn_dists = np.concatenate([np.zeros((d, 1), np.float32), dists], axis=1)

    radii = geometry.ball_radii(nn)
    r_hat, r_hat_mean = geometry.typical_radius(nn)
    r_star = float(theory.r_star(n))
    basin = ids[:, 0].copy()

    report_q = _measure_queries(queries, idx, n, normalize, radii) if queries is not None else {}

    twonn, twonn_zero_pairs = geometry.twonn_from_knn(dists, ids)
    r_star_id = float(theory.r_star(twonn)) if math.isfinite(twonn) and twonn > 0 else math.nan
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_z_gauss = float(theory.log_partition(radii, n))
        log_z_vol = float(theory.log_partition_volume(r_hat, n, d))
        floor_low, floor_high = (float(v) for v in theory.floor_band(log_z_vol, n_blocks))
        floor_gauss = float(theory.loss_floor(log_z_gauss))
    sat_queries, sat_nn = _saturation(x, idx, ids, dists, fractions, seed, saturation_max)
    if int(bootstrap) != bootstrap or bootstrap < 0:
        raise DataError(f"bootstrap is a number of resamples >= 0 (0: off), got {bootstrap!r}")
    intervals = bootstrap_intervals(nn, nn2, basin, n, r_star, n_blocks, int(bootstrap), seed)

    return LayerReport(
        n=n,
        n_patterns=d,
        n_queries=report_q.get("n_queries", 0),
        normalize=normalize,
        nn=nn,
        nn_queries=report_q.get("nn_queries"),
        basin=basin,
        basin_sizes=geometry.basin_sizes(basin, d),
        r_hat=r_hat,
        r_hat_mean=r_hat_mean,
        r_star=r_star,
        r_ratio=r_hat / r_star,
        separated_frac=geometry.separated_fraction(nn, r_star),
        contained_frac=report_q.get("contained_frac"),
        log_z_gauss=log_z_gauss,
        log_z_vol=log_z_vol,
        r_c=float(theory.critical_radius(n, d)),
        floor_low=floor_low,
        floor_high=floor_high,
        floor_gauss=floor_gauss,
        twonn_id=float(twonn),
        r_star_id=r_star_id,
        saturation=geometry.saturation(sat_nn) if sat_nn else {},
        knn_ids=knn_ids,
        knn_dists=knn_dists,
        nonfinite=nonfinite,
        valid_rows=valid_rows,
        index=idx,
        nn2=nn2,
        saturation_nn=sat_nn,
        saturation_queries=sat_queries,
        basin_queries=report_q.get("basin_queries"),
        basin_sizes_queries=report_q.get("basin_sizes_queries"),
        query_rows=report_q.get("query_rows"),
        nonfinite_queries=report_q.get("nonfinite_queries", 0),
        twonn_zero_pairs=twonn_zero_pairs,
        search_recall_at_1=recall[0],
        search_recall_at_k=recall[1],
        bootstrap=int(bootstrap),
        **intervals,
    )


def _search_recall(
    index: NeighborIndex, x: np.ndarray | _PatternRows, dists: np.ndarray, seed: int
) -> tuple[float, float]:
    """(recall@1, recall@k) of the layer's search: 1 for exact search, the clustered index's
    own measurement on its sample, and for HNSW one made here on a sample searched exactly."""
    if index.kind == "exact":
        return 1.0, 1.0
    measured = getattr(index, "recall", None)
    if measured:
        return float(measured["recall_at_1"]), float(measured["recall_at_k"])
    if isinstance(x, _PatternRows):
        return math.nan, math.nan
    return graph_recall(x, dists, seed=seed)


class _PatternRows:
    """Rows of a layer's normalized patterns, normalized when read (``rows[ids]``): what
    :func:`measure` keeps of them once an exact index holds its own copy."""

    def __init__(self, raw: np.ndarray, valid_rows: np.ndarray, nonfinite: int, mode: str):
        self.raw, self.valid_rows, self.nonfinite, self.mode = raw, valid_rows, nonfinite, mode

    def __getitem__(self, ids: np.ndarray) -> np.ndarray:
        rows = np.asarray(ids) if self.nonfinite == 0 else self.valid_rows[np.asarray(ids)]
        return geometry.normalize_rows(np.asarray(self.raw[rows]), self.mode)


def _components(basin: np.ndarray) -> np.ndarray:
    """Component id of every pattern in the nearest-neighbour graph (edges i - basin[i])."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    d = basin.size
    graph = coo_matrix((np.ones(d), (np.arange(d), basin)), shape=(d, d))
    return connected_components(graph, directed=False)[1]


def bootstrap_intervals(
    nn: np.ndarray,
    nn2: np.ndarray,
    basin: np.ndarray,
    n: int,
    r_star: float,
    n_blocks: int,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Percentile-bootstrap intervals of r_hat, the separated fraction, TwoNN, log Z_vol and the
    floors, from the nearest-neighbour distances already found (no new search).

    The resampled unit is a component of the nearest-neighbour graph (i - basin[i]), not a
    single pattern: mutual nearest neighbours share one distance, so resampling patterns
    counts each such distance as two independent draws and gives intervals too narrow
    (docs/theory.md §7 has the measured coverage). Each resample draws as many components as
    there are, with replacement; every pattern weighs the number of times its component was
    drawn. The pattern count d of log Z_vol stays the one measured.
    """
    out = {c: math.nan for c in INTERVAL_COLUMNS}
    d = nn.size
    if n_boot <= 0 or d < 3:
        return out
    comp = _components(np.asarray(basin, dtype=np.int64))
    n_comp = int(comp.max()) + 1
    order = np.argsort(nn, kind="stable")
    nn_sorted = nn[order]
    comp_sorted = comp[order]
    usable = (nn > 0) & (nn2 > 0) & np.isfinite(nn) & np.isfinite(nn2)
    log_mu = np.zeros(d)
    log_mu[usable] = np.log(nn2[usable] / nn[usable])
    separated = (nn > 2.0 * r_star).astype(np.float64)
    rng = np.random.default_rng(seed)
    r_hat = np.empty(n_boot)
    sep = np.empty(n_boot)
    twonn = np.empty(n_boot)
    for b in range(n_boot):
        counts = np.bincount(rng.integers(0, n_comp, n_comp), minlength=n_comp)
        w = counts[comp].astype(np.float64)
        total = w.sum()
        # the median of the resample (each pattern repeated w times), as np.median takes it
        cum = np.cumsum(counts[comp_sorted])
        lo_i = np.searchsorted(cum, (total - 1) // 2, side="right")
        hi_i = np.searchsorted(cum, total // 2, side="right")
        r_hat[b] = (nn_sorted[lo_i] + nn_sorted[hi_i]) / 4.0
        sep[b] = float(w @ separated) / total
        used = float(w @ usable)
        s = float(w @ log_mu)
        twonn[b] = used / s if used >= 3 and s > 0 else math.nan
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_z = np.asarray(theory.log_partition_volume(r_hat, n, d), dtype=np.float64)
        low, high = (np.asarray(v, dtype=np.float64) for v in theory.floor_band(log_z, n_blocks))
    tail = (1 - level) / 2 * 100
    for name, values in (
        ("r_hat", r_hat),
        ("separated_frac", sep),
        ("twonn_id", twonn),
        ("log_z_vol", log_z),
        ("floor_low", low),
        ("floor_high", high),
    ):
        finite = values[np.isfinite(values)]
        if finite.size:
            out[f"{name}_lo"], out[f"{name}_hi"] = (
                float(v) for v in np.percentile(finite, [tail, 100 - tail])
            )
    return out


def _drop_mapped_pages(arr: Any) -> None:
    """Tell the kernel this process no longer needs a memory map's pages (they stay in the page
    cache; reading them again maps them back), so one layer's raw rows do not stay resident
    beside its normalized copy and index (docs/scale.md)."""
    import contextlib
    import mmap

    if not isinstance(arr, np.memmap) or getattr(arr, "mode", None) != "r":
        return  # only read-only maps: a copy-on-write map's pages may hold the caller's edits
    handle = getattr(arr, "_mmap", None)
    if handle is not None and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            handle.madvise(mmap.MADV_DONTNEED)


def _measure_queries(
    queries: np.ndarray, idx: NeighborIndex, n: int, normalize: str, radii: np.ndarray
) -> dict[str, Any]:
    """Held-out queries: nearest stored pattern (basin), its distance, containment."""
    q = as_2d(queries, "queries")
    if q.shape[1] != n:
        raise SearchError(
            f"queries have dimension {q.shape[1]} but the patterns have {n}; "
            "give held-out activations of the same layer."
        )
    q_mask = geometry.finite_rows(q)
    rows = np.flatnonzero(q_mask).astype(np.int64)
    out: dict[str, Any] = {"nonfinite_queries": int(q.shape[0] - rows.size), "query_rows": rows}
    if rows.size == 0:  # nothing usable: the layer is still measured, without containment
        return out
    qx = geometry.normalize_rows(q if rows.size == q.shape[0] else q[rows], normalize)
    q_ids, q_dists = idx.query(qx, 1)
    basin_q = q_ids[:, 0]
    nn_q = q_dists[:, 0].astype(np.float64)
    out.update(
        n_queries=int(rows.size),
        nn_queries=nn_q,
        basin_queries=basin_q,
        basin_sizes_queries=geometry.basin_sizes(basin_q, radii.size),
        contained_frac=geometry.contained_fraction(nn_q, basin_q, radii),
    )
    return out


def _saturation(
    x: np.ndarray | _PatternRows,
    idx: NeighborIndex,
    ids: np.ndarray,
    dists: np.ndarray,
    fractions: Sequence[float],
    seed: int,
    max_queries: int | None = None,
) -> tuple[np.ndarray | None, dict[float, np.ndarray]]:
    """Nearest-other-pattern distance of the smallest subset's patterns within each subset
    (a seeded subsample of at most ``max_queries`` of them when given)."""
    if not fractions:
        return None, {}
    d = ids.shape[0]
    subsets = geometry.subset_indices(d, fractions, seed)
    queries = subsets[min(subsets)]
    if max_queries is not None and queries.size > max_queries:
        rng = np.random.default_rng(seed)
        queries = np.sort(rng.choice(queries, size=int(max_queries), replace=False))
    out: dict[float, np.ndarray] = {}
    for fraction, members in subsets.items():
        if members.size < 2:  # no other pattern to measure against
            out[fraction] = np.full(queries.size, np.nan)
            continue
        if members.size == d:
            out[fraction] = dists[queries, 0].astype(np.float64)
            continue
        member = np.zeros(d, dtype=bool)
        member[members] = True
        out[fraction] = _nearest_member(x, idx, ids, dists, queries, member)
    return queries, out


def _nearest_member(
    x: np.ndarray | _PatternRows,
    idx: NeighborIndex,
    ids: np.ndarray,
    dists: np.ndarray,
    queries: np.ndarray,
    member: np.ndarray,
) -> np.ndarray:
    """For each query pattern, the distance to its nearest other pattern with member[id]."""
    d = ids.shape[0]
    result = np.full(queries.size, np.nan)
    hit = member[ids[queries]]
    found = hit.any(axis=1)
    first = hit.argmax(axis=1)
    result[found] = dists[queries[found], first[found]]
    todo = np.flatnonzero(~found)
    if todo.size:  # a wider search for the few with no member among their k neighbours
        wide = min(d, max(4 * ids.shape[1] + 1, 64))
        w_ids, w_dists = idx.query(x[queries[todo]], wide)
        ok = member[w_ids] & (w_ids != queries[todo, None])
        got = ok.any(axis=1)
        result[todo[got]] = w_dists[got, ok[got].argmax(axis=1)]
        todo = todo[~got]
    if todo.size:  # last resort: brute force in float64 against the members
        others = np.flatnonzero(member)
        q_rows = np.asarray(x[queries[todo]], dtype=np.float64)
        best = np.full(todo.size, np.inf)
        for start in range(0, others.size, 8192):
            block_ids = others[start : start + 8192]
            block = np.asarray(x[block_ids], dtype=np.float64)
            for j, q in enumerate(queries[todo]):
                diff = block[block_ids != q] - q_rows[j]
                if diff.size:
                    best[j] = min(best[j], float(np.min(np.einsum("ij,ij->i", diff, diff))))
        result[todo] = np.sqrt(best)
    return result
