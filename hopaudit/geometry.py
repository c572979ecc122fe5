"""Distances -> the per-layer quantities of docs/theory.md §2 and §5.

Pure numpy functions: they take the nearest-neighbour distances (and basins) that the search
produced and return radii, separation and containment fractions, basin sizes, the TwoNN
intrinsic dimension and the nested random subsets of the saturation curve. No search, no
model, no state: each result can be checked against a brute-force computation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "NORMALIZE_MODES",
    "ball_radii",
    "basin_sizes",
    "contained_fraction",
    "finite_rows",
    "normalize_rows",
    "radii",
    "saturation",
    "separated_fraction",
    "subset_indices",
    "summarize",
    "twonn_dimension",
    "twonn_from_knn",
    "typical_radius",
]

NORMALIZE_MODES = ("rms", "none")

_CHUNK_ROWS = 8192  # rows per chunk: bounds the float32 temporaries of a float16 memmap
_CHUNK_BYTES = 4 << 20  # and at most this many bytes of a chunk's temporaries (wide rows)


def _rows(x: ArrayLike, name: str = "x") -> np.ndarray:
    x = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows, hidden), got shape {x.shape}")
    return x


def _distances(nn: ArrayLike, name: str = "nn") -> np.ndarray:
    nn = np.asarray(nn, dtype=np.float64)
    if nn.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of distances, got shape {nn.shape}")
    if nn.size == 0:
        raise ValueError(f"{name} is empty: there are no distances to summarize")
    return nn


def normalize_rows(x: ArrayLike, mode: str = "rms") -> np.ndarray:
    """Put every row on the kernel's unit scale, or leave the activations as they are.

    "rms": x * sqrt(n) / ||x|| (unit RMS per coordinate, so r_star applies); zero rows stay
    zero; computed in float32 (float64 input stays float64), chunk by chunk, so a float16
    memmap never needs a float64 copy. Each row is divided by its largest |value| before
    squaring, so no finite row overflows (1e20 in float32) or underflows. Rows with NaN/inf
    come out non-finite (drop them first with finite_rows). "none": the input unchanged.
    """
    if mode not in NORMALIZE_MODES:
        raise ValueError(
            f"normalize must be one of {', '.join(repr(m) for m in NORMALIZE_MODES)}; "
            f"got {mode!r}. 'rms' scales each vector to unit RMS per coordinate, "
            "'none' keeps the raw activations."
        )
    x = _rows(x)
    if mode == "none":
        return x
    dtype = np.float64 if x.dtype == np.float64 else np.float32
    out = np.empty(x.shape, dtype=dtype)
    root_n = math.sqrt(x.shape[1])
    step = min(_CHUNK_ROWS, max(1, _CHUNK_BYTES // (8 * max(x.shape[1], 1))))
    for start in range(0, x.shape[0], step):
        block = np.asarray(x[start : start + step], dtype=dtype)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            peak = np.max(np.abs(block), axis=1) if block.shape[1] else np.zeros(len(block))
            unit = block / np.where(peak > 0, peak, 1.0).astype(dtype)[:, None]  # |unit| <= 1
            norms = np.linalg.norm(unit, axis=1)  # in [1, sqrt(n)]: cannot overflow
            scale = np.where(norms > 0, root_n / norms, 0.0).astype(dtype)
            np.multiply(unit, scale[:, None], out=out[start : start + step])
        del block, unit
    return out


def finite_rows(x: ArrayLike) -> np.ndarray:
    """Boolean mask of the rows with no NaN or inf (chunked: fine on a large memmap)."""
    x = _rows(x)
    mask = np.empty(x.shape[0], dtype=bool)
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        mask[start : start + _CHUNK_ROWS] = np.isfinite(x[start : start + _CHUNK_ROWS]).all(axis=1)
    return mask


def ball_radii(nn: ArrayLike) -> np.ndarray:
    """r_i = nn_i / 2: the largest balls around the patterns that do not overlap a neighbour."""
    return np.asarray(nn, dtype=np.float64) / 2.0


radii = ball_radii  # the name docs/architecture.md uses


def typical_radius(nn: ArrayLike) -> tuple[float, float]:
    """The layer's typical radius r_hat = median(nn) / 2, and the mean radius mean(nn) / 2."""
    nn = _distances(nn)
    return float(np.median(nn)) / 2.0, float(np.mean(nn)) / 2.0


def separated_fraction(nn: ArrayLike, r_star: float) -> float:
    """Assumption 3: the fraction of patterns whose nearest other pattern is beyond 2 r_star,
    so that balls of radius r_star around them do not overlap."""
    nn = _distances(nn)
    return float(np.mean(nn > 2.0 * r_star))


def contained_fraction(nn_queries: ArrayLike, basin: ArrayLike, radii: ArrayLike) -> float:
    """Assumption 2: the fraction of queries that fall inside the ball of their nearest
    pattern, nn(q) <= r_basin(q)."""
    nn_queries = _distances(nn_queries, "nn_queries")
    basin = np.asarray(basin)
    radii = np.asarray(radii, dtype=np.float64)
    if basin.shape != nn_queries.shape:
        raise ValueError(
            f"basin has shape {basin.shape} but nn_queries has {nn_queries.shape}: "
            "give one nearest-pattern id per query"
        )
    _check_ids(basin, radii.shape[0])
    return float(np.mean(nn_queries <= radii[basin]))


def basin_sizes(basin: ArrayLike, n_patterns: int) -> np.ndarray:
    """Queries per stored pattern (int64, length n_patterns): how retrieval spreads."""
    basin = np.asarray(basin)
    if basin.ndim != 1:
        raise ValueError(f"basin must be 1-D (one pattern id per query), got {basin.shape}")
    _check_ids(basin, n_patterns)
    return np.bincount(basin.astype(np.int64), minlength=n_patterns).astype(np.int64)


