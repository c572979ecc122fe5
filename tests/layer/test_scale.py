"""One layer at a time: indexes and graphs on disk, opened on demand; peak memory; subsamples."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import random_texts, tiny_model, tiny_tokenizer

import hopaudit
from hopaudit.engines import local
from hopaudit.engines.memory import peak_rss
from hopaudit.errors import FormatError
from hopaudit.geometry import normalize_rows, subset_indices
from hopaudit.layer.files import LayerFiles, compact_graph, layer_files_path
from hopaudit.search import LazyIndex

OPTIONS = dict(max_length=12, positions="all", progress=False, umap_layers=[], index="exact")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same audit with a store (layers on disk) and without (layers in memory)."""
    model, _ = tiny_model("gpt2")
    tok = tiny_tokenizer()
    where = tmp_path_factory.mktemp("scale") / "store"
    on_disk = hopaudit.audit(
        model, random_texts(40, words=20), tokenizer=tok, store=str(where), **OPTIONS
    )
    in_ram = hopaudit.audit(model, random_texts(40, words=20), tokenizer=tok, **OPTIONS)
    return on_disk, in_ram, where


def test_layers_go_beside_the_store_and_open_on_demand(pair):
    on_disk, in_ram, where = pair
    folder = layer_files_path(where)
    assert on_disk.options["layer_files"] == str(folder)
    names = sorted(p.name for p in folder.iterdir())
    n_layers = len(on_disk.layer_names)
    assert names == sorted(
        f"layer_{i:03d}.{s}" for i in range(n_layers) for s in ("ids.npy", "dists.npy")
    )  # exact indexes are their data: rebuilt from the store, no file
    for name in on_disk.layer_names:
        rep = on_disk.layer_report(name)
        assert isinstance(rep.index, LazyIndex) and not rep.index.loaded
        assert isinstance(rep.knn_ids, np.memmap) and rep.knn_ids.dtype == np.int32
        assert rep.knn_dists.dtype == np.float32
        ref = in_ram.layer_report(name)
        np.testing.assert_array_equal(np.asarray(rep.knn_ids), ref.knn_ids)
        np.testing.assert_array_equal(np.asarray(rep.knn_dists), ref.knn_dists)


def test_per_layer_numbers_do_not_depend_on_where_layers_live(pair):
    on_disk, in_ram, _ = pair
    a = on_disk.layers.drop(columns=["skipped_reason"])
    b = in_ram.layers.drop(columns=["skipped_reason"])
    assert a.equals(b)
    assert on_disk.saturation.equals(in_ram.saturation)


def test_a_lazy_index_answers_as_a_brute_force_search(pair):
    on_disk, _, _ = pair
    name = on_disk.layer_names[1]
    rep = on_disk.layer_report(name)
    x = normalize_rows(np.asarray(on_disk.activations(name), np.float64), "rms")[rep.valid_rows]
    q = x[:7]
    ids, dists = rep.index.query(q, 3)
    assert rep.index.loaded
    d2 = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    order = np.argsort(d2, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_allclose(
        dists, np.sqrt(np.take_along_axis(d2, order, 1)), rtol=1e-5, atol=1e-5
    )
    rep.index.release()
    assert not rep.index.loaded
    np.testing.assert_array_equal(rep.index.query(q, 3)[0], ids)  # opened again
    rep.index.release()


def test_hnsw_layers_round_trip_through_save_and_load(tmp_path):
    model, _ = tiny_model("gpt2")
    a = hopaudit.audit(
        model,
        random_texts(30, words=20),
        tokenizer=tiny_tokenizer(),
        store=str(tmp_path / "s"),
        **{**OPTIONS, "index": "hnsw"},
    )
    files = sorted(p.name for p in layer_files_path(tmp_path / "s").iterdir())
    assert [f for f in files if f.endswith(".bin")] == [
        f"layer_{i:03d}.bin" for i in range(len(a.layer_names))
    ]
    root = a.save(tmp_path / "saved")
    b = hopaudit.load(root)
    q = np.random.default_rng(1).normal(size=(6, a.hidden_size)).astype(np.float32)
    for name in a.layer_names:
        ra, rb = a.layer_report(name), b.layer_report(name)
        assert not ra.index.loaded  # saving copied the file, the index stayed on disk
        assert isinstance(rb.index, LazyIndex) and not rb.index.loaded
        np.testing.assert_array_equal(ra.index.query(q, 4)[0], rb.index.query(q, 4)[0])
        np.testing.assert_array_equal(np.asarray(ra.knn_ids), rb.knn_ids)
        ra.index.release()


def test_peak_memory_is_reported_with_its_stage(tmp_path):
    model, _ = tiny_model("gpt2")
    a = hopaudit.audit(
        model,
        random_texts(40, words=20),
        tokenizer=tiny_tokenizer(),
        store=str(tmp_path / "s"),
        **OPTIONS,
    )
    # The high-water mark right after the audit, nothing run since (the audit reset it when it
    # started, so a later audit's reset, as in a whole test run, cannot lower it first).
    after_mb = peak_rss() / 2**20
    s = a.summary()
    stages = {"before the audit", "capture", "evidence (extraction, reference)"}
    stages |= {f"measuring {n}" for n in a.layer_names}
    stages |= {f"UMAP {n}" for n in a.layer_names}
    assert s["peak_rss_stage"] in stages
    assert 50 < s["peak_rss_mb"] <= after_mb + 1  # a Python process with torch is > 50 MB


def test_a_failed_measuring_removes_the_store_and_the_layer_files(tmp_path, monkeypatch):
    calls = []
    real = local.measure

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(local, "measure", failing)
    model, _ = tiny_model("gpt2")
    with pytest.raises(KeyboardInterrupt):
        hopaudit.audit(
            model,
            random_texts(10, words=20),
            tokenizer=tiny_tokenizer(),
            store=str(tmp_path / "s"),
            **OPTIONS,
        )
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []


def test_layer_files_refuse_a_folder_of_someone_elses(tmp_path):
    folder = tmp_path / "x.layers"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FormatError, match="did not write"):
        LayerFiles(folder)
    assert (folder / "notes.txt").read_text() == "mine"


