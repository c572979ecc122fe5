"""Saved audits: load(save(a)) equals a in every field; damaged directories name the problem."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import numpy as np
import pytest
from tiny_models import TOKENIZER_TEXT, tiny_model, tiny_tokenizer

import hopaudit
from hopaudit.errors import FormatError


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = TOKENIZER_TEXT.split()
    return [" ".join(rng.choice(words) for _ in range(30)) for _ in range(n)]


@pytest.fixture(scope="module")
def audited():
    model, _ = tiny_model("gpt2")
    return hopaudit.audit(
        model,
        _texts(150, 0),
        tokenizer=tiny_tokenizer(),
        heldout=_texts(20, 1),
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


def test_loaded_index_answers_queries_like_the_original(audited, tmp_path):
    a = audited
    a.save(tmp_path / "a")
    b = hopaudit.load(tmp_path / "a")
    for name in a.layer_names:
        ra, rb = a.report(name), b.report(name)
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
