"""The clustered backend against float64 brute force: exact distances, honest recall."""

from __future__ import annotations

import numpy as np
import pytest
from search_helpers import brute, mixture

from hopaudit.errors import SearchError
from hopaudit.search import backends, build_index, knn_self, load_index, save_index
from hopaudit.search import clustered as cl
from hopaudit.search.clustered import ClusteredIndex

TILES = ["float32", "bfloat16"]


def recall(found_d: np.ndarray, true_d: np.ndarray) -> tuple[float, float]:
    """recall@1 and recall@k by distance (ties interchangeable), written out independently."""
    pairs = zip(found_d[:, 0], true_d[:, 0], strict=True)
    r1 = np.mean([f <= t * (1 + 1e-6) + 1e-12 for f, t in pairs])
    rows = zip(found_d, true_d, strict=True)
    hits = [sum(f <= t[-1] * (1 + 1e-6) + 1e-12 for f in row) for row, t in rows]
    return float(r1), float(np.sum(hits) / found_d.size)


def distances_to(x: np.ndarray, ids: np.ndarray, q: np.ndarray) -> np.ndarray:
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    return np.sqrt(((x64[ids] - q64[:, None, :]) ** 2).sum(-1))


@pytest.mark.parametrize("tiles", TILES)
def test_self_search_distances_are_exact_and_recall_is_what_it_says(tiles):
    x = mixture(3000, 24, centres=30, spread=0.6, seed=1)
    index = ClusteredIndex(24, tiles=tiles)
    index.add(x)
    ids, d = knn_self(index, None, 10)
    _, true_d = brute(x, x, 10, exclude_self=True)
    # every distance is the float64 one of the id it names, and none is the query itself
    np.testing.assert_allclose(d, distances_to(x, ids, x), rtol=2e-6, atol=1e-6)
    assert not (ids == np.arange(len(x))[:, None]).any()
    assert (np.diff(d, axis=1) >= 0).all()
    r1, rk = recall(d, true_d)
    assert r1 >= 0.99 and rk >= 0.95
    # the recall the index reports is that of its sample, recomputed here by brute force
    rep = index.recall
    assert rep["probes"] == index.probes and rep["sample"] == 512 and rep["k"] == 11
    assert index.lists == round(np.sqrt(3000))
    assert rep["recall_at_1"] >= cl.RECALL_AT_1 and rep["recall_at_k"] >= cl.RECALL_AT_K


@pytest.mark.parametrize("tiles", TILES)
def test_every_list_probed_is_brute_force(tiles):
    x = mixture(1500, 16, centres=12, seed=2)
    index = ClusteredIndex(16, tiles=tiles, lists=20, probes=20)
    index.add(x)
    q = mixture(200, 16, centres=12, seed=3)
    ids, d = index.query(q, 7)
    true_ids, true_d = brute(q, x, 7)
    np.testing.assert_array_equal(ids, true_ids)
    np.testing.assert_allclose(d, true_d, rtol=2e-6, atol=1e-6)
    assert index.recall["recall_at_1"] == 1.0 and index.recall["recall_at_k"] == 1.0


def test_structureless_data_needs_more_probes_and_still_meets_the_recall():
    """No clusters: a neighbour is as likely in any nearby list, so the calibration reads
    more lists than on a mixture; the recall it reports holds on the whole set."""
    rng = np.random.default_rng(5)
    flat = rng.normal(size=(2500, 12)).astype(np.float32)
    easy = ClusteredIndex(12, tiles="float32")
    easy.add(mixture(2500, 12, centres=50, spread=0.05, seed=5))
    easy.query_stored(6)
    hard = ClusteredIndex(12, tiles="float32")
    hard.add(flat)
    _, d = hard.query_stored(6)
    assert hard.probes > easy.probes
    _, true_d = brute(flat, flat, 6)
    r1, rk = recall(d, true_d)
    assert r1 >= 0.99 and rk >= 0.95


def test_lists_smaller_than_k_read_further():
    """Lists of about two patterns and one probe hold fewer than k candidates: those queries
    read every list, never returning an empty slot."""
    x = mixture(300, 8, centres=5, seed=6)
    index = ClusteredIndex(8, tiles="float32", lists=150, probes=1)
    index.add(x)
    ids, d = index.query(x[:50], 12)
    assert np.isfinite(d).all() and (ids >= 0).all() and (ids < len(x)).all()
    np.testing.assert_allclose(d, distances_to(x, ids, x[:50]), rtol=2e-6, atol=1e-6)
    assert all(len(set(row)) == 12 for row in ids)


