"""Nearest-neighbour search: both backends against a float64 numpy brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from search_helpers import brute, mixture

from hopaudit.errors import SearchError
from hopaudit.search import AUTO_EXACT_MAX, build_index, exact, knn_self
from hopaudit.search import backends as search
from hopaudit.search import rows as row_chunks

# --------------------------------------------------------------------------- exact backend


def test_exact_matches_numpy_brute_force():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(700, 24))
    x = rng.normal(size=(90, 24))
    index = build_index(y, "exact")
    assert (index.kind, len(index), index.dim) == ("exact", 700, 24)
    ids, dists = index.query(x, 7)
    ref_ids, ref_d = brute(x, y, 7)
    assert ids.dtype == np.int64 and dists.dtype == np.float32
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(dists, ref_d, rtol=2e-6, atol=1e-6)


def test_exact_is_tiled_correctly(monkeypatch):
    # Tiny tiles and chunks force many query tiles, stored tiles and candidate merges.
    monkeypatch.setattr(exact, "_TILE_ELEMS", 1 << 14)
    monkeypatch.setattr(row_chunks, "_CHUNK_BYTES", 4 * 16 * 37)
    y = mixture(1500, 16, seed=2)
    index = build_index(y, "exact")
    ids, dists = knn_self(index, y, 5)
    ref_ids, ref_d = brute(y, y, 5, exclude_self=True)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(dists, ref_d, rtol=2e-6, atol=1e-6)


def test_exact_squared_norms_chunk_by_chunk_equal_the_whole_sum(monkeypatch):
    # The squared norms are summed in float64 a few rows at a time (no float64 copy of the
    # whole index): the same numbers as the sum over the whole tensor, also after an add.
    monkeypatch.setattr(row_chunks, "_CHUNK_BYTES", 4 * 16 * 37)  # 37 rows a chunk
    y = mixture(500, 16, seed=4) * 50
    index = build_index(y[:301], "exact")
    index.add(y[301:])
    whole = (index._data.to(torch.float64) ** 2).sum(dim=1).to(torch.float32)
    assert index._sqnorm.dtype == torch.float32
    assert torch.equal(index._sqnorm, whole)


def test_exact_centres_away_a_large_common_offset():
    rng = np.random.default_rng(3)
    y = rng.normal(size=(500, 32)) + 1e4  # float64 input far from the origin
    index = build_index(y, "exact")
    ids, dists = knn_self(index, y, 4)
    ref_ids, ref_d = brute(y - 1e4, y - 1e4, 4, exclude_self=True)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(dists, ref_d, rtol=1e-5)
    # The test can fail: without centring, float32 |x|^2 - 2x.y + |y|^2 is off by far more.
    y32 = y.astype(np.float32)
    sq = (y32 * y32).sum(1)
    naive = np.sqrt(np.maximum(sq[:5, None] - 2 * y32[:5] @ y32.T + sq[None], 0))
    exact = np.sqrt(((y[:5, None] - y[None]) ** 2).sum(-1))
    assert np.abs(naive - exact).max() > 0.1


def test_exact_duplicates_give_zero_with_self_excluded_by_id():
    rng = np.random.default_rng(4)
    base = rng.normal(size=(200, 12))
    y = np.concatenate([base, base[:50]])  # rows 200..249 duplicate rows 0..49
    for kind in ("exact", "hnsw"):
        ids, dists = knn_self(build_index(y, kind), y, 3)
        assert np.all(ids != np.arange(250)[:, None]), kind
        np.testing.assert_array_equal(dists[:50, 0], 0.0)
        np.testing.assert_array_equal(ids[:50, 0], np.arange(200, 250))
        np.testing.assert_array_equal(ids[200:, 0], np.arange(50))
        assert np.all(dists[50:200, 0] > 0)


def test_all_identical_rows():
    y = np.ones((30, 5), dtype=np.float16)
    for kind in ("exact", "hnsw"):
        ids, dists = knn_self(build_index(y, kind), y, 4)
        np.testing.assert_array_equal(dists, 0.0)
        assert np.all(ids != np.arange(30)[:, None])
        assert np.all((ids >= 0) & (ids < 30))


def test_exact_accepts_torch_and_float16_memmap(tmp_path):
    y = mixture(600, 20, seed=5)
    path = tmp_path / "acts.f16"
    mm = np.memmap(path, dtype=np.float16, mode="w+", shape=y.shape)
    mm[:] = y
    mm.flush()
    mm = np.memmap(path, dtype=np.float16, mode="r", shape=y.shape)
    ids_mm, d_mm = knn_self(build_index(mm, "exact"), mm, 3)
    ids_t, _ = knn_self(build_index(torch.from_numpy(y), "exact"), y, 3)
    ref_ids, ref_d = brute(np.asarray(mm, np.float64), np.asarray(mm, np.float64), 3, True)
    np.testing.assert_allclose(d_mm, ref_d, rtol=2e-6, atol=1e-6)
    np.testing.assert_array_equal(ids_mm[:, 0], ref_ids[:, 0])
    np.testing.assert_array_equal(ids_t, brute(y, y, 3, True)[0])


def test_add_extends_ids():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(200, 8))
    both = np.concatenate([a, b])
    for kind in ("exact", "hnsw"):
        index = build_index(a, kind)
        index.add(b)
        assert len(index) == 500
        ids, dists = index.query(both[::7], 1)
        np.testing.assert_array_equal(ids[:, 0], np.arange(500)[::7])
        np.testing.assert_allclose(dists[:, 0], 0.0, atol=1e-5)


# --------------------------------------------------------------------------- HNSW backend


def test_hnsw_recall_at_1_and_true_l2_distances(monkeypatch):
    y = mixture(20000, 64, centres=60, spread=0.35, seed=7).astype(np.float16)
    # Small float32 chunks: the build and the queries cross many chunk boundaries.
    monkeypatch.setattr(row_chunks, "_CHUNK_BYTES", 4 * 64 * 3000)
    hnsw = build_index(y, "hnsw", threads=2)
    assert (hnsw.kind, len(hnsw), hnsw.dim) == ("hnsw", 20000, 64)
    ids, dists = knn_self(hnsw, y, 5)
    # Ground truth on every 10th pattern (the exact backend is checked against numpy above).
    rows = np.arange(0, 20000, 10)
    ex_ids, ex_d = build_index(y, "exact").query(y[rows], 2)
    assert np.all(ex_ids[:, 0] == rows)  # no duplicates in this set: self comes first
    recall_id = np.mean(ids[rows, 0] == ex_ids[:, 1])
    recall_dist = np.mean(dists[rows, 0] <= ex_d[:, 1] * (1 + 1e-5))
    assert recall_id >= 0.99 and recall_dist >= 0.99, (recall_id, recall_dist)
    assert np.all(np.diff(dists, axis=1) >= 0)
    # True L2 (not squared) to the ids returned, recomputed in float64.
    y64 = y.astype(np.float64)
    rows = np.arange(0, 20000, 97)
    direct = np.linalg.norm(y64[rows, None, :] - y64[ids[rows]], axis=2)
    np.testing.assert_allclose(dists[rows], direct, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_hnsw_recall_at_1_dimension_576():
    y = mixture(20000, 576, centres=80, spread=0.35, seed=8).astype(np.float16)
    ids, dists = knn_self(build_index(y, "hnsw"), y, 15)
    ex_ids, ex_d = knn_self(build_index(y, "exact"), y, 15)
    assert np.mean(dists[:, 0] <= ex_d[:, 0] * (1 + 1e-5)) >= 0.99
    assert np.mean(ids[:, 0] == ex_ids[:, 0]) >= 0.99


def test_hnsw_offset_data_keeps_precision():
    rng = np.random.default_rng(9)
    y = rng.normal(size=(800, 16)) + 5e3
    ids, dists = build_index(y, "hnsw").query(y[:50] + 0.01, 1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(50))
    np.testing.assert_allclose(dists[:, 0], 0.01 * 4, rtol=1e-3)  # |0.01 * ones(16)| = 0.04


def test_hnsw_query_ef_covers_k():
    y = mixture(3000, 8, seed=10)
    index = build_index(y, "hnsw", ef=4)
    ids, dists = index.query(y[:100], 40)  # ef is raised to k + 1
    assert ids.shape == (100, 40) and np.all(np.diff(dists, axis=1) >= 0)
    ref_ids, _ = brute(y[:100], y, 40)
    assert np.mean([len(set(a) & set(b)) / 40 for a, b in zip(ids, ref_ids, strict=True)]) > 0.9


# --------------------------------------------------------------------------- choice and errors


def test_auto_kind_and_threads(monkeypatch):
    assert search._resolve_kind("auto", AUTO_EXACT_MAX, None) == "exact"
    assert search._resolve_kind("auto", AUTO_EXACT_MAX + 1, None) == "clustered"
    assert search._resolve_kind("auto", AUTO_EXACT_MAX + 1, "cpu") == "clustered"
    assert search._resolve_kind("auto", 10**7, "cuda") == "exact"
    assert search._resolve_kind("auto", 10**7, torch.device("cuda", 0)) == "exact"
    assert search._resolve_kind("hnsw", 10, None) == "hnsw"
    monkeypatch.setattr(search, "AUTO_EXACT_MAX", 100)
    y = np.random.default_rng(11).normal(size=(101, 3)).astype(np.float32)
    assert build_index(y[:100]).kind == "exact"
    assert build_index(y).kind == "clustered"
    hnsw = build_index(y, "hnsw")
    import os

    assert hnsw.threads == len(os.sched_getaffinity(0))
    assert build_index(y, "hnsw", threads=1).threads == 1


@pytest.mark.parametrize("kind", ["exact", "hnsw", "clustered"])
def test_errors_say_what_is_wrong(kind):
    rng = np.random.default_rng(12)
    y = rng.normal(size=(10, 4))
    with pytest.raises(SearchError, match=r"at least 2 patterns.*got 1"):
        build_index(y[:1], kind)
    with pytest.raises(SearchError, match="2-D"):
        build_index(y[0], kind)
    with pytest.raises(SearchError, match="2-D"):
        build_index(y[None], kind)
    index = build_index(y, kind)
    with pytest.raises(SearchError, match=r"k=10 .* only 10 patterns; use k <= 9"):
        knn_self(index, y, 10)
    with pytest.raises(SearchError, match=r"dimension 5 .* dimension 4"):
        index.query(rng.normal(size=(3, 5)), 1)
    with pytest.raises(SearchError, match=r"k=11 .* only 10 patterns"):
        index.query(y, 11)
    bad = y.copy()
    bad[6, 2] = np.nan
    with pytest.raises(SearchError, match="NaN or inf \\(first at row 6"):
        build_index(bad, kind)
    with pytest.raises(SearchError, match="NaN or inf"):
        index.query(bad, 1)
    with pytest.raises(SearchError, match="kind must be"):
        build_index(y, "faiss")


@pytest.mark.parametrize("kind", ["exact", "hnsw", "clustered"])
def test_progress_counts_every_row_once_in_chunks(kind, monkeypatch):
    """A large layer's bar follows the build and the search: each row is reported once per
    step, over several chunks, and the results are those of a search without a bar."""
    monkeypatch.setattr(row_chunks, "_CHUNK_BYTES", 4 * 16 * 200)  # 200 rows a chunk
    monkeypatch.setattr(exact, "_TILE_ELEMS", 1 << 14)
    y = mixture(1500, 16, seed=4)
    added, searched = [], []
    index = build_index(y, kind, progress=added.append)
    ids, dists = knn_self(index, y, 5, progress=searched.append)
    assert sum(searched) == len(y) and len(searched) > 1
    assert sum(added) == len(y) and (kind != "hnsw" or len(added) > 1)
    ref_ids, ref_d = knn_self(build_index(y, kind), y, 5)
    if kind != "hnsw":  # deterministic: the same ids
        np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(np.median(dists[:, 0]), np.median(ref_d[:, 0]), rtol=1e-3)


def _brute_force(data: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, distances) of the k nearest rows by float64 numpy, lower id first on ties."""
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - data[None, :, :]) ** 2).sum(-1))
    ids = np.argsort(d, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(d, ids, 1)


@pytest.mark.parametrize("tiles", ["float32", "bfloat16"])
def test_exact_tiles_match_numpy_brute_force(tiles):
    """Both candidate tiles (bfloat16 forced, native or emulated) give numpy's neighbours and
    distances to 1e-5: the float32 re-rank decides, whatever the tiles chose."""
    from hopaudit.search.backends import ExactIndex

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(12, 48)) * 3
    data = (centres[rng.integers(0, 12, 1500)] + rng.normal(size=(1500, 48))).astype(np.float32)
    data[7] = data[3]  # an exact duplicate: a tie at distance 0
    queries = np.concatenate([data[:150], rng.normal(size=(50, 48)).astype(np.float32) * 3])
    index = ExactIndex(48, tiles=tiles)
    assert index.tiles == tiles
    index.add(data)
    ids, dists = index.query(queries, 10)
    want_ids, want_d = _brute_force(data, queries, 10)
    np.testing.assert_allclose(dists, want_d, rtol=1e-5, atol=1e-5)
    assert (ids == want_ids).mean() > 0.999  # only float32 ties may order differently
    np.testing.assert_allclose(
        np.linalg.norm(data[ids] - queries[:, None], axis=2), want_d, rtol=1e-5, atol=1e-5
    )


