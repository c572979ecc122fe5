"""UMAP on the kNN graph the search already built (no second neighbour search).

umap-learn's ``precomputed_knn`` takes the graph with each point itself in column 0 and wants
exactly ``n_neighbors`` columns: with fewer it silently recomputes the neighbours itself, and
below 4096 points it does not prune extra columns. So this module hands it exactly the right
columns, checks the graph first, and imports umap only when a layout is asked for (its import
takes seconds).

Start and length: from the patterns' 2 principal components, ``DEFAULT_EPOCHS`` (60) epochs
give a layout as trustworthy as umap's own spectral start with 200, at a quarter of the time;
the sweep that chose 60 is in benchmarks/README.md (``benchmarks/umap_precomputed.py --epochs
40,60,100``). So when the patterns are passed (``data``), the layout starts from their PCA; pass
``n_epochs=100`` or more for tighter basins. Without the patterns it keeps umap's spectral start
and epoch count. The PCA start is made here (:func:`pca_start`, reading the patterns a chunk at
a time) and handed to umap as a layout, scaled and jittered as umap scales its own: umap's
``"pca"`` start copied the patterns twice (its input, indexed whole, and sklearn's centring).

Seeded or not: umap's ``random_state`` forces its optimisation onto one thread, so
``seed=None`` allows parallel epochs but gives a different layout every run. The default is
``seed=0``: reproducible layouts (audits compare, timelines align); pass ``seed=None`` on a
many-core machine when speed matters more than reproducibility.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from hopaudit.errors import SearchError

__all__ = [
    "DEFAULT_EPOCHS",
    "MIN_POINTS",
    "Embedding",
    "LayoutInputs",
    "cache_umap_jit",
    "embed_layer",
    "lay_out",
    "layout_inputs",
    "layout_parameters",
    "pca_start",
    "place",
    "umap_from_knn",
]

#: umap-learn's defaults that :func:`umap_from_knn` keeps and :func:`place` needs again.
SPREAD = 1.0
TRANSFORM_SEED = 42

#: The fewest points UMAP can lay out: each needs itself and at least one neighbour, and the
#: spectral initialisation needs more points than the 2 output dimensions.
MIN_POINTS = 4
#: Epochs when the layout starts from the patterns' PCA or a given layout (see above).
DEFAULT_EPOCHS = 60
#: Extra directions and power iterations of :func:`pca_start`'s randomized subspace iteration:
#: sklearn's randomized PCA defaults for two components.
PCA_OVERSAMPLES, PCA_ITERATIONS = 10, 7
#: Bytes of float32 rows :func:`pca_start` reads at once.
_PCA_CHUNK_BYTES = 16 << 20

_jit_cache_asked = False


@dataclass
class Embedding:
    """A 2-D UMAP of one layer's patterns: ``xy`` (m, 2) for stored rows ``rows``."""

    xy: np.ndarray
    rows: np.ndarray
    sequence: np.ndarray
    basin: np.ndarray
    ratio: np.ndarray
    n_total: int = 0
    #: What :func:`place` needs besides ``xy`` (umap's ``transform``): the layout's neighbours
    #: (self included) and epochs; None on embeddings saved before they were kept, where
    #: :func:`layout_parameters` derives them as :func:`embed_layer` chose them.
    n_neighbors: int | None = None
    n_epochs: int | None = None
    min_dist: float = 0.1

    @property
    def subsampled(self) -> bool:
        return len(self.rows) < self.n_total


def cache_umap_jit() -> int:
    """Turn on numba's on-disk cache for umap's own jitted functions; the number turned on.

    Idempotent and never fatal: a numba without ``enable_caching`` or a machine with no
    writable cache location leaves umap compiling in memory, as it does by default.
    """
    global _jit_cache_asked
    if _jit_cache_asked:
        return 0
    _jit_cache_asked = True
    try:
        import umap.layouts
        import umap.umap_
        import umap.utils
        from numba.core.dispatcher import Dispatcher
    except ImportError:
        return 0
    turned_on = 0
    for module in (umap.umap_, umap.layouts, umap.utils):
        for fn in list(vars(module).values()):
            if isinstance(fn, Dispatcher) and hasattr(fn, "enable_caching"):
                try:
                    fn.enable_caching()
                except RuntimeError:  # numba found no writable place for a cache
                    return turned_on
                turned_on += 1
    return turned_on