def _check_ids(ids: np.ndarray, n: int) -> None:
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"pattern ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise ValueError(
            f"pattern ids must lie in [0, {n}), got values from {ids.min()} to {ids.max()}"
        )


def twonn_dimension(nn1: ArrayLike, nn2: ArrayLike) -> float:
    """Intrinsic dimension by TwoNN (Facco et al. 2017), maximum likelihood.

    mu_i = nn2_i / nn1_i and d = N / sum_i log mu_i over the N usable points; pairs with a zero
    (or non-finite) distance are dropped (duplicates carry no scale). NaN with fewer than 3
    usable points or when every mu is 1 (no information on the dimension).
    """
    nn1 = np.asarray(nn1, dtype=np.float64)
    nn2 = np.asarray(nn2, dtype=np.float64)
    if nn1.shape != nn2.shape or nn1.ndim != 1:
        raise ValueError(
            f"nn1 and nn2 must be 1-D arrays of the same length, got {nn1.shape} and {nn2.shape}"
        )
    usable = (nn1 > 0) & (nn2 > 0) & np.isfinite(nn1) & np.isfinite(nn2)
    if np.count_nonzero(usable) < 3:
        return math.nan
    total = float(np.sum(np.log(nn2[usable] / nn1[usable])))
    if total <= 0:
        return math.nan
    return float(np.count_nonzero(usable)) / total


def twonn_from_knn(knn_dists: ArrayLike, knn_ids: ArrayLike | None = None) -> tuple[float, int]:
    """TwoNN (Facco et al. 2017) from each pattern's sorted neighbour distances, without
    zero-distance pairs: (dimension, number of patterns with a duplicate among their neighbours).

    ``knn_dists`` (n, k): distances to the k nearest *other* patterns, ascending (a leading
    self column of zeros, as in ``LayerReport.knn_dists``, is dropped when ``knn_ids`` shows
    it). Exact duplicates carry no scale and, left in, give mu = 1 for their neighbours (the
    estimate then exceeds the ambient dimension). So per pattern r1 is the first non-zero
    distance and r2 the first one clearly larger than r1 (a duplicate pair of neighbours shows
    as r1 == r2); each duplicate group counts once (its lowest id, when ``knn_ids`` is given).
    """
    d = np.asarray(knn_dists, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"knn_dists must be 2-D (patterns, k), got shape {d.shape}")
    n = d.shape[0]
    ids = None if knn_ids is None else np.asarray(knn_ids)
    if ids is not None and ids.shape != d.shape:
        raise ValueError(f"knn_ids has shape {ids.shape} but knn_dists has {d.shape}")
    if ids is not None and n and np.array_equal(ids[:, 0], np.arange(n)):
        d, ids = d[:, 1:], ids[:, 1:]  # the self column
    if n == 0 or d.shape[1] < 2:
        return math.nan, 0
    finite = np.isfinite(d).all(axis=1)
    zero = d <= 0.0
    has_zero = zero[:, 0] & finite
    n_zero = int(np.count_nonzero(has_zero))
    keep = finite.copy()
    if ids is not None:
        # a duplicate group is represented by its lowest id: drop rows with a lower-id twin
        twin_lower = (zero & (ids < np.arange(n)[:, None])).any(axis=1)
        keep &= ~twin_lower
    big = np.where(zero | ~np.isfinite(d), np.inf, d)
    r1 = big.min(axis=1)
    tol = 1e-6 * r1  # float32 distances of one point to two coinciding neighbours
    r2 = np.where(big > r1[:, None] + tol[:, None], big, np.inf).min(axis=1)
    usable = keep & np.isfinite(r1) & np.isfinite(r2)
    if np.count_nonzero(usable) < 3:
        return math.nan, n_zero
    total = float(np.sum(np.log(r2[usable] / r1[usable])))
    if total <= 0:
        return math.nan, n_zero
    return float(np.count_nonzero(usable)) / total, n_zero


def subset_indices(
    n: int, fractions: Iterable[float] = (0.25, 0.5, 0.75, 1.0), seed: int | None = 0
) -> dict[float, np.ndarray]:
    """Nested random subsets of range(n) for the saturation curve: fraction -> sorted ids.

    All subsets are prefixes of one permutation, so the 25 % subset lies inside the 50 % one
    and so on; each holds round(fraction * n) ids (at least one).
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    fractions = [float(f) for f in fractions]
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"fractions must lie in (0, 1], got {bad}")
    order = np.random.default_rng(seed).permutation(int(n))
    return {f: np.sort(order[: max(1, round(f * n))]).astype(np.int64) for f in fractions}


def summarize(nn: ArrayLike) -> dict[str, float]:
    """mean, median, 10th and 90th percentile of a distance distribution."""
    nn = _distances(nn)
    q10, median, q90 = np.quantile(nn, [0.1, 0.5, 0.9])
    return {
        "mean": float(np.mean(nn)),
        "median": float(median),
        "q10": float(q10),
        "q90": float(q90),
    }


def saturation(nn_by_fraction: Mapping[float, ArrayLike]) -> dict[float, tuple[float, float]]:
    """The saturation curve (Fig. 2): fraction -> (mean, median) of the query distances when
    only that fraction of the patterns is stored; flat means the memory is saturated."""
    out = {}
    for fraction in sorted(nn_by_fraction):
        nn = _distances(nn_by_fraction[fraction], f"nn at fraction {fraction}")
        out[float(fraction)] = (float(np.mean(nn)), float(np.median(nn)))
    return out
