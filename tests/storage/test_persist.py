"""Saved audits: load(save(a)) equals a in every field; damaged directories name the problem."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from tiny_models import random_texts, tiny_model, tiny_tokenizer

import hopaudit
from hopaudit.errors import FormatError
from hopaudit.layer.patterns import layer_patterns
from hopaudit.search.backends import build_index


@pytest.fixture(scope="module")
def audited():
    model, _ = tiny_model("gpt2")
    return hopaudit.audit(
        model,
        random_texts(150),
        tokenizer=tiny_tokenizer(),
        heldout=random_texts(20, seed=1),
        max_length=12,
        progress=False,
        umap_layers=["final"],
    )


def assert_same(a, b, where="audit"):
    """Recursive equality over dataclasses, dicts, arrays and floats (nan == nan)."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            if f.name in ("index", "store"):
                continue
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_round_trip_is_exact(audited, tmp_path):
    a = audited
    a.save(tmp_path / "a")
    b = hopaudit.load(tmp_path / "a")
    assert_same(a, b)
    for name in a.layer_names:
        np.testing.assert_array_equal(a.activations(name), b.activations(name))
        np.testing.assert_array_equal(
            a.heldout_capture.store.get(name), b.heldout_capture.store.get(name)
        )
    assert a.layers.equals(b.layers)
    assert a.samples.equals(b.samples)
    assert a.saturation.equals(b.saturation)
    assert a.summary() == b.summary()
    # the kept geometric scores are recomputed from the saved stores, held-out ones too
    for which in ("stored", "heldout"):
        kept = a.geometric_scores(which, per_layer=False)
        assert kept.notna().all().all() and kept.equals(b.geometric_scores(which, per_layer=False))
    assert a.membership.equals(b.membership)


def test_a_loaded_audit_maps_its_graphs_instead_of_reading_them(audited, tmp_path):
    b = hopaudit.load(audited.save(tmp_path / "a"))
    for name in audited.layer_names:
        rep = b.layer_report(name)
        for field in ("knn_ids", "knn_dists"):
            got = getattr(rep, field)
            assert isinstance(got, np.memmap) and not got.flags.writeable, field
            np.testing.assert_array_equal(got, getattr(audited.layer_report(name), field))


