"""measure(): one layer's report against planted geometry with closed-form answers."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from hopaudit.errors import DataError, SearchError
from hopaudit.geometry import subset_indices
from hopaudit.layer.measuring import ROW_COLUMNS, measure


def r_star(n: int) -> float:
    return math.sqrt(n / (2 * math.pi * math.e))


def planted(dim: int, pairs_a: int, pairs_b: int, r_a: float, r_b: float, seed: int):
    """Pairs of patterns at distance exactly 2r around well-separated centres.

    Each centre c_j gets two patterns c_j + r u_j and c_j - r u_j (u_j a random unit vector),
    with r = r_a for the first ``pairs_a`` centres and r_b for the rest. The centres are
    rescaled so that any two are at least 6 max(r_a, r_b) apart; then a pattern's partner (at
    2r) is its nearest other pattern, every other pattern being at least 6 r_b - 2 r_b away.
    So nn_i = 2 r_i exactly: the median and mean radius and the separated fraction (nn > 2
    r_star, i.e. r > r_star) are known in closed form.
    """
    rng = np.random.default_rng(seed)
    m = pairs_a + pairs_b
    centres = rng.normal(size=(m, dim))
    sq = (centres**2).sum(1)
    gaps = np.sqrt(np.maximum(sq[:, None] - 2 * centres @ centres.T + sq[None], 0))
    np.fill_diagonal(gaps, np.inf)
    centres *= 6 * max(r_a, r_b) / gaps.min() * 1.01 if gaps.min() < 6 * max(r_a, r_b) else 1
    u = rng.normal(size=(m, dim))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    r = np.where(np.arange(m) < pairs_a, r_a, r_b)[:, None]
    patterns = np.concatenate([centres + r * u, centres - r * u])  # row j and row j + m pair up
    return patterns, np.concatenate([r[:, 0], r[:, 0]])


@pytest.mark.parametrize("dim", [8, 64, 256])
def test_planted_radii_separation_and_theory(dim):
    rs = r_star(dim)
    r_a, r_b = 0.5 * rs, 1.5 * rs
    pairs_a, pairs_b = 180, 120  # 60 % of the patterns in small balls, 40 % in large ones
    x, radius = planted(dim, pairs_a, pairs_b, r_a, r_b, seed=dim)
    d = len(x)
    rep = measure(x, normalize="none", k=5, n_blocks=4)
    assert rep.n == dim and rep.n_patterns == d and rep.nonfinite == 0
    np.testing.assert_allclose(rep.nn, 2 * radius, rtol=1e-4)
    m = pairs_a + pairs_b
    partner = np.concatenate([np.arange(m, 2 * m), np.arange(m)])
    np.testing.assert_array_equal(rep.basin, partner)
    np.testing.assert_array_equal(rep.basin_sizes, np.ones(d))
    # median radius = r_a (60 % of the patterns), mean = 0.6 r_a + 0.4 r_b; both well within 5 %
    assert rep.r_hat == pytest.approx(r_a, rel=1e-4)
    assert rep.r_hat_mean == pytest.approx(0.6 * r_a + 0.4 * r_b, rel=1e-4)
    assert rep.r_star == pytest.approx(rs, rel=1e-12)
    assert rep.r_ratio == pytest.approx(0.5, rel=1e-4)
    assert rep.separated_frac == 0.4  # exactly the large pairs: 2 r_b > 2 r_star > 2 r_a
    assert rep.contained_frac is None and rep.n_queries == 0

    # THEORY.md §3 recomputed independently (mpmath / lgamma) from the planted radii.
    mp = mpmath.mp
    mp.dps = 30
    z = sum(
        count
        * mpmath.pi ** (dim / 2)
        * mpmath.gammainc(dim / 2, 0, mpmath.mpf(r) ** 2, regularized=True)
        for count, r in ((2 * pairs_a, r_a), (2 * pairs_b, r_b))
    )
    assert rep.log_z_gauss == pytest.approx(float(mpmath.log(z)), rel=1e-4, abs=1e-3)
    log_v = (dim / 2) * math.log(math.pi) + dim * math.log(r_a) - math.lgamma(dim / 2 + 1)
    assert rep.log_z_vol == pytest.approx(math.log(d) + log_v, rel=1e-4, abs=1e-3)
    log_rc = (math.lgamma(dim / 2 + 1) - (dim / 2) * math.log(math.pi) - math.log(d)) / dim
    assert rep.r_c == pytest.approx(math.exp(log_rc), rel=1e-9)
    f_vol = rep.log_z_vol + math.exp(-rep.log_z_vol)
    assert rep.floor_low == pytest.approx(f_vol, rel=1e-9)
    assert rep.floor_high == pytest.approx(f_vol + math.log(4), rel=1e-9)
    assert rep.floor_gauss == pytest.approx(rep.log_z_gauss + math.exp(-rep.log_z_gauss), rel=1e-9)

    # The kNN graph: self in column 0 at distance 0, then the neighbours by a float64 brute force.
    assert rep.knn_ids.shape == (d, 6) and rep.knn_dists.shape == (d, 6)
    np.testing.assert_array_equal(rep.knn_ids[:, 0], np.arange(d))
    np.testing.assert_array_equal(rep.knn_dists[:, 0], 0)
    full = cdist(x, x)
    np.fill_diagonal(full, np.inf)
    np.testing.assert_allclose(rep.knn_dists[:, 1:], np.sort(full, axis=1)[:, :5], rtol=1e-4)
    np.testing.assert_allclose(rep.nn2, np.sort(full, axis=1)[:, 1], rtol=1e-4)

    row = rep.row()
    assert tuple(row) == ROW_COLUMNS
    assert row["n_patterns"] == d and row["separated_frac"] == 0.4 and row["normalize"] == "none"
    assert row["nn_median"] == pytest.approx(2 * r_a, rel=1e-4)
    assert math.isnan(row["contained_frac"])


@pytest.mark.parametrize("dim", [8, 64])
def test_heldout_queries_in_and_out_of_the_balls(dim):
    rs = r_star(dim)
    x, radius = planted(dim, 60, 40, 0.6 * rs, 1.4 * rs, seed=100 + dim)
    d = len(x)
    rng = np.random.default_rng(dim)
    # 70 queries inside a ball (distance <= 0.9 r from its pattern, so the partner at 2r is
    # farther), then 30 outside (1.05 r, orthogonal to the pair axis: still nearest to it).
    target = rng.integers(0, d, 100)
    axis = x[target] - x[(target + d // 2) % d]
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    w = rng.normal(size=(100, dim))
    w -= (w * axis).sum(1, keepdims=True) * axis
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    scale = np.where(np.arange(100) < 70, rng.uniform(0.05, 0.9, 100), 1.05)
    q = x[target] + (scale * radius[target])[:, None] * w
    rep = measure(x, q, normalize="none", k=3)
    assert rep.n_queries == 100
    np.testing.assert_array_equal(rep.basin_queries, target)
    np.testing.assert_allclose(rep.nn_queries, scale * radius[target], rtol=1e-4)
    assert rep.contained_frac == pytest.approx(0.7, abs=1e-12)
    np.testing.assert_array_equal(rep.basin_sizes_queries, np.bincount(target, minlength=d))
    inside = measure(x, q[:70], normalize="none", k=3)
    assert inside.contained_frac == 1.0
    # Same through HNSW.
    assert measure(x, q[:70], normalize="none", k=3, index="hnsw").contained_frac == 1.0


def test_rms_normalization_is_scale_free_and_matches_numpy():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 32)) * rng.uniform(0.1, 50, size=(400, 1))
    rep = measure(x, k=4)
    again = measure(7.5 * x, k=4)
    np.testing.assert_allclose(rep.nn, again.nn, rtol=1e-5)
    y = x * math.sqrt(32) / np.linalg.norm(x, axis=1, keepdims=True)
    full = cdist(y, y)
    np.fill_diagonal(full, np.inf)
    np.testing.assert_allclose(rep.nn, full.min(1), rtol=1e-5)
    assert rep.r_hat == pytest.approx(np.median(full.min(1)) / 2, rel=1e-5)
    assert rep.normalize == "rms"


def test_saturation_curve_against_brute_force():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(400, 10))
    fractions = (0.01, 0.02, 0.25, 0.5, 1.0)
    # k=2: most queries find no subset member among their 2 neighbours, so the wider search
    # and the brute-force fallback both run.
    rep = measure(x, normalize="none", k=2, fractions=fractions, seed=3)
    subsets = subset_indices(400, fractions, seed=3)
    queries = subsets[0.01]
    np.testing.assert_array_equal(rep.saturation_queries, queries)
    for f in fractions:
        members = subsets[f]
        ref = []
        for qi in queries:
            others = members[members != qi]
            ref.append(np.sqrt(((x[others] - x[qi]) ** 2).sum(1)).min())
        np.testing.assert_allclose(rep.saturation_nn[f], ref, rtol=1e-5, err_msg=str(f))
        mean, median = rep.saturation[f]
        assert mean == pytest.approx(np.mean(ref), rel=1e-5)
        assert median == pytest.approx(np.median(ref), rel=1e-5)
    means = [rep.saturation[f][0] for f in fractions]
    assert means == sorted(means, reverse=True)  # nested subsets: distances only shrink


def test_twonn_on_a_plane_in_64_dimensions():
    rng = np.random.default_rng(7)
    plane = rng.uniform(size=(3000, 2))
    basis = np.linalg.qr(rng.normal(size=(64, 2)))[0]
    rep = measure(plane @ basis.T, normalize="none", k=2)
    assert rep.twonn_id == pytest.approx(2.0, rel=0.1)
    assert rep.r_star_id == pytest.approx(r_star(rep.twonn_id), rel=1e-9)


def test_nonfinite_rows_are_dropped_and_counted():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(60, 6))
    x[[3, 17, 40]] = np.nan
    x[22, 1] = np.inf
    q = rng.normal(size=(10, 6))
    q[4] = np.nan
    rep = measure(x, q, normalize="none", k=3)
    keep = np.setdiff1d(np.arange(60), [3, 17, 22, 40])
    assert rep.nonfinite == 4 and rep.n_patterns == 56
    np.testing.assert_array_equal(rep.valid_rows, keep)
    full = cdist(x[keep], x[keep])
    np.fill_diagonal(full, np.inf)
    np.testing.assert_allclose(rep.nn, full.min(1), rtol=1e-5)
    np.testing.assert_array_equal(rep.basin, full.argmin(1))
    assert rep.nonfinite_queries == 1 and rep.n_queries == 9
    np.testing.assert_array_equal(rep.query_rows, np.setdiff1d(np.arange(10), [4]))
    assert rep.row()["nonfinite"] == 4


def test_all_identical_patterns_do_not_crash():
    rep = measure(np.full((50, 16), 3.0), k=5)
    np.testing.assert_array_equal(rep.nn, 0)
    assert rep.r_hat == 0 and rep.separated_frac == 0
    assert rep.log_z_gauss == -math.inf and rep.log_z_vol == -math.inf
    assert rep.floor_low == math.inf and rep.floor_gauss == math.inf
    assert math.isnan(rep.twonn_id)
    assert rep.row()["floor_high"] == math.inf
    assert "LayerReport" in repr(rep)


def test_small_sets_and_k_clamped():
    rng = np.random.default_rng(9)
    rep = measure(rng.normal(size=(3, 4)), k=15)  # k' = n - 1 = 2
    assert rep.knn_ids.shape == (3, 3)
    assert len(rep.index) == 3 and rep.index.query(rng.normal(size=(2, 4)), 3)[0].shape == (2, 3)


def test_bad_input():
    rng = np.random.default_rng(10)
    with pytest.raises(SearchError, match=r"at least 3 finite patterns.*got 2 \(2 rows"):
        measure(rng.normal(size=(2, 4)))
    three = rng.normal(size=(3, 4))
    three[1] = np.nan
    with pytest.raises(SearchError, match=r"got 2 \(3 rows, 1 with NaN/inf\)"):
        measure(three)
    with pytest.raises(SearchError, match="queries have dimension 5 but the patterns have 4"):
        measure(rng.normal(size=(20, 4)), rng.normal(size=(3, 5)))
    with pytest.raises(SearchError, match="2-D"):
        measure(rng.normal(size=20))
    with pytest.raises(DataError, match="normalize must be one of"):
        measure(rng.normal(size=(20, 4)), normalize="l2")
    with pytest.raises(SearchError, match="kind must be"):
        measure(rng.normal(size=(20, 4)), index="annoy")


def _report_arrays(rep):
    """Every array and number of a report (the index aside), for exact comparisons."""
    out = {}
    for name, value in vars(rep).items():
        if name == "index":
            continue
        if isinstance(value, dict):
            value = {k: np.asarray(v).tolist() for k, v in value.items()}
        elif isinstance(value, np.ndarray):
            value = (value.dtype.str, value.tolist())
        out[name] = value
    return out


@pytest.mark.parametrize("normalize", ["rms", "none"])
@pytest.mark.parametrize("nonfinite", [False, True])
def test_an_exact_index_searches_without_the_patterns_and_changes_nothing(
    monkeypatch, normalize, nonfinite
):
    # With an exact index, measure hands its normalized copy of the patterns to the index
    # (kept, centred in place, not copied) and no longer reads it: the index searches its own
    # rows, and the few rows the saturation curve reads are normalized again (k=2 makes its
    # wider search and brute force run). The report is the same, number for number, as with
    # the patterns kept (an index of another type).
    import gc
    import weakref

    from hopaudit import geometry
    from hopaudit.layer import measuring

    rng = np.random.default_rng(11)
    x = (rng.normal(size=(600, 12)) * 7 + 3).astype(np.float16)
    if nonfinite:
        x[[5, 99]] = np.nan
    fractions = (0.02, 0.25, 1.0)
    copies = []
    real_normalize = geometry.normalize_rows

    def normalize_rows(a, mode="rms"):
        out = real_normalize(a, mode)
        copies.append(weakref.ref(out))
        return out

    alive = []
    real_knn = measuring.knn_self

    def knn_self(index, data, k, progress=None):
        gc.collect()
        copy = copies[0]()  # alive only as the index's own rows (adopted), never beside them
        alive.append(copy is not None and copy.ctypes.data != index._data.data_ptr())
        return real_knn(index, data, k, progress)

    monkeypatch.setattr(geometry, "normalize_rows", normalize_rows)
    monkeypatch.setattr(measuring, "knn_self", knn_self)
    rep = measure(x, normalize=normalize, index="exact", k=2, fractions=fractions, bootstrap=20)
    if normalize == "rms":
        assert alive == [False]  # no copy of the layer beside the index's rows in the search
    # the patterns kept: an index that neither searches its own rows nor takes the patterns
    monkeypatch.setattr(measuring, "keeps_rows", lambda index: False)
    real_build = measuring.build_index
    monkeypatch.setattr(
        measuring, "build_index", lambda *a, **kw: real_build(*a, **{**kw, "adopt": False})
    )
    copies.clear()
    kept = measure(x, normalize=normalize, index="exact", k=2, fractions=fractions, bootstrap=20)
    assert _report_arrays(rep) == _report_arrays(kept)