def test_graphs_are_compact_where_the_ids_fit():
    ids = np.array([[0, 5], [1, 2**31 - 1]], dtype=np.int64)
    small, d = compact_graph(ids, np.ones((2, 2)), "float16")
    assert small.dtype == np.int32 and d.dtype == np.float16
    np.testing.assert_array_equal(small, ids)
    big, _ = compact_graph(ids + 1, np.ones((2, 2)))
    assert big.dtype == np.int64 and int(big.max()) == 2**31


def test_saturation_subsample_is_recorded_and_matches_brute_force():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 8))
    rep = hopaudit.measure(x, index="exact", saturation_max=30, seed=5, normalize="none")
    queries = rep.saturation_queries
    assert queries.size == 30 and np.all(np.diff(queries) > 0)
    subsets = subset_indices(400, (0.25, 0.5, 0.75, 1.0), 5)
    assert set(queries) <= set(subsets[0.25])
    for frac, members in subsets.items():
        got = rep.saturation_nn[frac]
        for j, q in enumerate(queries):
            others = members[members != q]
            want = np.sqrt(((x[others] - x[q]) ** 2).sum(1)).min()
            assert got[j] == pytest.approx(want, rel=1e-6)
    full = hopaudit.measure(x, index="exact", seed=5, normalize="none")
    assert full.saturation_queries.size == 100


def test_indexes_move_to_the_saved_copy_when_the_layer_files_go(tmp_path):
    from hopaudit.layer.files import move_to_saved

    model, _ = tiny_model("gpt2")
    a = hopaudit.audit(
        model,
        random_texts(20, words=20),
        tokenizer=tiny_tokenizer(),
        store=str(tmp_path / "s"),
        **{**OPTIONS, "index": "hnsw"},
    )
    q = np.random.default_rng(2).normal(size=(5, a.hidden_size)).astype(np.float32)
    before = {n: a.layer_report(n).index.query(q, 3)[0] for n in a.layer_names}
    for n in a.layer_names:
        a.layer_report(n).index.release()
    root = a.save(tmp_path / "saved")
    move_to_saved(a, root)
    assert not layer_files_path(tmp_path / "s").exists()
    for n in a.layer_names:
        index = a.layer_report(n).index
        assert index.file.parent == root / "indexes"
        np.testing.assert_array_equal(index.query(q, 3)[0], before[n])


def test_engine_options_are_checked_before_the_forward_pass():
    model, _ = tiny_model("gpt2")
    with pytest.raises(hopaudit.errors.DataError, match="engine must be one of"):
        hopaudit.audit(model, random_texts(4, words=20), tokenizer=tiny_tokenizer(), engine="spark")
    with pytest.raises(hopaudit.errors.DataError, match="ray_options is for engine='ray'"):
        hopaudit.audit(model, random_texts(4, words=20), tokenizer=tiny_tokenizer(), ray_options={})
    with pytest.raises(hopaudit.errors.DataError, match="graph_dtype"):
        hopaudit.audit(
            model, random_texts(4, words=20), tokenizer=tiny_tokenizer(), graph_dtype="int8"
        )


def test_a_large_layer_gets_a_bar_over_its_index_and_search(monkeypatch, capsys):
    monkeypatch.setattr(local, "LAYER_BAR_ROWS", 100)  # the tiny layers count as large
    model, _ = tiny_model("gpt2")
    a = hopaudit.audit(
        model,
        random_texts(40, words=20),
        tokenizer=tiny_tokenizer(),
        max_length=16,
        positions="all",
        umap_layers=[],
        progress=True,
    )
    err = capsys.readouterr().err
    rows = int(a.layers["n_patterns"].iloc[-1])
    assert rows >= 100
    for stage in ("index", "search"):  # shown when the bar opens and when the step changes
        assert f"final: {stage}" in err and f"/{2 * rows} [" in err, err[-2000:]


def test_a_large_layer_s_bar_switched_off_by_tqdm_disable(monkeypatch, capsys):
    """TQDM_DISABLE=1 (tqdm's own switch, read when tqdm is imported) gives disabled bars,
    which have no description to compare: the layer's bar still follows its steps, silently."""
    import functools

    monkeypatch.setattr(local, "LAYER_BAR_ROWS", 100)
    monkeypatch.setattr(local, "tqdm", functools.partial(local.tqdm, disable=True))
    model, _ = tiny_model("gpt2")
    a = hopaudit.audit(
        model, random_texts(40, words=20), tokenizer=tiny_tokenizer(), max_length=16,
        positions="all", umap_layers=[], progress=True,
    )  # fmt: skip
    assert int(a.layers["n_patterns"].iloc[-1]) >= 100
    assert "final: index" not in capsys.readouterr().err