def _check_graph(knn_ids: ArrayLike, knn_dists: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(knn_ids)
    dists = np.asarray(knn_dists)
    if ids.ndim != 2 or dists.shape != ids.shape:
        raise SearchError(
            f"the kNN graph must be two (n, k + 1) arrays of the same shape (ids and distances, "
            f"the point itself in column 0); got ids {ids.shape} and distances {dists.shape}"
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise SearchError(f"knn_ids must be integers, got dtype {ids.dtype}")
    n, cols = ids.shape
    if n and (ids.min() < 0 or ids.max() >= n):
        raise SearchError(
            f"knn_ids must lie in [0, {n}) (missing neighbours are not allowed); got values "
            f"from {ids.min()} to {ids.max()}"
        )
    if cols == 0 or not np.array_equal(ids[:, 0], np.arange(n)):
        raise SearchError(
            "column 0 of the kNN graph must be each point itself (ids[i, 0] == i), as "
            "measure() builds it; prepend the self column to a self-excluded graph"
        )
    if not np.all(np.isfinite(dists)) or np.any(dists < 0):
        raise SearchError("knn_dists must be finite and >= 0")
    return ids, dists


def pca_start(data: ArrayLike, seed: int | None = 0) -> np.ndarray:
    """The rows of ``data`` (n, d) on their top two principal axes: (n, 2) float32.

    Randomized subspace iteration (Halko, Martinsson and Tropp 2011; ``PCA_OVERSAMPLES``,
    ``PCA_ITERATIONS``) on the centred rows, never formed: the products read ``data`` 16 MiB
    at a time, so no copy of the patterns is made. Each axis is signed as sklearn signs its
    components (its largest coefficient positive); with d = 1 the second coordinate is 0.
    """
    x = np.asarray(data)
    n, d = x.shape
    step = max(1, _PCA_CHUNK_BYTES // (4 * max(d, 1)))
    chunks = [slice(s, s + step) for s in range(0, n, step)]
    mean = sum(x[c].sum(0, dtype=np.float64) for c in chunks) / n

    def times(q: np.ndarray) -> np.ndarray:  # centred rows @ q
        q32 = q.astype(np.float32)
        out = np.concatenate([x[c].astype(np.float32, copy=False) @ q32 for c in chunks])
        return out.astype(np.float64) - mean @ q

    def t_times(y: np.ndarray) -> np.ndarray:  # centred rows.T @ y
        acc = np.zeros((d, y.shape[1]))
        for c in chunks:
            acc += x[c].astype(np.float32, copy=False).T @ y[c].astype(np.float32)
        return acc - np.outer(mean, y.sum(0))

    r = min(d, n, 2 + PCA_OVERSAMPLES)
    q = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, r)))[0]
    for _ in range(PCA_ITERATIONS):
        q = np.linalg.qr(t_times(times(q)))[0]
    y = times(q)
    top = np.linalg.eigh(y.T @ y)[1][:, ::-1][:, :2]  # the covariance within span(q)
    axes = q @ top
    signs = np.sign(axes[np.abs(axes).argmax(0), np.arange(axes.shape[1])])
    out = np.zeros((n, 2), np.float32)
    out[:, : top.shape[1]] = y @ (top * np.where(signs == 0, 1.0, signs))
    return out


