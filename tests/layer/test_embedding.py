"""hopaudit.embedding: UMAP from a brute-force kNN graph keeps well separated clusters apart."""

from __future__ import annotations

import numpy as np
import pytest

from hopaudit.errors import SearchError
from hopaudit.layer.embedding import umap_from_knn


def knn_with_self(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: self in column 0, then the k nearest others, true L2 distances."""
    x = x.astype(np.float64)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)) if len(x) <= 500 else None
    if d is None:
        sq = np.einsum("ij,ij->i", x, x)
        d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0))
    np.fill_diagonal(d, -1.0)  # self first, by id
    ids = np.argsort(d, axis=1, kind="stable")[:, : k + 1]
    dists = np.take_along_axis(d, ids, axis=1)
    dists[:, 0] = 0.0
    return ids, dists.astype(np.float32)


def clusters(n: int, n_clusters: int, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    label = np.repeat(np.arange(n_clusters), n // n_clusters)
    centres = rng.normal(scale=12.0, size=(n_clusters, dim))
    return centres[label] + rng.normal(size=(len(label), dim)), label


def neighbour_purity(y: np.ndarray, label: np.ndarray, k: int = 10) -> float:
    ids, _ = knn_with_self(y, k)
    return float(np.mean(label[ids[:, 1:]] == label[:, None]))


@pytest.fixture(scope="module")
def layout():
    x, label = clusters(2000, 8, 32, seed=0)
    ids, dists = knn_with_self(x, 15)
    return umap_from_knn(ids, dists, n_neighbors=15, seed=0), label


def test_clusters_stay_apart(layout):
    y, label = layout
    assert y.shape == (2000, 2) and y.dtype == np.float32
    assert np.all(np.isfinite(y))
    # each point's 2-D nearest neighbours are (almost all) from its own cluster; the placeholder
    # data umap sees carries no cluster information, so this shows the graph was used
    assert neighbour_purity(y, label) > 0.95
    # and the clusters do not overlap: centroids are farther apart than the clusters are wide
    centres = np.array([y[label == c].mean(0) for c in range(8)])
    spread = max(np.sqrt(((y[label == c] - centres[c]) ** 2).sum(1)).mean() for c in range(8))
    gaps = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1))[np.triu_indices(8, 1)]
    assert gaps.min() > spread


def test_seeded_is_reproducible_and_init_is_followed():
    x, _ = clusters(400, 4, 16, seed=1)
    ids, dists = knn_with_self(x, 15)
    a = umap_from_knn(ids, dists, seed=3)
    np.testing.assert_array_equal(a, umap_from_knn(ids, dists, seed=3))
    # a previous layout as init (timelines): give it rotated by 90 degrees; the new layout
    # follows the rotation, while the default spectral start does not
    rotated = np.stack([a[:, 1], -a[:, 0]], axis=1)
    follows = umap_from_knn(ids, dists, seed=4, init=rotated)
    fresh = umap_from_knn(ids, dists, seed=4)

    def corr(u, v):
        return float(np.corrcoef(u, v)[0, 1])

    assert corr(follows[:, 0], rotated[:, 0]) > 0.9
    assert corr(follows[:, 1], rotated[:, 1]) > 0.9
    assert min(corr(fresh[:, 0], rotated[:, 0]), corr(fresh[:, 1], rotated[:, 1])) < 0.6


def test_patterns_give_a_pca_start():
    # one epoch barely moves the start: it must be the data's own top-2 principal axes
    # (computed here by numpy's SVD, independently of umap's sklearn PCA)
    x, _ = clusters(600, 6, 24, seed=5)
    x[:, :2] *= 3  # two dominant directions
    ids, dists = knn_with_self(x, 15)
    y = umap_from_knn(ids, dists, seed=0, data=x, n_epochs=1)
    centred = x - x.mean(0)
    pcs = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
    for axis in range(2):
        assert abs(np.corrcoef(y[:, axis], pcs[:, axis])[0, 1]) > 0.95


def test_pca_start_is_the_projection_numpy_s_svd_gives(monkeypatch):
    """pca_start, read in chunks of 97 rows, against numpy's float64 SVD of the centred rows
    (far from the origin, four distinct variances): the same two coordinates, each axis signed
    as sklearn signs it (its largest coefficient positive)."""
    from hopaudit.layer import embedding

    rng = np.random.default_rng(11)
    x = rng.normal(size=(1500, 40)) * np.r_[9.0, 5.0, 3.0, 2.0, np.ones(36)]
    x = (x @ np.linalg.qr(rng.normal(size=(40, 40)))[0] + 300.0).astype(np.float32)
    monkeypatch.setattr(embedding, "_PCA_CHUNK_BYTES", 97 * 4 * 40)
    xy = embedding.pca_start(x, 0)
    centred = x.astype(np.float64) - x.astype(np.float64).mean(0)
    vt = np.linalg.svd(centred, full_matrices=False)[2][:2]
    vt *= np.sign(vt[np.arange(2), np.abs(vt).argmax(1)])[:, None]
    want = centred @ vt.T
    np.testing.assert_allclose(xy, want, atol=1e-3 * np.abs(want).max())


def test_pca_start_of_one_feature_and_of_identical_rows():
    from hopaudit.layer.embedding import pca_start

    x = np.arange(10, dtype=np.float32)[:, None] + 5
    np.testing.assert_allclose(pca_start(x), np.c_[np.arange(10) - 4.5, np.zeros(10)], atol=1e-5)
    np.testing.assert_allclose(pca_start(np.ones((8, 3), np.float32)), np.zeros((8, 2)), atol=1e-5)


def test_umap_is_handed_the_start_not_the_patterns(monkeypatch):
    """With the patterns given, umap gets the PCA start as its layout and a one-column stand-in
    to fit (it copied whatever it was given, and its own PCA centred another copy)."""
    import umap

    x, _ = clusters(300, 3, 24, seed=2)
    ids, dists = knn_with_self(x, 15)
    seen = {}
    fit = umap.UMAP.fit_transform

    def spy(self, X, *args, **kwargs):
        seen["shape"], seen["init"] = X.shape, self.init
        return fit(self, X, *args, **kwargs)

    monkeypatch.setattr(umap.UMAP, "fit_transform", spy)
    umap_from_knn(ids, dists, seed=0, data=x, n_epochs=1)
    assert seen["shape"] == (300, 1)
    assert isinstance(seen["init"], np.ndarray) and seen["init"].shape == (300, 2)
    assert np.abs(seen["init"]).max() == pytest.approx(10.0, abs=1e-3)


def test_pca_start_with_fewer_epochs_is_as_trustworthy_as_umaps_default():
    from sklearn.manifold import trustworthiness

    # clusters on their own 6-dimensional subspaces, touching: not a trivially separable set
    rng = np.random.default_rng(6)
    label = rng.integers(0, 12, size=1500)
    bases = rng.normal(size=(12, 6, 48)) / np.sqrt(48)
    x = rng.normal(scale=0.6, size=(12, 48))[label]
    x = x + np.einsum("ns,nsd->nd", rng.normal(size=(1500, 6)), bases[label])
    ids, dists = knn_with_self(x, 15)
    ours = umap_from_knn(ids, dists, seed=0, data=x)  # PCA start, DEFAULT_EPOCHS
    default = umap_from_knn(ids, dists, seed=0)  # spectral start, umap's epoch count
    t_ours = trustworthiness(x, ours, n_neighbors=15)
    t_default = trustworthiness(x, default, n_neighbors=15)
    assert t_ours > t_default - 0.02, (t_ours, t_default)


def test_data_and_epochs_are_checked():
    x = np.random.default_rng(7).normal(size=(30, 4))
    ids, dists = knn_with_self(x, 5)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        umap_from_knn(ids, dists, n_neighbors=4, data=bad)
    with pytest.raises(ValueError, match="rows"):
        umap_from_knn(ids, dists, n_neighbors=4, data=x[:10])
    for n_epochs in (0, 2.5, -1):
        with pytest.raises(ValueError, match="n_epochs"):
            umap_from_knn(ids, dists, n_neighbors=4, n_epochs=n_epochs)


def test_tiny_sets_reduce_n_neighbors():
    x = np.random.default_rng(2).normal(size=(6, 5))
    ids, dists = knn_with_self(x, 5)  # all 6 points: self + 5
    y = umap_from_knn(ids, dists, n_neighbors=15, seed=0)
    assert y.shape == (6, 2) and np.all(np.isfinite(y))
    with pytest.raises(SearchError, match="at least 4 points"):
        umap_from_knn(ids[:3, :3] % 3, dists[:3, :3], seed=0)


def test_graph_checks():
    x = np.random.default_rng(3).normal(size=(30, 4))
    ids, dists = knn_with_self(x, 5)  # 6 columns
    with pytest.raises(SearchError, match=r"6 columns.*n_neighbors=15"):
        umap_from_knn(ids, dists, n_neighbors=15)
    with pytest.raises(SearchError, match="same shape"):
        umap_from_knn(ids, dists[:, :4], n_neighbors=4)
    with pytest.raises(SearchError, match="same shape"):
        umap_from_knn(ids[:, 0], dists[:, 0])
    with pytest.raises(SearchError, match="itself"):
        umap_from_knn(ids[:, 1:], dists[:, 1:], n_neighbors=4)
    bad = ids.copy()
    bad[3, 2] = -1
    with pytest.raises(SearchError, match=r"\[0, 30\)"):
        umap_from_knn(bad, dists, n_neighbors=4)
    with pytest.raises(SearchError, match="integers"):
        umap_from_knn(ids.astype(float), dists, n_neighbors=4)
    nan = dists.copy()
    nan[1, 1] = np.nan
    with pytest.raises(SearchError, match="finite"):
        umap_from_knn(ids, nan, n_neighbors=4)
    with pytest.raises(ValueError, match="init"):
        umap_from_knn(ids, dists, n_neighbors=4, init=np.zeros((29, 2)))
    with pytest.raises(ValueError, match="n_neighbors"):
        umap_from_knn(ids, dists, n_neighbors=1)


_LAYOUT_IN_A_NEW_PROCESS = """
import numpy as np
from hopaudit.layer.embedding import umap_from_knn
x = np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32)
d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
ids = np.argsort(d, 1)[:, :6]
umap_from_knn(ids, np.take_along_axis(d, ids, 1), n_neighbors=6, data=x, n_epochs=5)
import umap.layouts
stats = umap.layouts._nb_optimize_layout_euclidean_single_epoch.stats
print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
"""


@pytest.mark.slow  # two new processes that import umap and compile its functions
def test_umaps_compiled_functions_are_loaded_from_disk_in_a_new_process(tmp_path):
    """umap does not cache its optimiser's JIT itself: the first process compiles it (a cache
    miss, written to NUMBA_CACHE_DIR), the next one loads it (a hit, no compile)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [
        subprocess.run(
            [sys.executable, "-W", "ignore", "-c", _LAYOUT_IN_A_NEW_PROCESS],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,  # a guard against a hang, not a speed check: loaded machines are slow
        )
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    first, second = (tuple(map(int, r.stdout.split())) for r in runs)
    assert first == (0, 1), first  # compiled
    assert second == (1, 0), second  # loaded
    assert any("optimize_layout_euclidean" in p.name for p in tmp_path.rglob("*.nbi"))


def test_a_subsample_s_index_is_freed_before_the_layout(monkeypatch):
    # embed_layer's subsample gets its own index for its graph; the UMAP fit that follows needs
    # only the graph, so the index (a float32 copy of the patterns) is gone by then.
    import gc
    import weakref

    from hopaudit.layer import embedding
    from hopaudit.layer.measuring import measure
    from hopaudit.search import backends

    x = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    report = measure(x, bootstrap=0, fractions=())
    built = []
    real_build = backends.build_index

    def build(*args, **kwargs):
        index = real_build(*args, **kwargs)
        built.append(weakref.ref(index))
        return index

    alive = []

    def layout(ids, dists, **kwargs):
        gc.collect()
        alive.append([ref() is not None for ref in built])
        return np.zeros((len(ids), 2), np.float32)

    monkeypatch.setattr(backends, "build_index", build)
    monkeypatch.setattr(embedding, "umap_from_knn", layout)
    emb = embedding.embed_layer(report, x, np.arange(300), 100, 0, None)
    assert len(emb.rows) == 100
    assert alive == [[False]]


def test_a_subsample_s_exact_index_keeps_the_subsample_itself(monkeypatch):
    # the subsample's exact index keeps the subsample's own array, centred in place (no copy
    # beside it), and searches its own rows; the layout starts from those centred rows' PCA
    # (the same as the rows' own), and the graph is exact search's on the rows as they were
    from hopaudit.geometry import normalize_rows
    from hopaudit.layer import embedding
    from hopaudit.layer.measuring import measure
    from hopaudit.search import backends

    x = (np.random.default_rng(1).normal(size=(300, 16)) + 5.0).astype(np.float32)
    report = measure(x, bootstrap=0, fractions=())
    assert report.index.kind == "exact"
    built, during, got, pca_of = [], [], {}, []
    real_build, real_knn, real_pca = backends.build_index, backends.knn_self, embedding.pca_start

    def build(data, *args, **kwargs):
        index = real_build(data, *args, **kwargs)
        built.append((data, index))
        return index

    def knn(index, data, k, progress=None):
        during.append(data)
        return real_knn(index, data, k, progress)

    def pca(data, seed=0):
        pca_of.append(data)
        return real_pca(data, seed)

    def layout(ids, dists, **kwargs):
        got.update(ids=ids, dists=dists, init=kwargs["init"], data=kwargs.get("data"))
        return np.zeros((len(ids), 2), np.float32)

    monkeypatch.setattr(backends, "build_index", build)
    monkeypatch.setattr(backends, "knn_self", knn)
    monkeypatch.setattr(embedding, "pca_start", pca)
    monkeypatch.setattr(embedding, "umap_from_knn", layout)
    emb = embedding.embed_layer(report, x, np.arange(300), 100, 0, None)
    ((data, index),) = built
    assert index._data.data_ptr() == data.ctypes.data  # the index holds the subsample itself
    assert during == [None]  # and searched its own rows
    assert pca_of == [data] and got["data"] is None  # the start: those rows, not kept after
    pick = np.sort(np.random.default_rng(0).choice(300, size=100, replace=False))
    sub = normalize_rows(x[pick], "rms")
    shift = sub - data  # one vector for every row: the centre
    np.testing.assert_allclose(shift, np.broadcast_to(shift[0], shift.shape), atol=1e-5)
    assert np.abs(shift[0]).max() > 0.1  # centred indeed (the rows sit off the origin)
    # the start is the rows' own PCA, scaled to 10 and jittered by 1e-4 as umap scales its own
    own = real_pca(sub, 0)
    np.testing.assert_allclose(got["init"], own * (10 / np.abs(own).max()), atol=1e-3)
    assert np.array_equal(emb.rows, pick)
    ids, dists = real_knn(real_build(sub, "exact"), sub, report.knn_ids.shape[1] - 1)
    assert np.array_equal(got["ids"][:, 1:], ids) and np.array_equal(got["dists"][:, 1:], dists)
