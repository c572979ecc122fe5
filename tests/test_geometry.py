"""hopaudit.geometry against brute-force computations on small random sets."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from hopaudit import geometry


def pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact L2 distances by differences (no cancellation), float64."""
    return np.sqrt(((a[:, None, :].astype(float) - b[None, :, :]) ** 2).sum(-1))


def two_nearest_other(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the first and second nearest other point, brute force in float64."""
    sq = np.einsum("ij,ij->i", x, x)
    d2 = sq[:, None] + sq[None, :] - 2.0 * x @ x.T
    np.fill_diagonal(d2, np.inf)
    two = np.sort(np.partition(d2, 1, axis=1)[:, :2], axis=1)
    return np.sqrt(np.maximum(two[:, 0], 0)), np.sqrt(np.maximum(two[:, 1], 0))


def quantile_by_hand(values, q):
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


# ---------------------------------------------------------------- normalization


@pytest.mark.parametrize("chunk", [7, 8192])
def test_normalize_rms_matches_row_by_row(monkeypatch, chunk):
    monkeypatch.setattr(geometry, "_CHUNK_ROWS", chunk)
    rng = np.random.default_rng(0)
    x = rng.normal(scale=30.0, size=(50, 24)).astype(np.float16)
    x[4] = 0.0
    out = geometry.normalize_rows(x, "rms")
    assert out.dtype == np.float32 and out.shape == x.shape
    for i, row in enumerate(x.astype(float)):
        norm = math.sqrt(sum(v * v for v in row))
        want = np.zeros(24) if norm == 0 else row * math.sqrt(24) / norm
        np.testing.assert_allclose(out[i], want, rtol=1e-5, atol=1e-6)
    assert np.all(out[4] == 0)
    rms = np.sqrt((out.astype(float) ** 2).mean(axis=1))
    np.testing.assert_allclose(np.delete(rms, 4), 1.0, rtol=1e-5)


def test_normalize_float64_and_none():
    x = np.random.default_rng(1).normal(size=(5, 3))
    out = geometry.normalize_rows(x, "rms")
    assert out.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), math.sqrt(3), rtol=1e-14)
    assert geometry.normalize_rows(x, "none") is x
    np.testing.assert_array_equal(x, np.random.default_rng(1).normal(size=(5, 3)))  # untouched


def test_normalize_bad_mode_and_shape():
    with pytest.raises(ValueError, match=r"'rms'.*'none'.*'l2'"):
        geometry.normalize_rows(np.ones((2, 2)), "l2")
    with pytest.raises(ValueError, match="2-D"):
        geometry.normalize_rows(np.ones(3), "rms")


@pytest.mark.parametrize("chunk", [3, 8192])
def test_finite_rows(monkeypatch, chunk):
    monkeypatch.setattr(geometry, "_CHUNK_ROWS", chunk)
    x = np.random.default_rng(2).normal(size=(20, 6)).astype(np.float16)
    x[2, 1] = np.nan
    x[7, 5] = np.inf
    x[11, 0] = -np.inf
    x[13, 3] = np.float16(np.inf)
    want = [all(math.isfinite(float(v)) for v in row) for row in x]
    np.testing.assert_array_equal(geometry.finite_rows(x), want)
    assert geometry.finite_rows(x).sum() == 16


# ---------------------------------------------------------------- radii and fractions


def test_radii_typical_radius_separation():
    rng = np.random.default_rng(3)
    nn = rng.gamma(4.0, 3.0, size=101)
    np.testing.assert_array_equal(geometry.ball_radii(nn), [v / 2 for v in nn])
    np.testing.assert_array_equal(geometry.radii(nn), geometry.ball_radii(nn))
    median, mean = geometry.typical_radius(nn)
    assert median == pytest.approx(sorted(nn)[50] / 2, rel=1e-15)
    assert mean == pytest.approx(sum(nn) / len(nn) / 2, rel=1e-12)
    for r_star in (0.0, 3.0, 5.81, 100.0):
        want = sum(1 for v in nn if v > 2 * r_star) / len(nn)
        assert geometry.separated_fraction(nn, r_star) == want
    with pytest.raises(ValueError, match="empty"):
        geometry.typical_radius([])


def test_contained_fraction_and_basins_brute_force():
    rng = np.random.default_rng(4)
    patterns = rng.normal(size=(60, 8))
    queries = patterns[rng.integers(0, 60, size=200)] + rng.normal(scale=0.5, size=(200, 8))
    dp = pairwise(patterns, patterns)
    np.fill_diagonal(dp, np.inf)
    r = dp.min(axis=1) / 2
    dq = pairwise(queries, patterns)
    basin = dq.argmin(axis=1)
    nn_q = dq.min(axis=1)
    want = sum(1 for j in range(200) if nn_q[j] <= r[basin[j]]) / 200
    got = geometry.contained_fraction(nn_q, basin, r)
    assert got == want
    assert 0 < got < 1  # the case is not degenerate
    sizes = geometry.basin_sizes(basin, 60)
    counts = Counter(basin.tolist())
    assert sizes.tolist() == [counts.get(i, 0) for i in range(60)]
    assert sizes.dtype == np.int64 and sizes.sum() == 200
    with pytest.raises(ValueError, match=r"\[0, 60\)"):
        geometry.basin_sizes(np.array([0, 60]), 60)
    with pytest.raises(ValueError, match="one nearest-pattern id per query"):
        geometry.contained_fraction(nn_q, basin[:-1], r)


# ---------------------------------------------------------------- TwoNN


@pytest.mark.parametrize("dim", [5, 10])
def test_twonn_recovers_dimension_of_a_linear_subspace(dim):
    rng = np.random.default_rng(dim)
    z = rng.standard_normal((3000, dim))
    basis, _ = np.linalg.qr(rng.standard_normal((200, dim)))  # orthonormal columns in R^200
    x = z @ basis.T + rng.normal(size=200)  # rotated and shifted
    nn1, nn2 = two_nearest_other(x)
    assert geometry.twonn_dimension(nn1, nn2) == pytest.approx(dim, rel=0.10)


def test_twonn_formula_duplicates_and_too_few():
    nn1 = np.array([1.0, 2.0, 0.0, 1.0, 3.0])
    nn2 = np.array([2.0, 3.0, 1.0, 1.5, 0.0])
    usable = [(1.0, 2.0), (2.0, 3.0), (1.0, 1.5)]
    want = len(usable) / sum(math.log(b / a) for a, b in usable)
    assert geometry.twonn_dimension(nn1, nn2) == pytest.approx(want, rel=1e-14)
    assert math.isnan(geometry.twonn_dimension([1.0, 0.0, 2.0], [2.0, 1.0, 3.0]))
    assert math.isnan(geometry.twonn_dimension([1.0, 1.0, 1.0], [1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="same length"):
        geometry.twonn_dimension([1.0, 2.0], [1.0])


# ---------------------------------------------------------------- subsets and summaries


def test_subset_indices_nested_sorted_and_seeded():
    subsets = geometry.subset_indices(1001, (0.25, 0.5, 0.75, 1.0), seed=7)
    assert list(subsets) == [0.25, 0.5, 0.75, 1.0]
    sizes = [len(subsets[f]) for f in subsets]
    assert sizes == [round(0.25 * 1001), round(0.5 * 1001), round(0.75 * 1001), 1001]
    for f, ids in subsets.items():
        assert np.all(np.diff(ids) > 0), f  # sorted, no repeats
        assert ids.min() >= 0 and ids.max() < 1001
    for small, big in ((0.25, 0.5), (0.5, 0.75), (0.75, 1.0)):
        assert set(subsets[small]) <= set(subsets[big])
    np.testing.assert_array_equal(subsets[1.0], np.arange(1001))
    again = geometry.subset_indices(1001, (0.25,), seed=7)
    np.testing.assert_array_equal(again[0.25], subsets[0.25])
    other = geometry.subset_indices(1001, (0.25,), seed=8)
    assert not np.array_equal(other[0.25], subsets[0.25])
    assert len(geometry.subset_indices(3, (0.01,))[0.01]) == 1
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        geometry.subset_indices(10, (0.5, 1.5))
    with pytest.raises(ValueError, match="positive integer"):
        geometry.subset_indices(0, (0.5,))


def test_summarize_and_saturation():
    nn = np.random.default_rng(5).exponential(size=37)
    s = geometry.summarize(nn)
    assert s["mean"] == pytest.approx(sum(nn) / 37, rel=1e-12)
    assert s["median"] == sorted(nn)[18]
    assert s["q10"] == pytest.approx(quantile_by_hand(nn, 0.1), rel=1e-12)
    assert s["q90"] == pytest.approx(quantile_by_hand(nn, 0.9), rel=1e-12)
    curve = geometry.saturation({1.0: [1.0, 2.0, 6.0], 0.5: [3.0, 4.0]})
    assert list(curve) == [0.5, 1.0]
    assert curve[0.5] == (3.5, 3.5)
    assert curve[1.0] == (3.0, 2.0)


# ------------------------------------------------------------- extreme input (issue 12)
@pytest.mark.parametrize("scale", [1e-30, 1e20, 3e38])
def test_rms_normalization_cannot_overflow(scale):
    """Rows near the float32 limits keep their direction: compared with a float64 (or, for
    3e38, mpmath-free exact rescaling) computation by hand."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 40))
    x = (base / np.abs(base).max() * scale).astype(np.float32)
    out = geometry.normalize_rows(x, "rms")
    assert np.isfinite(out).all()
    want = base / np.sqrt((base**2).mean(axis=1, keepdims=True))  # scale-free by hand
    np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-6)