def umap_from_knn(
    knn_ids: ArrayLike,
    knn_dists: ArrayLike,
    *,
    n_neighbors: int = 15,
    seed: int | None = 0,
    init: ArrayLike | None = None,
    min_dist: float = 0.1,
    data: ArrayLike | None = None,
    n_epochs: int | None = None,
) -> np.ndarray:
    """A 2-D UMAP layout (n, 2) float32 from a kNN graph with self in column 0.

    - ``n_neighbors`` counts the point itself, as in umap-learn; the graph needs at least that
      many columns (it is reduced to n - 1 when there are only n <= n_neighbors points).
    - ``seed``: an int gives a reproducible layout; umap then runs its optimisation on one
      thread. ``None`` lets it use every core, and the layout changes from run to run.
    - ``init``: a previous (n, 2) layout to start from (timelines keep their frames aligned);
      by default the PCA of ``data`` when it is given, else the spectral layout of the graph.
    - ``data``: the (n, features) patterns the graph was built from, optional. They give the
      PCA start; without them the spectral start places the graph's disconnected components
      at random (the graph holds no distance between components).
    - ``n_epochs``: ``None`` means ``DEFAULT_EPOCHS`` from a PCA or given start and umap's
      own default (200 epochs, 500 below 10 000 points) from the spectral start.
    """
    ids, dists = _check_graph(knn_ids, knn_dists)
    n, cols = ids.shape
    if n < MIN_POINTS:
        raise SearchError(
            f"UMAP needs at least {MIN_POINTS} points to lay out, got {n}; "
            "store more sequences or skip the embedding for this layer"
        )
    if int(n_neighbors) != n_neighbors or n_neighbors < 2:
        raise ValueError(f"n_neighbors must be an integer >= 2 (self included), got {n_neighbors}")
    k = min(int(n_neighbors), n - 1)
    if cols < k:
        raise SearchError(
            f"the kNN graph has {cols} columns (self + {cols - 1} neighbours) but n_neighbors="
            f"{k} needs {k}; search with k >= {k - 1} other neighbours or lower n_neighbors"
        )
    # exactly k columns, always copies: umap writes into its graph arrays, and the graph may be
    # a read-only memory map (a saved audit's, or one beside a store)
    ids_k = np.array(ids[:, :k], dtype=np.int64, order="C", copy=True)
    dists_k = np.array(dists[:, :k], dtype=np.float32, order="C", copy=True)

    if n_epochs is not None and (int(n_epochs) != n_epochs or n_epochs < 1):
        raise ValueError(f"n_epochs must be a positive integer or None, got {n_epochs}")
    if init is None:
        init_arg: str | np.ndarray = "spectral"
    else:
        init_arg = np.asarray(init, dtype=np.float32)
        if init_arg.shape != (n, 2) or not np.all(np.isfinite(init_arg)):
            raise ValueError(
                f"init must be a finite (n, 2) layout with n = {n} rows, got shape {init_arg.shape}"
            )

    # UMAP needs an (n, features) array to fit; with a precomputed graph and a start of ours it
    # reads only its shape, and from the spectral start component centroids when the graph is
    # disconnected. One random column gives those components random, distinct places.
    x = np.random.default_rng(seed).normal(size=(n, 1)).astype(np.float32)
    if data is not None:
        patterns = _checked_patterns(data, n)
        if init is None:
            init_arg = _scaled_start(pca_start(patterns, seed), seed)
    if n_epochs is None and not (isinstance(init_arg, str) and init_arg == "spectral"):
        n_epochs = DEFAULT_EPOCHS

    import umap  # lazy: importing umap (numba, pynndescent) takes seconds

    cache_umap_jit()

    reducer = umap.UMAP(
        n_neighbors=k,
        n_components=2,
        min_dist=min_dist,
        init=init_arg,
        n_epochs=None if n_epochs is None else int(n_epochs),
        random_state=seed,
        n_jobs=1 if seed is not None else -1,
        precomputed_knn=(ids_k, dists_k, None),
    )
    with warnings.catch_warnings():
        # no NNDescent index is passed (we never call transform), and that is fine
        warnings.filterwarnings("ignore", message=r".*knn_search_index.*")
        # clustered activations often give a disconnected graph: umap lays the components
        # out one by one (see `data`), the warning has nothing for the user to act on
        warnings.filterwarnings("ignore", message=r"Graph is not fully connected")
        layout = reducer.fit_transform(x)
    return np.ascontiguousarray(layout, dtype=np.float32)


def _checked_patterns(data: ArrayLike, n: int) -> np.ndarray:
    """``data`` as an array of ``n`` finite rows, or a ValueError that says what is wrong."""
    patterns = np.asarray(data)
    if patterns.ndim != 2 or patterns.shape[0] != n:
        raise ValueError(f"data must have {n} rows like the graph, got shape {patterns.shape}")
    if not all(np.isfinite(patterns[s : s + 4096]).all() for s in range(0, n, 4096)):
        raise ValueError("data must be finite (the PCA start cannot use NaN or inf rows)")
    return patterns