def test_duplicates_and_offset_data():
    """Exact duplicates come back at distance 0 (not mistaken for the query), and data far
    from the origin keep their small differences (centred in float64)."""
    x = mixture(800, 10, centres=8, seed=7).astype(np.float64) + 1e4
    x[400:420] = x[0]
    before = x.copy()
    index = build_index(x, "clustered")
    np.testing.assert_array_equal(x, before)  # read, never centred in place
    ids, d = knn_self(index, None, 3)
    assert (d[400:420, 0] == 0).all() and (d[0, :3] == 0).all()
    np.testing.assert_allclose(d, distances_to(x, ids, x), rtol=1e-4, atol=1e-4)
    _, true_d = brute(x, x, 3, exclude_self=True)
    assert recall(d, true_d)[0] >= 0.99


def test_saved_and_loaded_gives_the_same_answers(tmp_path):
    x = mixture(2000, 16, centres=20, seed=8)
    index = build_index(x, "clustered")
    ids, d = knn_self(index, None, 5)
    meta = save_index(index, tmp_path / "unused")
    assert meta["kind"] == "clustered" and meta["probes"] == index.probes
    assert not (tmp_path / "unused").exists()  # rebuilt from the patterns, seeded
    again = load_index(meta, tmp_path / "unused", patterns=lambda: x)
    assert again.recall == index.recall and again.lists == index.lists
    ids2, d2 = knn_self(again, None, 5)
    np.testing.assert_array_equal(ids2, ids)
    np.testing.assert_array_equal(d2, d)


def test_tiles_are_float32_unless_asked(monkeypatch):
    """float32 products by default (oneDNN keeps memory for each bfloat16 product shape, and
    every list has its own); ``"auto"`` still takes bfloat16 where the CPU has it natively."""
    assert ClusteredIndex(4).tiles == "float32" == cl.TILES
    monkeypatch.setattr(cl, "cpu_bf16_native", lambda: True)
    assert ClusteredIndex(4).tiles == "float32"
    assert ClusteredIndex(4, tiles="auto").tiles == "bfloat16"
    monkeypatch.setattr(cl, "cpu_bf16_native", lambda: False)
    assert ClusteredIndex(4, tiles="auto").tiles == "float32"


@pytest.mark.parametrize("tiles", TILES)
def test_the_index_holds_one_copy_of_the_layer(tiles):
    """What a built index keeps: its one float32 copy of the patterns, and for bfloat16 tiles
    their augmented bfloat16 rows (half a layer more); the rest (centroids, norms, ids) is small
    beside a layer."""
    import torch

    n, dim = 3000, 64
    x = mixture(n, dim, centres=12, seed=4)
    index = ClusteredIndex(dim, tiles=tiles)
    index.add(x)
    held = sum(
        v.numel() * v.element_size() if isinstance(v, torch.Tensor) else v.nbytes
        for v in vars(index).values()
        if isinstance(v, (torch.Tensor, np.ndarray))
    )
    layer = n * dim * 4
    extra = (dim + 2 * cl._PARTS) * 2 / (dim * 4) if tiles == "bfloat16" else 0.0
    assert layer <= held <= layer * (1.1 + extra)


def test_the_search_buffers_fit_the_largest_tile_and_never_exceed_their_bytes():
    """Sized to the largest (queries x patterns) tile the lists need, and no more than
    ``_TILE_BYTES`` of scores or ``_QUERY_BYTES`` of query rows however large a list is."""
    import torch

    small = cl._Buffers(10, 0, torch.float32, "cpu", [(np.array([5, 300]), np.array([7, 2]))])
    assert small._scores.numel() == max(7 * 5, 2 * 300) and small._rows.shape == (7, 10)
    for dtype, extra in ((torch.float32, 0), (torch.bfloat16, 2 * cl._PARTS)):
        huge = [(np.array([10**6, 3]), np.array([10**5, 10**6]))]
        big = cl._Buffers(768, extra, dtype, "cpu", huge)
        assert big._scores.numel() * dtype.itemsize <= cl._TILE_BYTES
        assert big._rows.numel() * dtype.itemsize <= cl._QUERY_BYTES
        if big._listed is not None:  # float32: a tile's gathered stored rows
            assert big._listed.numel() * 4 <= cl._QUERY_BYTES
        rows, cols = big.tile(10**6)
        assert rows * cols <= big._scores.numel() and rows <= big._rows.shape[0]


def test_errors_say_what_is_wrong():
    x = mixture(100, 4, seed=9)
    with pytest.raises(SearchError, match="tiles"):
        ClusteredIndex(4, tiles="int8")
    with pytest.raises(SearchError, match="lists must be a positive integer"):
        ClusteredIndex(4, lists=0)
    with pytest.raises(SearchError, match="probes must be a positive integer"):
        ClusteredIndex(4, probes=1.5)
    index = build_index(x, "clustered")
    with pytest.raises(SearchError, match="built once"):
        index.add(x)
    with pytest.raises(SearchError, match="k must be an integer"):
        index.query_stored(0)
    assert "clustered" in backends.INDEX_KINDS