def _two_tight_clusters(n: int, offset: float) -> np.ndarray:
    """``n`` 32-d patterns, alternately ``offset`` either side of the origin on one axis, with
    noise of 0.05: neighbours closer than bfloat16 products resolve."""
    rng = np.random.default_rng(4)
    side = np.zeros(32)
    side[0] = offset
    x = np.where(np.arange(n)[:, None] % 2 == 0, side, -side)
    return (x + 0.05 * rng.normal(size=x.shape)).astype(np.float32)


def test_bfloat16_tiles_fall_back_where_rounding_could_hide_a_neighbour():
    """Two tight clusters 200 apart (each pattern 100 from the centre): within a cluster the
    neighbours differ by far less than bfloat16 products resolve, the certificate sends those
    queries back to float32 tiles, and the answer is still numpy's."""
    from hopaudit.search.backends import ExactIndex

    data = _two_tight_clusters(800, 100.0)
    index = ExactIndex(32, tiles="bfloat16")
    index.add(data)
    ids, dists = index.query(data[:100], 5)
    assert index.uncertified["bfloat16"] > 0
    want_ids, want_d = _brute_force(data, data[:100], 5)
    np.testing.assert_allclose(dists, want_d, rtol=1e-5, atol=1e-5)
    assert (ids == want_ids).all()


