"""ActivationStore alone: RAM and memory-mapped stores give back exactly the rows appended."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hopaudit.capture.store import ActivationStore
from hopaudit.errors import DataError, FormatError

NAMES = ["model.layers.0", "model.layers.1/x", "final"]


def _chunks(rng, hidden, sizes):
    return [rng.standard_normal((m, hidden)).astype(np.float32) for m in sizes]


@pytest.mark.parametrize("on_disk", [False, True])
def test_round_trip_matches_concatenation(tmp_path, on_disk):
    rng = np.random.default_rng(0)
    path = tmp_path / "store" if on_disk else None
    store = ActivationStore(NAMES, path=path)
    expected = {}
    for i, name in enumerate(NAMES):
        chunks = _chunks(rng, 8 + i, [3, 0, 5, 1])
        for c in chunks:
            store.append(name, c)
        expected[name] = np.concatenate(chunks).astype(np.float16)
    assert store.shape("final") == (9, 10)
    store.finalize()
    for name in NAMES:
        got = store.get(name)
        assert got.shape == expected[name].shape
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got, expected[name])
        assert isinstance(got, np.memmap) == on_disk
        assert not got.flags.writeable
    assert store.nbytes == sum(a.nbytes for a in expected.values())
    if on_disk:
        # one raw file per layer, named by index, holding exactly the rows
        files = sorted(p.name for p in path.iterdir())
        assert files == ["layer_000.f16", "layer_001.f16", "layer_002.f16", "meta.json"]
        raw = np.fromfile(path / "layer_002.f16", dtype=np.float16).reshape(-1, 10)
        np.testing.assert_array_equal(raw, expected["final"])


@pytest.mark.parametrize("on_disk", [False, True])
def test_truncate_takes_back_whole_appends(tmp_path, on_disk):
    """What a batch that runs again wrote is cut (capture/forward.py): the store then holds the
    rows before it and what comes after, as if the cut appends never happened."""
    rng = np.random.default_rng(3)
    store = ActivationStore(NAMES[:1], dtype=np.float32, path=tmp_path / "s" if on_disk else None)
    name = NAMES[0]
    kept, cut, after = _chunks(rng, 6, [4, 3, 5])
    store.append(name, kept)
    store.truncate(name, 4)  # nothing after row 4: nothing to cut
    store.append(name, cut)
    store.append(name, cut[:1])
    if not on_disk:  # in RAM only whole appends, and a refused cut cuts nothing
        with pytest.raises(DataError, match="within an append"):
            store.truncate(name, 6)
        assert store.shape(name) == (8, 6)
    store.truncate(name, 4)
    assert store.shape(name) == (4, 6)
    store.append(name, after)
    with pytest.raises(DataError, match="holds 9 rows"):
        store.truncate(name, 10)
    store.finalize()
    np.testing.assert_array_equal(store.get(name), np.concatenate([kept, after]))
    with pytest.raises(DataError, match="finalized"):
        store.truncate(name, 0)
    if on_disk:
        assert (tmp_path / "s" / "layer_000.f32").stat().st_size == 9 * 6 * 4


def test_appends_stream_to_disk_before_finalize(tmp_path):
    store = ActivationStore(["a"], path=tmp_path / "s")
    store.append("a", np.ones((4, 6), dtype=np.float32))
    store._files["a"].flush()
    assert (tmp_path / "s" / "layer_000.f16").stat().st_size == 4 * 6 * 2
    store.append("a", np.zeros((2, 6), dtype=np.float32))
    store.finalize()
    assert (tmp_path / "s" / "layer_000.f16").stat().st_size == 6 * 6 * 2


def test_reopen_gives_same_arrays_and_meta(tmp_path):
    rng = np.random.default_rng(1)
    store = ActivationStore(NAMES, dtype=torch.float32, path=tmp_path)
    data = {n: rng.standard_normal((7, 4)) for n in NAMES}
    for n in NAMES:
        store.append(n, data[n])
    store.finalize()
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["complete"] is True
    assert [e["name"] for e in meta["layers"]] == NAMES
    assert [(e["rows"], e["hidden"]) for e in meta["layers"]] == [(7, 4)] * 3
    again = ActivationStore.open(tmp_path)
    assert again.layer_names == NAMES
    assert again.dtype == np.float32
    for n in NAMES:
        np.testing.assert_array_equal(again.get(n), data[n].astype(np.float32))
    assert again.nbytes == 3 * 7 * 4 * 4


def test_ram_copies_caller_buffer():
    store = ActivationStore(["a"], dtype="float32")
    buf = np.ones((2, 3), dtype=np.float32)
    store.append("a", buf)
    buf[:] = 5
    store.finalize()
    np.testing.assert_array_equal(store.get("a"), np.ones((2, 3)))


def test_float16_cast_rounds_like_numpy():
    x = np.array([[1 / 3, 70000.0, -1e-8]])
    store = ActivationStore(["a"])
    store.append("a", x)
    store.finalize()
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16)
    assert np.isinf(expected[0, 1])
    np.testing.assert_array_equal(store.get("a"), expected)


def test_errors(tmp_path):
    with pytest.raises(DataError, match="unique"):
        ActivationStore(["a", "a"])
    with pytest.raises(DataError, match="at least one"):
        ActivationStore([])
    with pytest.raises(DataError, match="not supported"):
        ActivationStore(["a"], dtype="int8")
    store = ActivationStore(["a"])
    store.append("a", np.zeros((2, 3)))
    with pytest.raises(DataError, match="hidden size 3"):
        store.append("a", np.zeros((2, 4)))
    with pytest.raises(DataError, match="2-D"):
        store.append("a", np.zeros(3))
    with pytest.raises(DataError, match="unknown layer"):
        store.append("b", np.zeros((2, 3)))
    with pytest.raises(DataError, match="finalize"):
        store.get("a")
    store.finalize()
    with pytest.raises(DataError, match="finalized"):
        store.append("a", np.zeros((2, 3)))


def test_path_must_be_empty_dir_or_previous_store(tmp_path):
    afile = tmp_path / "file.txt"
    afile.write_text("mine")
    with pytest.raises(FormatError, match="is a file"):
        ActivationStore(["a"], path=afile)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(FormatError, match="not an activation store"):
        ActivationStore(["a"], path=busy)
    assert (busy / "notes.txt").read_text() == "mine"
    # a previous store is replaced
    old = ActivationStore(["a", "b"], path=tmp_path / "old")
    old.append("a", np.ones((3, 2)))
    old.finalize()
    new = ActivationStore(["c"], path=tmp_path / "old")
    new.append("c", np.zeros((1, 5)))
    new.finalize()
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["layer_000.f16", "meta.json"]
    assert ActivationStore.open(tmp_path / "old").get("c").shape == (1, 5)
    # ... also with a nested store inside (audit's held-out store), but not with strangers
    inner = ActivationStore(["a"], path=tmp_path / "old" / "heldout")
    inner.append("a", np.ones((1, 2)))
    inner.finalize()
    ActivationStore(["d"], path=tmp_path / "old").finalize()
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["meta.json"]
    ActivationStore(["a"], path=tmp_path / "old" / "heldout").finalize()
    (tmp_path / "old" / "heldout" / "mine.txt").write_text("x")
    with pytest.raises(FormatError, match=r"heldout/mine\.txt"):
        ActivationStore(["d"], path=tmp_path / "old")


def test_open_errors(tmp_path):
    with pytest.raises(FormatError, match="not a directory"):
        ActivationStore.open(tmp_path / "missing")
    with pytest.raises(FormatError, match=r"meta\.json"):
        ActivationStore.open(tmp_path)
    unfinished = ActivationStore(["a"], path=tmp_path / "u")
    unfinished.append("a", np.ones((2, 2)))
    with pytest.raises(FormatError, match="never finalized"):
        ActivationStore.open(tmp_path / "u")
    unfinished.finalize()
    with open(tmp_path / "u" / "layer_000.f16", "ab") as f:
        f.write(b"xx")
    with pytest.raises(FormatError, match="damaged"):
        ActivationStore.open(tmp_path / "u").get("a")
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "meta.json").write_text("{nope")
    with pytest.raises(FormatError, match="JSON"):
        ActivationStore.open(tmp_path / "v")


def test_discard_removes_what_it_wrote(tmp_path):
    store = ActivationStore(["a", "b"], path=tmp_path / "new")
    store.append("a", np.ones((2, 2)))
    store.discard()
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    store = ActivationStore(["a"], path=tmp_path / "kept")
    store.append("a", np.ones((2, 2)))
    store.discard()
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())


def test_empty_layer_reads_as_zero_rows(tmp_path):
    for path in (None, tmp_path):
        store = ActivationStore(["a", "b"], path=path)
        store.append("a", np.ones((2, 3)))
        store.finalize()
        assert store.get("b").shape == (0, 0)
        assert store.get("a").shape == (2, 3)