def test_measure_reports_the_search_recall_of_each_kind():
    from hopaudit.layer.measuring import measure

    x = mixture(2500, 16, centres=25, seed=10)
    clustered = measure(x, index="clustered", k=5, bootstrap=0)
    assert clustered.index.kind == "clustered"
    assert clustered.search_recall_at_1 == clustered.index.recall["recall_at_1"] >= 0.99
    assert clustered.search_recall_at_k == clustered.index.recall["recall_at_k"] >= 0.95
    exact = measure(x, index="exact", k=5, bootstrap=0)
    assert (exact.search_recall_at_1, exact.search_recall_at_k) == (1.0, 1.0)
    hnsw = measure(x, index="hnsw", k=5, bootstrap=0)  # measured after the search, on a sample
    from hopaudit.geometry import normalize_rows

    xn = normalize_rows(x, "rms")  # what measure searched
    _, true_d = brute(xn, xn, 5, exclude_self=True)
    full = recall(hnsw.knn_dists[:, 1:], true_d)  # over every pattern, independently
    assert abs(hnsw.search_recall_at_1 - full[0]) <= 0.02
    assert abs(hnsw.search_recall_at_k - full[1]) <= 0.02
    # the nearest distances agree with exact search where the recall says they should
    agree = np.isclose(clustered.nn, exact.nn, rtol=1e-5).mean()
    assert agree >= 0.99


def test_an_audit_with_the_clustered_search_saves_loads_and_answers_queries(tmp_path):
    from tiny_models import random_texts, tiny_model, tiny_tokenizer

    import hopaudit

    model, _ = tiny_model("gpt2")
    tok = tiny_tokenizer()
    a = hopaudit.audit(
        model, random_texts(120), tokenizer=tok, max_length=16, positions="all",
        index="clustered", progress=False, umap_layers=["final"], bootstrap=0,
    )  # fmt: skip
    assert (a.layers["search_recall_at_1"] >= 0.99).all()
    assert (a.layers["search_recall_at_k"] >= 0.95).all()
    b = hopaudit.load(a.save(tmp_path / "a"))
    assert a.layers.equals(b.layers)
    texts = random_texts(3, seed=4)
    qa = a.query(texts, extraction=False)
    qb = b.query(texts, model, tokenizer=tok, extraction=False)
    assert qa.nearest.equals(qb.nearest)  # the same lists again (seeded), the same answers


def test_progress_counts_every_query_once_over_both_passes():
    x = mixture(2500, 12, centres=20, seed=12)
    index = ClusteredIndex(12, probes=5)
    index.add(x)
    seen = []
    index.query_stored(4, progress=seen.append)
    assert sum(seen) == len(x) and len(seen) > 5


@pytest.mark.parametrize("tiles", TILES)
def test_queries_searched_a_block_at_a_time_give_every_row_its_own_answer(monkeypatch, tiles):
    """A layer's queries go ``query_block`` queries at a time (at least ``_SEARCH_PAIRS``
    (query, list) pairs): with blocks of a few queries (the last one short), every list probed
    is still brute force row for row, and with fewer probes each query's answer is the one it
    gets searched alone."""
    x = mixture(900, 16, centres=15, seed=13)
    whole = ClusteredIndex(16, tiles=tiles, lists=12, probes=12)
    whole.add(x.copy())
    monkeypatch.setattr(cl, "_SEARCH_PAIRS", 12 * 37)  # 37 queries a block, 900 = 24 * 37 + 12
    assert whole.query_block(12) == 37  # a quarter of this small layer would be fewer pairs
    big = ClusteredIndex(576, lists=1000)
    big._count = 10**6  # a million real rows need few probes: one block, as before the blocks
    assert big.query_block(8) >= 10**6 and big.query_block(1000) < 10**6
    sizes = []
    block = ClusteredIndex._search_block

    def counted(self, q, *args, **kwargs):
        sizes.append(q.shape[0])
        return block(self, q, *args, **kwargs)

    monkeypatch.setattr(ClusteredIndex, "_search_block", counted)
    seen = []
    ids, d = whole.query_stored(6, progress=seen.append)
    assert sizes[-25:] == [37] * 24 + [12]  # after the calibration sample's own searches
    true_ids, true_d = brute(x, x, 6)
    np.testing.assert_array_equal(ids, true_ids)
    np.testing.assert_allclose(d, true_d, rtol=2e-6, atol=1e-6)
    assert sum(seen) == len(x)

    few = ClusteredIndex(16, tiles=tiles, lists=12, probes=3)
    few.add(x.copy())
    blocked = few.query_stored(6)
    alone = [few._search(few._data[i : i + 1], 6, 3) for i in (0, 455, 899)]
    for i, (a_ids, a_d) in zip((0, 455, 899), alone, strict=True):
        np.testing.assert_array_equal(blocked[0][i], a_ids[0])
        np.testing.assert_array_equal(blocked[1][i], a_d[0])
