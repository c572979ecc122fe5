"""Brute force and test data shared by the search tests."""

from __future__ import annotations

import numpy as np


def brute(x: np.ndarray, y: np.ndarray, k: int, exclude_self: bool = False):
    """float64 brute force by direct differences: ids and L2 distances of the k nearest rows
    of y for each row of x (lower id first on ties)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ids = np.empty((len(x), k), dtype=np.int64)
    dists = np.empty((len(x), k))
    step = max(1, 2_000_000 // (len(y) * x.shape[1]))
    for s in range(0, len(x), step):
        d = np.sqrt(((x[s : s + step, None, :] - y[None, :, :]) ** 2).sum(-1))
        if exclude_self:
            d[np.arange(d.shape[0]), np.arange(s, s + d.shape[0])] = np.inf
        i = np.argsort(d, axis=1, kind="stable")[:, :k]
        ids[s : s + step] = i
        dists[s : s + step] = np.take_along_axis(d, i, 1)
    return ids, dists


def mixture(n: int, dim: int, centres: int = 40, spread: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    lab = rng.integers(0, centres, n)
    return (c[lab] + spread * rng.normal(size=(n, dim))).astype(np.float32)