def test_float32_tiles_are_certified_too_and_float64_decides_what_they_cannot():
    """The same two clusters with float32 tiles: at |y|^2 about 1e4 float32 scores round by
    about 1e-3, more than the gaps between a query's neighbours, and float32 candidates alone
    missed a true neighbour for some queries; the certificate sends those to float64 tiles and
    the answer is numpy's (float64 brute force)."""
    from hopaudit.search.backends import ExactIndex

    data = _two_tight_clusters(1000, 100.0)
    index = ExactIndex(32, tiles="float32")
    index.add(data)
    ids, dists = index.query(data[:400], 5)
    assert index.uncertified["float32"] > 0 and index.uncertified["bfloat16"] == 0
    want_ids, want_d = _brute_force(data, data[:400], 5)
    np.testing.assert_allclose(dists, want_d, rtol=1e-5, atol=1e-5)
    assert (ids == want_ids).all()


def test_the_gpu_s_float32_re_rank_path_gives_numpy_s_answer():
    """On a GPU the squared norms and the re-rank are float32 (the certificate's slack then
    float32's): that path, run on CPU tensors, on the tight clusters gives numpy's neighbours
    and distances (the squared norms once squared the stored rows in place when no cast
    copied them)."""
    from hopaudit.search.backends import ExactIndex

    data = _two_tight_clusters(1000, 100.0)
    index = ExactIndex(32, tiles="float32")
    index._rerank_dtype = torch.float32  # what a CUDA index uses
    index.add(data)
    ids, dists = index.query(data[:400], 5)
    want_ids, want_d = _brute_force(data, data[:400], 5)
    np.testing.assert_allclose(dists, want_d, rtol=1e-5, atol=1e-4)
    assert (ids == want_ids).mean() > 0.99  # float32 distances may order near-ties otherwise


