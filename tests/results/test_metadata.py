"""audit(metadata=...): per-sequence columns join samples, survive a save, colour the view."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from tiny_models import random_texts, tiny_model, tiny_tokenizer

import hopaudit
from hopaudit.errors import DataError
from hopaudit.results.metadata import MISSING, OTHER, TOP_CATEGORIES, metadata_state
from hopaudit.views.schema import unpack

N = 48


def _meta(n: int = N) -> dict:
    rng = random.Random(5)
    return {
        "source": [rng.choice(["web", "books", "code"]) for _ in range(n)],
        "quality": [rng.random() for _ in range(n)],
    }


def _audit(metadata, **kw):
    model, _ = tiny_model("gpt2")
    return hopaudit.audit(
        model,
        random_texts(N, words=8, seed=3),
        tokenizer=tiny_tokenizer(),
        max_length=12,
        chunking="document",
        progress=False,
        umap_layers=["final"],
        autocast="off",
        metadata=metadata,
        **kw,
    )


@pytest.fixture(scope="module")
def audited(one_torch_thread):
    return _audit(_meta())


def test_metadata_joins_samples(audited):
    samples = audited.samples
    meta = _meta()
    assert samples["source"].tolist() == meta["source"]
    assert samples["quality"].tolist() == meta["quality"]
    assert list(samples.columns[:7]) == [
        "sequence",
        "text",
        "cross_entropy",
        "min_k",
        "top1",
        "distance_ratio",
        "basin",
    ]


def test_metadata_survives_save_and_load(audited, tmp_path):
    path = audited.save(tmp_path / "a")
    back = hopaudit.load(path)
    pd.testing.assert_frame_equal(back.metadata, audited.metadata)
    pd.testing.assert_frame_equal(back.samples, audited.samples)
    assert hopaudit.catalog(path, "samples")["source"].tolist() == _meta()["source"]
    import json

    assert "metadata.parquet" in json.loads((path / "audit.json").read_text())["files"]


def test_bad_metadata_is_refused_before_the_forward_pass(monkeypatch):
    def no_capture(*a, **k):
        raise AssertionError("the forward pass ran")

    monkeypatch.setattr("hopaudit.engines.local.capture", no_capture)
    with pytest.raises(DataError, match="47 rows but the audit has 48 sequences"):
        _audit({k: v[:47] for k, v in _meta().items()})
    with pytest.raises(DataError, match=r"already columns of audit\.samples"):
        _audit({"text": ["x"] * N})
    with pytest.raises(DataError, match="DataFrame or a dict"):
        _audit([1, 2, 3])
    with pytest.raises(DataError, match="non-empty strings"):
        _audit(pd.DataFrame({0: range(N)}))


def test_metadata_state_codes_categories_by_frequency():
    rng = random.Random(1)
    names = [f"c{i}" for i in range(14)]
    values = [rng.choice(names[: rng.randint(1, 14)]) for _ in range(300)]
    values[7] = None
    df = pd.DataFrame({"cat": values, "num": np.linspace(0, 1, 300)})
    df.loc[3, "num"] = np.nan
    state = metadata_state(df)
    cols = state["meta_columns"]
    rows = np.asarray(unpack(state["meta_values"]))
    assert rows.shape == (2, 300)
    counts = Counter(v for v in values if v is not None)
    top = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], values.index(kv[0])))]
    assert cols[0]["kind"] == "category"
    assert sorted(cols[0]["categories"]) == sorted(top[:TOP_CATEGORIES])
    assert [counts[c] for c in cols[0]["categories"]] == sorted(
        (counts[c] for c in cols[0]["categories"]), reverse=True
    )
    for i, v in enumerate(values):
        code = rows[0, i]
        if v is None:
            assert code == MISSING
        elif v in cols[0]["categories"]:
            assert cols[0]["categories"][int(code)] == v
        else:
            assert code == OTHER
    assert cols[1] == {"name": "num", "kind": "number", "categories": []}
    assert np.isnan(rows[1, 3])
    assert np.allclose(np.delete(rows[1], 3), np.delete(np.linspace(0, 1, 300), 3), atol=1e-7)


def test_the_view_state_carries_the_metadata(audited):
    state = audited.widget_state()
    assert [c["name"] for c in state["meta_columns"]] == ["source", "quality"]
    codes = np.asarray(unpack(state["meta_values"]))[0]
    cats = state["meta_columns"][0]["categories"]
    assert [cats[int(c)] for c in codes] == _meta()["source"]
    w = audited.widget()
    assert w.meta_columns == state["meta_columns"]
    empty = _audit(None)
    assert empty.widget_state()["meta_columns"] == [] and empty.metadata is None


def test_every_hopaudit_column_name_is_reserved(audited, tmp_path):
    """Issue 26: the reserved names cover every column hopaudit writes beside the user's:
    samples (its scores among them) and the id columns of the saved tables and the catalog
    (read from a real save, not from the list itself)."""
    from hopaudit.results.metadata import RESERVED

    path = audited.save(tmp_path / "a")
    own = set(audited.samples.columns) - set(_meta())
    own |= set(pd.read_parquet(path / "samples.parquet").columns) - set(_meta())
    own |= set(hopaudit.catalog(path, "samples").columns) - set(_meta())
    assert own <= set(RESERVED), own - set(RESERVED)


@pytest.mark.parametrize("name", ["loss", "zlib", "label", "model", "text", "sequence"])
def test_a_metadata_column_named_like_hopaudits_is_refused(name):
    """Issue 26: such a column was accepted, then save failed on duplicate columns or the
    catalog replaced the user's ``label`` with its own: refused at audit() with the list."""
    from hopaudit.results.metadata import check_metadata

    with pytest.raises(DataError, match=f"'{name}'.*reserved: sequence, text.*label"):
        check_metadata({name: [1, 2], "fine": [3, 4]}, 2)


@pytest.mark.parametrize(
    "column",
    [
        pd.Series([[1, 2], [3]], dtype=object),  # lists
        pd.Series([{"a": 1}, {"b": 2}], dtype=object),  # structs
        pd.Series([b"x", b"y"], dtype=object),  # bytes
    ],
)
def test_a_crafted_metadata_table_is_refused_on_load(audited, tmp_path, column):
    """Issue 26: metadata.parquet replaced by one with nested, byte or reserved columns and
    every digest made to match: load raises a FormatError naming the file (on main to_html
    and the snapshot raised AttributeError or TypeError)."""
    from fakes import resign

    from hopaudit.errors import FormatError

    for i, df in enumerate(
        [
            pd.DataFrame({"odd": pd.concat([column] * (N // 2), ignore_index=True)}),
            pd.DataFrame({"label": ["x"] * N}),
        ]
    ):
        path = audited.save(tmp_path / f"a{i}")
        df.to_parquet(path / "metadata.parquet")
        resign(path)
        with pytest.raises(FormatError, match=r"metadata\.parquet: damaged"):
            hopaudit.load(path)