def test_a_format_2_folder_with_the_graph_in_the_report_still_loads(audited, tmp_path):
    """Format 2 kept each layer's kNN graph inside reports/layer_NNN.npz."""
    import hashlib

    root = audited.save(tmp_path / "a")
    _as_format_3(root)  # SHA-256 digests, as format 2 listed them too
    meta = json.loads((root / "audit.json").read_text())
    meta.pop("sha256")
    for npz in sorted((root / "reports").glob("layer_*.npz")):
        stem = npz.name.removesuffix(".npz")
        with np.load(npz) as z:
            arrays = {k: z[k] for k in z.files}
        for field in ("ids", "dists"):
            graph = root / "graphs" / f"{stem}.{field}.npy"
            arrays[f"knn_{field}"] = np.load(graph)
            graph.unlink()
            del meta["files"][f"graphs/{graph.name}"]
        np.savez(npz, **arrays)
        data = npz.read_bytes()
        meta["files"][f"reports/{npz.name}"] = {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    (root / "graphs").rmdir()
    meta["format_version"] = 2
    body = json.dumps({"sha256": "0" * 64, **meta}, indent=1)
    digest = hashlib.sha256(body.encode()).hexdigest()
    (root / "audit.json").write_text(body.replace("0" * 64, digest, 1))
    old = hopaudit.load(root)
    assert_same(audited, old)
    assert not isinstance(old.layer_report("final").knn_ids, np.memmap)


def _as_format_3(root) -> None:
    """Rewrite a saved folder as format 3 wrote it: SHA-256 in the manifest, re-signed."""
    import hashlib

    meta = json.loads((root / "audit.json").read_text())
    meta.pop("sha256")
    for rel in meta["files"]:
        data = (root / rel).read_bytes()
        meta["files"][rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    meta["format_version"] = 3
    body = json.dumps({"sha256": "0" * 64, **meta}, indent=1)
    digest = hashlib.sha256(body.encode()).hexdigest()
    (root / "audit.json").write_text(body.replace("0" * 64, digest, 1))


def test_a_format_3_folder_with_sha256_digests_still_loads_and_is_verified(audited, tmp_path):
    root = audited.save(tmp_path / "a")
    _as_format_3(root)
    assert_same(audited, hopaudit.load(root))
    # its SHA-256 digests are checked: one flipped byte is named
    victim = root / "texts.json"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"texts\.json.*SHA-256"):
        hopaudit.load(root)


def test_a_format_4_file_damaged_is_named_by_its_blake3(audited, tmp_path):
    root = audited.save(tmp_path / "a")
    victim = next((root / "reports").glob("layer_*.npz"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=f"{victim.name}.*BLAKE3"):
        hopaudit.load(root)


def test_loaded_index_answers_queries_like_the_original(audited, tmp_path):
    a = audited
    a.save(tmp_path / "a")
    b = hopaudit.load(tmp_path / "a")
    for name in a.layer_names:
        ra, rb = a.layer_report(name), b.layer_report(name)
        assert ra.index.kind == rb.index.kind
        x = np.random.default_rng(0).normal(size=(7, ra.n)).astype(np.float32)
        ia, da = ra.index.query(x, 3)
        ib, db = rb.index.query(x, 3)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_allclose(da, db, rtol=1e-6)


def test_hnsw_index_round_trips(tmp_path):
    """Enough patterns for the HNSW backend: its graph is saved in hnswlib's own file."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    rep = hopaudit.measure(x, index="hnsw")
    from hopaudit.search import load_index, save_index

    meta = save_index(rep.index, tmp_path / "i.bin")
    assert (tmp_path / "i.bin").stat().st_size > 0
    back = load_index(json.loads(json.dumps(meta)), tmp_path / "i.bin", patterns=None)
    q = rng.normal(size=(20, 16)).astype(np.float32)
    np.testing.assert_array_equal(rep.index.query(q, 5)[0], back.query(q, 5)[0])


def test_save_refuses_a_non_empty_directory(audited, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(FormatError, match="not empty"):
        audited.save(tmp_path / "x")
    assert (tmp_path / "x" / "notes.txt").read_text() == "mine"


def test_damaged_file_is_named(audited, tmp_path):
    root = audited.save(tmp_path / "a")
    victim = root / "reports" / "layer_001.npz"
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(FormatError, match=r"layer_001\.npz"):
        hopaudit.load(root)


def test_missing_file_is_named(audited, tmp_path):
    root = audited.save(tmp_path / "a")
    (root / "texts.json").unlink()
    with pytest.raises(FormatError, match=r"texts\.json.*missing"):
        hopaudit.load(root)


def test_newer_format_is_refused(audited, tmp_path):
    root = audited.save(tmp_path / "a")
    meta = json.loads((root / "audit.json").read_text())
    meta["format_version"] = 99
    (root / "audit.json").write_text(json.dumps(meta))
    with pytest.raises(FormatError, match="upgrade hopaudit"):
        hopaudit.load(root)


def test_not_an_audit(tmp_path):
    with pytest.raises(FormatError, match="no such directory"):
        hopaudit.load(tmp_path / "nothing")
    (tmp_path / "d").mkdir()
    with pytest.raises(FormatError, match=r"audit\.json"):
        hopaudit.load(tmp_path / "d")
    (tmp_path / "d" / "audit.json").write_text("{not json")
    with pytest.raises(FormatError, match="damaged"):
        hopaudit.load(tmp_path / "d")


# ------------------------------------------------------------- atomic saves, integrity (issue 12)
def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_manifest_holds_the_blake3_of_every_file(audited, tmp_path):
    import hashlib

    import blake3

    root = audited.save(tmp_path / "a")
    meta = json.loads((root / "audit.json").read_text())
    assert meta["format_version"] == 4
    on_disk = {p for p in _files(root) if (root / p).is_file()} - {"audit.json"}
    assert set(meta["files"]) == on_disk
    for rel, entry in meta["files"].items():
        data = (root / rel).read_bytes()
        assert entry == {"size": len(data), "blake3": blake3.blake3(data).hexdigest()}
    # audit.json's own digest: over the file with the digest's 64 characters zeroed
    raw = (root / "audit.json").read_bytes()
    digest = meta["sha256"]
    assert hashlib.sha256(raw.replace(digest.encode(), b"0" * 64, 1)).hexdigest() == digest


def test_a_changed_number_in_audit_json_is_caught(audited, tmp_path):
    root = audited.save(tmp_path / "a")
    text = (root / "audit.json").read_text()
    r_hat = audited.reports["final"].r_hat
    assert repr(r_hat) in text
    (root / "audit.json").write_text(text.replace(repr(r_hat), repr(r_hat * 1.5), 1))
    with pytest.raises(FormatError, match=r"audit\.json.*SHA-256"):
        hopaudit.load(root)


def test_load_then_save_over_itself(audited, tmp_path):
    root = audited.save(tmp_path / "a")
    b = hopaudit.load(root)
    b.save(root, overwrite=True)
    c = hopaudit.load(root)
    assert_same(audited, c)
    for name in audited.layer_names:
        np.testing.assert_array_equal(audited.activations(name), c.activations(name))
        np.testing.assert_array_equal(b.activations(name), c.activations(name))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temporary left


def test_overwrite_refuses_a_folder_that_is_not_an_audit(audited, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "audit.json").write_text('{"format": "something else"}')  # the name alone is not enough
    (d / "data.csv").write_text("mine")
    with pytest.raises(FormatError, match=r"not a saved audit.*nothing in it was touched"):
        audited.save(d, overwrite=True)
    assert sorted(p.name for p in d.iterdir()) == ["audit.json", "data.csv"]


def test_overwrite_refuses_an_audit_holding_foreign_files(audited, tmp_path):
    root = audited.save(tmp_path / "a")
    (root / "notes.txt").write_text("mine")
    (root / "reports" / "extra.npz").write_bytes(b"mine too")
    before = _files(root)
    with pytest.raises(FormatError, match=r"notes\.txt.*nothing was changed"):
        audited.save(root, overwrite=True)
    assert _files(root) == before
    with pytest.raises(FormatError, match="overwrite=True"):
        audited.save(tmp_path / "a")  # without overwrite an audit is never replaced


def test_remove_audit_deletes_only_the_listed_files(audited, tmp_path):
    from hopaudit.storage.persist import remove_audit

    root = audited.save(tmp_path / "a")
    (root / "reports" / "mine.txt").write_text("mine")
    left = remove_audit(root)
    assert left == ["reports"]
    assert _files(root) == ["reports", "reports/mine.txt"]
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x.txt").write_text("x")
    with pytest.raises(FormatError):
        remove_audit(plain)
    assert (plain / "x.txt").read_text() == "x"


def test_a_missing_or_damaged_hnsw_index_is_rebuilt(tmp_path):
    """The HNSW graph is derived data: a bad file is never handed to hnswlib, the index is
    rebuilt from the activations with a warning, and it finds the same neighbours."""
    model, _ = tiny_model("gpt2")
    a = hopaudit.audit(
        model,
        random_texts(60, seed=3),
        tokenizer=tiny_tokenizer(),
        max_length=10,
        index="hnsw",
        progress=False,
        umap_layers=[],
    )
    root = a.save(tmp_path / "a")
    (root / "indexes" / "layer_000.bin").unlink()
    victim = root / "indexes" / "layer_001.bin"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="rebuilding the HNSW index") as caught:
        b = hopaudit.load(root)
    named = " ".join(str(w.message) for w in caught)
    assert "layer_000.bin" in named and "layer_001.bin" in named and "layer_002.bin" not in named
    # A threaded HNSW build is not deterministic, so the rebuilt graph is checked the way any
    # HNSW graph is: against exact search, on queries near the stored patterns.
    for name in a.layer_names:
        rep = b.layer_report(name)
        assert rep.index.kind == "hnsw"
        patterns = layer_patterns(b.capture.store, name, rep.valid_rows, rep.normalize)
        rng = np.random.default_rng(0)
        x = patterns[rng.choice(len(patterns), 40, replace=False)]
        x = x + 0.05 * np.abs(x).mean() * rng.normal(size=x.shape).astype(np.float32)
        truth = build_index(patterns, "exact").query(x, 3)[0]
        for index in (a.layer_report(name).index, rep.index):
            found = index.query(x, 3)[0]
            recall = np.mean([len(set(f) & set(t)) / 3 for f, t in zip(found, truth, strict=True)])
            assert recall >= 0.9, (name, recall)
    import warnings as _w

    with _w.catch_warnings():
        _w.simplefilter("error")
        hopaudit.load(root, rebuild_index=True)  # asked for: no warning, saved files unread


def test_verify_false_skips_the_digests_of_data_files(audited, tmp_path):
    root = audited.save(tmp_path / "a")
    victim = root / "activations" / "layer_000.f32"
    data = bytearray(victim.read_bytes())
    data[0] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"layer_000\.f32.*BLAKE3"):
        hopaudit.load(root)
    b = hopaudit.load(root, verify=False)  # sizes still checked, digests not
    assert b.activations(0).shape == audited.activations(0).shape