def test_k_exact_duplicates_are_certified_without_a_second_tier():
    """40 copies of one row among 1000 far from the origin (as a first token's rows are, one
    per sequence): a copy's k nearest are copies at distance 0, which no bound can separate
    from the copies left out, and none needs to: nothing is nearer than 0. No query is scored
    again, and the answer is numpy's."""
    from hopaudit.search.backends import ExactIndex

    rng = np.random.default_rng(8)
    data = (rng.normal(size=(1000, 16)) + 50.0).astype(np.float32)
    copies = rng.choice(1000, 40, replace=False)
    data[copies] = data[copies[0]]
    index = ExactIndex(16, tiles="float32")
    index.add(data)
    ids, dists = index.query(data[copies], 10)
    assert index.uncertified == {"bfloat16": 0, "float32": 0}
    assert (dists == 0).all() and np.isin(ids, copies).all()
    _, want_d = _brute_force(data, data[copies], 10)
    np.testing.assert_array_equal(dists, want_d)


@pytest.mark.parametrize(("tiles", "offset"), [("bfloat16", 10.0), ("float32", 100.0)])
def test_a_tier_is_given_up_when_most_queries_are_scored_twice(tiles, offset, monkeypatch):
    """Two tight clusters, searched in tiles of 16 queries: the first tier cannot tell the
    neighbours apart (every query uncertified), so once a trial of 48 queries has had more than
    GIVE_UP of them uncertified, the rest of the search runs on the next tier alone (no more
    double scoring), and the answer is still numpy's."""
    from hopaudit.search import exact
    from hopaudit.search.backends import ExactIndex

    monkeypatch.setattr(exact, "_TILE_ELEMS", 16 * 1024)  # 16 queries x 1024 patterns a tile
    monkeypatch.setattr(exact, "TRIAL_QUERIES", 48)
    data = _two_tight_clusters(1000, offset)
    index = ExactIndex(32, tiles=tiles)
    index.add(data)
    ids, dists = index.query(data[:400], 5)
    assert index.gave_up == 1
    assert index.uncertified[tiles] == 48  # the trial's, none after it
    want_ids, want_d = _brute_force(data, data[:400], 5)
    np.testing.assert_allclose(dists, want_d, rtol=1e-5, atol=1e-5)
    assert (ids == want_ids).all()