def _scaled_start(xy: np.ndarray, seed: int | None) -> np.ndarray:
    """A PCA start as umap scales its own (``noisy_scale_coords``): the largest coordinate 10,
    and a jitter of 1e-4 that keeps identical patterns apart."""
    top = float(np.abs(xy).max())
    scaled = xy * np.float32(10.0 / top) if top > 0 else xy
    noise = np.random.default_rng(seed).normal(scale=1e-4, size=xy.shape)
    return (scaled + noise).astype(np.float32)


def _normalized_rows(activations: np.ndarray, rows: np.ndarray, normalize: str) -> np.ndarray:
    """``activations[rows]`` normalized, as one float32 array filled a chunk at a time: no
    full-size copy in the store's dtype beside it."""
    from hopaudit.geometry import normalize_rows

    out = np.empty((len(rows), activations.shape[1]), np.float32)
    step = max(1, (4 << 20) // max(1, 4 * activations.shape[1]))  # 4 MiB of float32 rows
    for s in range(0, len(rows), step):
        out[s : s + step] = normalize_rows(activations[rows[s : s + step]], normalize)
    return out


@dataclass
class LayoutInputs:
    """What a layer's layout starts from, made before umap is imported: the points (``pick``,
    positions among the layer's valid rows), their kNN graph (self in column 0) and the PCA
    start of their patterns, scaled as umap scales its own. The patterns themselves are gone."""

    pick: np.ndarray
    knn_ids: np.ndarray
    knn_dists: np.ndarray
    start: np.ndarray | None
    n_neighbors: int
    n_epochs: int


def layout_inputs(
    report: Any, activations: np.ndarray, max_points: int, seed: int, device: Any
) -> LayoutInputs:
    """A layer's :class:`LayoutInputs`: at most ``max_points`` of its valid patterns (a seeded
    subsample, with a fresh graph among them), their graph and their PCA start."""
    from hopaudit.search.backends import build_index, keeps_rows, knn_self

    valid = np.asarray(report.valid_rows)
    n = len(valid)
    k = report.knn_ids.shape[1] - 1
    if max_points and n > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
        sub = _normalized_rows(activations, valid[pick], report.normalize)
        kind = "auto" if report.index.kind == "clustered" else report.index.kind
        # the index keeps the subsample itself, centred in place (exact and clustered on the
        # CPU; a copy otherwise): the layout's PCA start is the same for centred rows
        idx = build_index(sub, kind, device=device, adopt=True)
        ids, dists = knn_self(idx, None if keeps_rows(idx) else sub, k)
        del idx
        ids = np.concatenate([np.arange(len(pick))[:, None], ids], axis=1)
        dists = np.concatenate([np.zeros((len(pick), 1), dists.dtype), dists], axis=1)
    else:
        pick = np.arange(n)
        ids, dists = report.knn_ids, report.knn_dists
        sub = _normalized_rows(activations, valid, report.normalize)
    n_neighbors, n_epochs = layout_parameters(len(pick), k)
    # the patterns give the layout its PCA start (module docstring: why, measured); too few
    # points get none, and umap_from_knn says why it cannot lay them out
    start = None
    if len(pick) >= MIN_POINTS:
        start = _scaled_start(pca_start(_checked_patterns(sub, len(pick)), seed), seed)
    return LayoutInputs(pick, ids, dists, start, n_neighbors, n_epochs)


def lay_out(report: Any, inputs: LayoutInputs, row_sequence: np.ndarray, seed: int) -> Embedding:
    """A layer's UMAP :class:`Embedding` from its :class:`LayoutInputs`."""
    pick = inputs.pick
    xy = umap_from_knn(
        inputs.knn_ids,
        inputs.knn_dists,
        n_neighbors=inputs.n_neighbors,
        seed=seed,
        init=inputs.start,
        n_epochs=inputs.n_epochs,
    )
    rows = np.asarray(report.valid_rows)[pick]
    ratio = report.nn[pick] / report.r_hat if report.r_hat > 0 else np.full(len(pick), np.nan)
    return Embedding(
        xy=np.asarray(xy, dtype=np.float32),
        rows=rows,
        sequence=row_sequence[rows],
        basin=np.asarray(report.basin)[pick],
        ratio=np.asarray(ratio, dtype=np.float32),
        n_total=len(report.valid_rows),
        n_neighbors=inputs.n_neighbors,
        n_epochs=inputs.n_epochs,
    )


def embed_layer(
    report: Any,
    activations: np.ndarray,
    row_sequence: np.ndarray,
    max_points: int,
    seed: int,
    device: Any,
) -> Embedding:
    """UMAP of one layer on the kNN graph its search built (a fresh graph for a subsample):
    :func:`layout_inputs`, then :func:`lay_out`."""
    inputs = layout_inputs(report, activations, max_points, seed, device)
    return lay_out(report, inputs, row_sequence, seed)


def layout_parameters(n_points: int, k: int) -> tuple[int, int]:
    """(n_neighbors, n_epochs) of :func:`embed_layer`'s layout of ``n_points`` patterns whose
    graph holds ``k`` other neighbours: at most 15 neighbours with self, fewer than the points,
    and ``DEFAULT_EPOCHS`` from the patterns' PCA."""
    return min(int(k) + 1, 15, int(n_points) - 1), DEFAULT_EPOCHS


def place(
    xy: ArrayLike,
    neighbour_ids: ArrayLike,
    neighbour_dists: ArrayLike,
    *,
    n_epochs: int,
    min_dist: float = 0.1,
    seed: int = TRANSFORM_SEED,
    parallel: bool = False,
) -> np.ndarray:
    """New points on a fitted layout, as ``umap.UMAP.transform`` places them: (m, 2) float32.

    ``xy`` (n, 2) is the fitted layout; ``neighbour_ids``/``neighbour_dists`` (m, n_neighbors)
    each new point's nearest laid-out points in pattern space (ascending, as many as the
    layout's ``n_neighbors``), which the layer's own index gives, so no second index is kept.
    The steps are umap-learn 0.5's ``transform``: fuzzy memberships of the neighbours
    (``smooth_knn_dist``, local connectivity 0), the membership-weighted mean of their places as
    the start, then ``n_epochs // 3`` epochs moving only the new points (``seed`` is umap's
    ``transform_seed``). ``tests/layer/test_place.py`` checks it against umap's own transform.
    """
    import scipy.sparse
    import umap.umap_ as U

    cache_umap_jit()
    emb = np.ascontiguousarray(xy, dtype=np.float32)
    ids = np.ascontiguousarray(neighbour_ids, dtype=np.int32)
    dists = np.ascontiguousarray(neighbour_dists, dtype=np.float32)
    if ids.ndim != 2 or dists.shape != ids.shape or ids.shape[1] < 1:
        raise SearchError(
            f"place() needs (m, n_neighbors) neighbour ids and distances, got {ids.shape} and "
            f"{dists.shape}"
        )
    if ids.size and (ids.min() < 0 or ids.max() >= len(emb)):
        raise SearchError(f"neighbour ids must lie in [0, {len(emb)})")
    m, n_neighbors = ids.shape
    rng_state = np.random.RandomState(seed).randint(U.INT32_MIN, U.INT32_MAX, 3).astype(np.int64)
    sigmas, rhos = U.smooth_knn_dist(dists, float(n_neighbors), local_connectivity=0.0)
    rows, cols, vals, _ = U.compute_membership_strengths(ids, dists, sigmas, rhos, bipartite=True)
    graph = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(m, len(emb)))
    csr = graph.tocsr()
    csr.eliminate_zeros()
    start = U.init_graph_transform(csr, emb)
    epochs = max(int(n_epochs // 3.0), 1)
    graph.data[graph.data < (graph.data.max() / float(epochs))] = 0.0
    graph.eliminate_zeros()
    a, b = U.find_ab_params(SPREAD, min_dist)
    out = U.optimize_layout_euclidean(
        start,
        emb.copy(),
        graph.row,
        graph.col,
        epochs,
        len(emb),
        U.make_epochs_per_sample(graph.data, epochs),
        a,
        b,
        rng_state,
        1.0,  # repulsion_strength
        1.0 / 4.0,  # umap's initial alpha (learning_rate 1) over 4, as its transform
        5,  # negative_sample_rate
        parallel,
    )
    return np.ascontiguousarray(out, dtype=np.float32)
