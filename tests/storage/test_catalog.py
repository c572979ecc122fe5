"""Tidy tables: parquet files in saved audits, hopaudit.catalog over many, JSON-safe summaries."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from tiny_models import random_texts, tiny_model, tiny_tokenizer

import hopaudit
from hopaudit.errors import DataError, FormatError


def _audit(arch: str, positions="last"):
    model, _ = tiny_model(arch)
    return hopaudit.audit(
        model,
        random_texts(40),
        tokenizer=tiny_tokenizer(),
        max_length=12,
        positions=positions,
        progress=False,
        umap_layers=[],
        autocast="off",
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory, one_torch_thread):
    """Three saved audits of two models, two of them as training steps, one with other
    positions (an option whose type differs between runs)."""
    root = tmp_path_factory.mktemp("runs")
    audits = [_audit("gpt2"), _audit("llama"), _audit("gpt2", positions=[0, -1])]
    audits[0].options["step"] = 100
    audits[1].options["step"] = 200
    paths = [
        a.save(root / name) for a, name in zip(audits, ["first", "second", "third"], strict=True)
    ]
    return root, audits, paths


def _expected(audits, paths, table):
    """The concatenation of each audit's own table with the id columns, built here by hand."""
    frames = []
    for a, path in zip(audits, paths, strict=True):
        df = getattr(a, table).copy()
        n = len(df)
        ids = pd.DataFrame(
            {
                "audit": pd.array([str(path)] * n, dtype="string"),
                "model": pd.array([a.model_name] * n, dtype="string"),
                "label": pd.array([path.name] * n, dtype="string"),
                "step": pd.array([a.options.get("step")] * n, dtype="Int64"),
            }
        )
        frames.append(pd.concat([ids, df.reset_index(drop=True)], axis=1))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("table", ["layers", "samples"])
def test_catalog_is_the_concatenation_of_the_tables(saved, table):
    root, audits, paths = saved
    got = hopaudit.catalog(paths, table)
    assert list(got.columns[:5]) == ["audit", "model", "label", "step", "saved_at"]
    assert got["saved_at"].notna().all() and str(got["saved_at"].dt.tz) == "UTC"
    expected = _expected(audits, paths, table)
    pd.testing.assert_frame_equal(
        got.drop(columns="saved_at"), expected, check_dtype=False, check_exact=True
    )
    assert got["step"].dtype == "Int64" and got["step"].isna().sum() == len(
        getattr(audits[2], table)
    )
    # a folder of audits and a glob give the same rows
    pd.testing.assert_frame_equal(hopaudit.catalog(root, table), got)
    pd.testing.assert_frame_equal(hopaudit.catalog(str(root / "*"), table), got)


def test_duckdb_reads_a_folder_of_audits(saved):
    duckdb = pytest.importorskip("duckdb")
    root, audits, _ = saved
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT audit, model, step, count(*) AS n, max(r_hat) AS r FROM "
        f"read_parquet('{root}/*/layers.parquet') GROUP BY ALL ORDER BY audit"
    ).fetchall()
    assert [r[0] for r in rows] == ["first", "second", "third"]
    for (_, model, step, n, r), a in zip(rows, audits, strict=True):
        assert model == a.model_name and step == a.options.get("step")
        assert n == len(a.layer_names)
        assert r == pytest.approx(float(np.nanmax(a.layers["r_hat"].to_numpy())), rel=0, abs=0)
    texts = con.execute(
        f"SELECT text FROM read_parquet('{root}/first/samples.parquet') ORDER BY sequence"
    ).fetchall()
    assert [t[0] for t in texts] == audits[0].texts


def test_parquet_files_are_in_the_manifest_with_their_hashes(saved):
    import blake3

    _, _, paths = saved
    meta = json.loads((paths[0] / "audit.json").read_text())
    for name in ("layers.parquet", "samples.parquet"):
        data = (paths[0] / name).read_bytes()
        assert meta["files"][name] == {"size": len(data), "blake3": blake3.blake3(data).hexdigest()}
    assert not [p for p in paths[0].iterdir() if p.name.startswith(".")]  # no temporaries left


def test_a_damaged_parquet_file_is_named(saved, tmp_path):
    _, audits, _ = saved
    path = audits[0].save(tmp_path / "a")
    data = bytearray((path / "layers.parquet").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "layers.parquet").write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"layers\.parquet"):
        hopaudit.catalog(path)
    # the other table is intact
    assert len(hopaudit.catalog(path, "samples")) == len(audits[0].texts)


def test_an_audit_saved_without_tables_is_computed(saved, tmp_path):
    from hopaudit.storage.manifest import encode_meta as _encode_meta
    from hopaudit.storage.manifest import read_meta as _read_meta

    _, audits, _ = saved
    path = audits[1].save(tmp_path / "old")
    meta = _read_meta(path)
    meta.pop("sha256")
    for name in ("layers.parquet", "samples.parquet"):
        del meta["files"][name]
        (path / name).unlink()
    (path / "audit.json").write_bytes(_encode_meta(meta))
    got = hopaudit.catalog(path)
    pd.testing.assert_frame_equal(
        got.iloc[:, 5:].reset_index(drop=True), audits[1].layers, check_dtype=False
    )


def test_audits_table_goes_to_parquet_with_options_of_different_types(saved, tmp_path):
    _, audits, paths = saved
    df = hopaudit.catalog(paths, "audits")
    assert len(df) == 3
    assert [json.loads(v) for v in df["option_positions"]] == ["last", "last", [0, -1]]
    assert df["cross_entropy"].tolist() == pytest.approx(
        [a.capture.cross_entropy for a in audits], rel=1e-12
    )
    df.to_parquet(tmp_path / "audits.parquet")
    back = pd.read_parquet(tmp_path / "audits.parquet")
    assert back["option_positions"].tolist() == df["option_positions"].tolist()


def test_summary_is_json_safe_with_stable_types(saved):
    _, audits, _ = saved
    for a in audits:
        s = a.summary()
        json.dumps(s, allow_nan=False)  # raises on NaN or numpy scalars
        for key, value in s.items():
            assert value is None or type(value) in (int, float, str, bool), (key, type(value))
            if isinstance(value, float):
                assert math.isfinite(value), key
        assert type(s["n_tokens"]) is int and type(s["n_patterns"]) is int
    assert [a.summary()["positions"] for a in audits] == ["last", "last", "0,-1"]


def test_bad_paths_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        hopaudit.catalog(tmp_path / "nope")
    with pytest.raises(DataError, match="holds none"):
        hopaudit.catalog(tmp_path)
    with pytest.raises(DataError, match="no saved audit matches"):
        hopaudit.catalog(str(tmp_path / "*"))
    with pytest.raises(DataError, match="table must be"):
        hopaudit.catalog(tmp_path, "basins")