@pytest.mark.parametrize("tier", ["bfloat16", "float32"])
def test_a_tier_s_products_stay_within_its_dot_error(tier):
    """torch's products in a tier's dtype, against float64 ones, never err by more than
    dot_error times |x| |y|, on rows of mixed scales and signs (the certificate rests on it)."""
    from hopaudit.search.exact import dot_error

    rng = np.random.default_rng(7)
    dim = 768
    x = rng.normal(size=(64, dim)) * rng.lognormal(size=(1, dim)) + 3.0
    y = rng.normal(size=(512, dim)) * rng.lognormal(size=(1, dim)) - 1.0
    dtype = getattr(torch, tier)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    got = (xt.to(dtype) @ yt.to(dtype).T).double().numpy()
    want = x.astype(np.float32).astype(np.float64) @ y.astype(np.float32).astype(np.float64).T
    scale = np.linalg.norm(x, axis=1)[:, None] * np.linalg.norm(y, axis=1)[None, :]
    err = np.abs(got - want) / scale
    assert err.max() <= dot_error(tier, dim)
    assert err.max() > dot_error(tier, dim) / 1e4  # the check compares real rounding


def test_exact_tiles_are_checked():
    from hopaudit.errors import SearchError
    from hopaudit.search.backends import ExactIndex

    with pytest.raises(SearchError, match="tiles"):
        ExactIndex(4, tiles="float16")


