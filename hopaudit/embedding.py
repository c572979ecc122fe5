"""UMAP on the kNN graph the search already built (no second neighbour search).

umap-learn's ``precomputed_knn`` takes the graph with each point itself in column 0 and wants
exactly ``n_neighbors`` columns: with fewer it silently recomputes the neighbours itself, and
below 4096 points it does not prune extra columns. So this module hands it exactly the right
columns, checks the graph first, and imports umap only when a layout is asked for (the import
alone costs about 12 s).

Seeded or not (measured by benchmarks/umap_precomputed.py, 20 000 x 576, 2 shared cores): umap's
``random_state`` forces its optimisation onto one thread, so ``seed=None`` would allow
parallel epochs but give a different layout every run. Here the unseeded run was no faster
(26.1 s wall / 9.5 CPU-s against 21.3 s / 8.2 CPU-s seeded); 200 single-threaded SGD epochs
take about 80 % of the time, the spectral initialisation most of the rest. So the default
is ``seed=0``: reproducible layouts (audits compare, timelines align); pass ``seed=None`` on
a many-core machine when speed matters more than reproducibility.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike

from .errors import SearchError

__all__ = ["MIN_POINTS", "umap_from_knn"]

#: The fewest points UMAP can lay out: each needs itself and at least one neighbour, and the
#: spectral initialisation needs more points than the 2 output dimensions.
MIN_POINTS = 4


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


def umap_from_knn(
    knn_ids: ArrayLike,
    knn_dists: ArrayLike,
    *,
    n_neighbors: int = 15,
    seed: int | None = 0,
    init: ArrayLike | None = None,
    min_dist: float = 0.1,
    data: ArrayLike | None = None,
) -> np.ndarray:
    """A 2-D UMAP layout (n, 2) float32 from a kNN graph with self in column 0.

    - ``n_neighbors`` counts the point itself, as in umap-learn; the graph needs at least that
      many columns (it is reduced to n - 1 when there are only n <= n_neighbors points).
    - ``seed``: an int gives a reproducible layout; umap then runs its optimisation on one
      thread. ``None`` lets it use every core, and the layout changes from run to run.
    - ``init``: a previous (n, 2) layout to start from (timelines keep their frames aligned);
      by default the spectral initialisation of the graph.
    - ``data``: the patterns themselves, optional. UMAP only uses them to place the graph's
      disconnected components relative to each other; without them the components get
      random places (the graph holds no distance between components).
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
    # exactly k columns, contiguous copies (umap writes into its graph arrays)
    ids_k = np.ascontiguousarray(ids[:, :k], dtype=np.int64)
    dists_k = np.ascontiguousarray(dists[:, :k], dtype=np.float32)

    if init is None:
        init_arg: str | np.ndarray = "spectral"
    else:
        init_arg = np.asarray(init, dtype=np.float32)
        if init_arg.shape != (n, 2) or not np.all(np.isfinite(init_arg)):
            raise ValueError(
                f"init must be a finite (n, 2) layout with n = {n} rows, got shape {init_arg.shape}"
            )

    if data is None:
        # UMAP needs an (n, features) array to fit; with a precomputed graph it reads only its
        # shape, plus component centroids when the graph is disconnected. One random column
        # gives those components random, distinct places.
        x = np.random.default_rng(seed).normal(size=(n, 1)).astype(np.float32)
    else:
        x = np.asarray(data)
        if x.ndim != 2 or x.shape[0] != n:
            raise ValueError(f"data must have {n} rows like the graph, got shape {x.shape}")

    import umap  # lazy: importing umap (numba, pynndescent) takes seconds

    reducer = umap.UMAP(
        n_neighbors=k,
        n_components=2,
        min_dist=min_dist,
        init=init_arg,
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