def test_rms_normalization_float64_extremes():
    x = np.array([[1e200, -1e200, 0.0, 1e200], [0.0, 0.0, 0.0, 0.0]])
    out = geometry.normalize_rows(x, "rms")
    np.testing.assert_allclose(out[0], [2 / np.sqrt(3), -2 / np.sqrt(3), 0.0, 2 / np.sqrt(3)])
    assert (out[1] == 0).all()


def _twonn_by_hand(points: np.ndarray) -> float:
    """TwoNN on distinct points by a float64 brute-force loop (Facco et al.'s estimator)."""
    logs = []
    for i in range(len(points)):
        d = np.sqrt(((points - points[i]) ** 2).sum(axis=1))
        d = np.sort(d[d > 0])
        logs.append(np.log(d[1] / d[0]))
    return len(logs) / float(np.sum(logs))


def test_twonn_leaves_out_zero_distance_pairs():
    """Repeated patterns must not inflate the dimension above the ambient one: the estimate
    with duplicates equals TwoNN on the distinct points, and the duplicates are counted."""
    from hopaudit.search import build_index, knn_self

    rng = np.random.default_rng(3)
    distinct = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 12))  # a 4-dim subspace of R^12
    repeats = rng.choice(300, size=120, replace=False)
    x = np.concatenate([distinct, distinct[repeats], distinct[repeats[:40]]]).astype(np.float64)
    ids, dists = knn_self(build_index(x, "exact"), x, 10)
    d, zero = geometry.twonn_from_knn(dists, ids)
    assert zero == 120 + 120 + 40  # every copy of a repeated pattern has a twin at 0
    assert d == pytest.approx(_twonn_by_hand(distinct), rel=1e-4)
    assert d < 12
    naive = geometry.twonn_dimension(dists[:, 0], dists[:, 1])  # the old estimate, for contrast
    assert naive > 1.3 * d  # mu = 1 from coinciding neighbours inflates it
    # a self column as in LayerReport.knn_ids / knn_dists is recognised and dropped
    n = len(x)
    ids_s = np.concatenate([np.arange(n)[:, None], ids], axis=1)
    dists_s = np.concatenate([np.zeros((n, 1)), dists], axis=1)
    assert geometry.twonn_from_knn(dists_s, ids_s) == (d, zero)