@pytest.mark.parametrize("tiles", ["float32", "bfloat16"])
def test_exact_query_stored_is_query_of_the_indexed_data(tiles, monkeypatch):
    # An exact index's search of its own rows gives what querying the data it indexed gives,
    # bit for bit, so knn_self needs no copy of the patterns beside the index.
    monkeypatch.setattr(row_chunks, "_CHUNK_BYTES", 4 * 16 * 97)  # 97 rows a chunk
    y = mixture(700, 16, seed=5) * 30 + 5
    index = search.ExactIndex(16, tiles=tiles)
    index.add(y[:400])
    index.add(y[400:])
    ids, dists = index.query_stored(6)
    ref_ids, ref_d = index.query(y, 6)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(dists, ref_d)
    for a, b in zip(knn_self(index, None, 5), knn_self(index, y, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(SearchError, match="integer"):
        index.query_stored(701)
    with pytest.raises(SearchError, match="exact or clustered index only"):
        knn_self(build_index(y, "hnsw"), None, 5)


@pytest.mark.parametrize("kind", ["exact", "clustered"])
def test_an_index_adopting_its_array_gives_the_same_search_and_never_the_caller_s(kind):
    from hopaudit.layer.measuring import measure
    from hopaudit.search.clustered import ClusteredIndex
    from hopaudit.search.exact import ExactIndex

    new = {"exact": ExactIndex, "clustered": ClusteredIndex}[kind]
    x = mixture(3000, 24, centres=20, seed=21) + np.float32(40.0)  # offset: centring matters
    copied = new(24)
    copied.add(x)
    mine = x.copy()
    adopted = new(24)
    adopted.add(mine, adopt=True)
    assert adopted._data.data_ptr() == mine.ctypes.data  # kept, not copied
    np.testing.assert_array_equal(adopted._data.numpy(), copied._data.numpy())
    ids, dists = knn_self(adopted, None, 5)
    for a, b in zip(knn_self(copied, None, 5), (ids, dists), strict=True):
        np.testing.assert_array_equal(a, b)
    # the distances are those of float64 brute force on the original rows
    want = np.linalg.norm(x.astype(np.float64)[:, None] - x[ids].astype(np.float64), axis=2)
    np.testing.assert_allclose(dists, want, rtol=1e-5, atol=1e-4)
    # measure lends its own normalized copy, never the caller's patterns (nor a view of them)
    before = x.copy()
    for normalize in ("rms", "none"):
        measure(x, normalize=normalize, index=kind, k=4, bootstrap=0)
        np.testing.assert_array_equal(x, before)
    # an array that cannot be written, or is not float32, is copied instead
    readonly = x.copy()
    readonly.flags.writeable = False
    build_index(readonly, kind, adopt=True)
    np.testing.assert_array_equal(readonly, before)
    half = x.astype(np.float16)
    build_index(half, kind, adopt=True)
    np.testing.assert_array_equal(half, before.astype(np.float16))
    if kind == "exact":  # a second add copies: the rows grow, the new array stays as it was
        more = x[:10].copy()
        adopted.add(more, adopt=True)
        np.testing.assert_array_equal(more, before[:10])
        assert len(adopted) == 3010


def test_the_search_multiplies_in_float32_whatever_the_process_set(monkeypatch):
    """With the process's float32 products allowed TF32 or bfloat16 passes ("medium"), the
    exact search still runs its float32 tiles at "highest" (its certificate's bound is float32
    rounding), and gives the process its own setting back."""
    from hopaudit.search import exact

    seen = []
    candidates = exact.ExactIndex._candidates

    def spy(self, *args, **kwargs):
        seen.append(torch.get_float32_matmul_precision())
        return candidates(self, *args, **kwargs)

    monkeypatch.setattr(exact.ExactIndex, "_candidates", spy)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        index = exact.ExactIndex(16)
        index.add(mixture(300, 16, seed=2))
        index.query_stored(4)
        assert seen and set(seen) == {"highest"}
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)


def test_centred_rows_match_float64_and_read_their_input_only(monkeypatch):
    """Rows minus a centre, subtracted in float64 from the original values and rounded once to
    float32, however many float64 blocks the rows take; the input is never written, and a
    non-finite row is refused with its own index."""
    monkeypatch.setattr(row_chunks, "_CHUNK_BYTES", 8 * 4 * 7 * 3)  # float64 blocks of 3 rows
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20, 7)) * 1e3 + 1e6  # float64: a view of it would be editable
    before = x.copy()
    center = x.mean(axis=0)
    got = row_chunks.centred_rows(x, 4, 17, center, "queries")
    want = (x[4:17] - center).astype(np.float32)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(x, before)
    assert row_chunks.centred_rows(x, 18, 40, center, "queries").shape == (2, 7)
    x[11, 3] = np.nan
    with pytest.raises(SearchError, match="11"):
        row_chunks.centred_rows(x, 4, 17, center, "queries")
    x[11, 3], x[13, 0] = before[11, 3], 1e39  # finite in float64, not in float32
    with pytest.raises(SearchError, match="13"):
        row_chunks.centred_rows(x, 4, 17, center, "queries")
