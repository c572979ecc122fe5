"""widget_state packing and the HTML report, checked by decoding the bytes back by hand."""

from __future__ import annotations

import base64
import itertools
import math
import re

import numpy as np
import pytest
from fakes import fake_audit

from hopaudit.views import report, schema, widget
from hopaudit.views.widget import LAYER_STAT_COLUMNS, decode, widget_state

HAS_BUNDLE = widget.ESM_PATH.is_file()


@pytest.fixture(scope="module")
def audit():
    return fake_audit(n_blocks=3, d=160, n=24, seed=3, skip=1)


@pytest.fixture(scope="module")
def state(audit):
    return widget_state(audit)


def test_every_array_is_packed_bytes_never_a_json_list_of_numbers(state):
    def numbers_in_lists(v):
        if schema.is_array(v):  # its shape is the one list of numbers an array carries
            return False
        if isinstance(v, list):
            return any(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v) or any(
                numbers_in_lists(x) for x in v
            )
        if isinstance(v, dict):
            return any(numbers_in_lists(x) for x in v.values())
        return False

    # hist_fractions is the one short list of numbers (the four fractions, not data)
    offenders = [k for k, v in state.items() if k != "hist_fractions" and numbers_in_lists(v)]
    assert offenders == []
    for key in widget.STATE_LAYOUT:
        v = state[key]
        assert schema.is_array(v) and isinstance(v["view"], bytes), key
        # the description matches the bytes: dtype item size times the shape's product
        itemsize = np.dtype(schema.DTYPES[v["dtype"]]).itemsize
        assert len(v["view"]) == itemsize * int(np.prod(v["shape"])), key


def test_the_state_packs_exactly_the_data_traits_of_traits_json(state):
    """One list of data traits (hopaudit/views/traits.json) for the state, the widget's traits
    and the front end: a trait packed but not declared, or declared but never packed, fails."""
    import json
    from pathlib import Path

    declared = json.loads((Path(widget.__file__).with_name("traits.json")).read_text())["audit"]
    assert set(state) - {"kind"} == set(declared)
    synced = set(widget.AuditWidget.class_trait_names(sync=True))
    assert set(declared) <= synced
    for name, kind in declared.items():
        if kind == "array":
            assert isinstance(state[name], dict) and "view" in state[name], name
    index_ts = Path(widget.__file__).parents[2] / "js" / "src" / "index.ts"
    assert "views/traits.json" in index_ts.read_text()


def test_layer_table_round_trips(audit, state):
    stats = decode(state, "layer_stats")
    table = audit.layers
    assert stats.shape == (len(table), len(LAYER_STAT_COLUMNS))
    for col in ("r_hat", "r_star", "r_c", "nn_median", "twonn_id", "floor_low"):
        j = LAYER_STAT_COLUMNS.index(col)
        want = table[col].to_numpy(dtype=float)
        np.testing.assert_allclose(stats[:, j], want, rtol=0, atol=0, equal_nan=True)
    # The interquartile band comes from the report's raw distances.
    name = table["name"].iloc[-1]
    q25, q75 = np.quantile(audit.reports[name].nn, [0.25, 0.75])
    j25, j75 = LAYER_STAT_COLUMNS.index("r_hat_q25"), LAYER_STAT_COLUMNS.index("r_hat_q75")
    assert stats[-1, j25] == pytest.approx(q25 / 2, rel=1e-12)
    assert stats[-1, j75] == pytest.approx(q75 / 2, rel=1e-12)
    # The skipped layer is all NaN and says why.
    assert np.isnan(stats[1, LAYER_STAT_COLUMNS.index("r_hat")])
    assert state["layer_info"][1]["skipped_reason"] == "all rows were non-finite"
    assert state["layer_info"][0]["skipped_reason"] is None


def test_histograms_match_numpy_on_the_shared_edges(audit, state):
    counts = decode(state, "hist_counts")
    ranges = decode(state, "hist_range")
    medians = decode(state, "hist_medians")
    bins = state["hist_bins"]
    for i, name in enumerate(state["layer_names"]):
        rep = audit.reports.get(name)
        if rep is None:
            assert counts[i].sum() == 0 and np.isnan(ranges[i]).all()
            continue
        lo, hi = ranges[i]
        assert lo <= 2 * rep.r_star <= hi and lo <= 2 * rep.r_hat <= hi
        log = decode(state, "hist_log")[i]
        edges = np.geomspace(lo, hi, bins + 1) if log else np.linspace(lo, hi, bins + 1)
        for j, frac in enumerate(state["hist_fractions"]):
            d = np.clip(rep.saturation_nn[frac], lo, hi)
            # every distance lands in a bin: nothing dropped at the edges
            assert counts[i, j].sum() == len(d)
            # independent binning: searchsorted on the edges, last bin closed
            k = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, bins - 1)
            np.testing.assert_array_equal(counts[i, j], np.bincount(k, minlength=bins))
            assert medians[i, j] == pytest.approx(float(np.median(d)))


def test_scatter_points_decode_within_quantization_error(audit, state):
    xy = decode(state, "scatter_xy")
    basin = decode(state, "scatter_basin")
    ratio = decode(state, "scatter_ratio")
    seq = decode(state, "scatter_seq")
    assert [m["name"] for m in state["scatter_layers"]] == list(audit.embeddings)
    for meta in state["scatter_layers"]:
        emb = audit.embeddings[meta["name"]]
        o, m = meta["offset"], meta["n"]
        q = xy[o : o + m].astype(np.float64)
        x = meta["x0"] + q[:, 0] / 65535 * (meta["x1"] - meta["x0"])
        y = meta["y0"] + q[:, 1] / 65535 * (meta["y1"] - meta["y0"])
        step = max(meta["x1"] - meta["x0"], meta["y1"] - meta["y0"]) / 65535
        assert np.abs(x - emb.xy[:, 0]).max() <= step / 2 + 1e-6
        assert np.abs(y - emb.xy[:, 1]).max() <= step / 2 + 1e-6
        r = meta["ratio_lo"] + ratio[o : o + m] / 254 * (meta["ratio_hi"] - meta["ratio_lo"])
        assert np.abs(r - emb.ratio).max() <= (meta["ratio_hi"] - meta["ratio_lo"]) / 254 / 2 + 1e-6
        s = seq[meta["seq_offset"] : meta["seq_offset"] + m]
        np.testing.assert_array_equal(s, emb.sequence)
        # basin ranks: rank 0 is the largest basin, points sharing a basin share a rank
        ranks = basin[o : o + m]
        layer_sizes = widget.basin_sizes(state, state["scatter_layers"].index(meta))
        assert len(layer_sizes) == meta["n_basins"]
        assert np.all(np.diff(layer_sizes.astype(np.int64)) <= 0)
        true_size = audit.reports[meta["name"]].basin_sizes
        for b in np.unique(emb.basin):
            rb = np.unique(ranks[emb.basin == b])
            assert len(rb) == 1
            assert layer_sizes[rb[0]] == true_size[b]
        assert meta["n_basins"] == len(np.unique(emb.basin))


def test_shared_sequence_arrays_are_sent_once(state):
    metas = state["scatter_layers"]
    assert len({m["seq_offset"] for m in metas}) == 1  # the fake reuses one subsample
    assert len(decode(state, "scatter_seq")) == metas[0]["n"]


def test_samples_and_texts(audit, state):
    df = audit.samples
    rows = decode(state, "sample_seq").astype(np.int64)
    values = decode(state, "sample_values")
    columns = state["sample_columns"]
    assert columns == [c for c in widget.SAMPLE_COLUMNS if c in df.columns]
    assert columns[0] == "cross_entropy"  # the fake has no loss column: cross-entropy leads
    ce = df["cross_entropy"].to_numpy()
    # the 100 lowest cross-entropies, the 100 highest Min-K% and the 100 smallest ratios are in
    min_k, ratio = df["min_k"].to_numpy(), df["distance_ratio"].to_numpy()
    for ranked in (np.argsort(ce), np.argsort(-min_k), np.argsort(ratio)):
        assert set(ranked[:100]) <= set(rows.tolist())
    for name in ("cross_entropy", "min_k", "distance_ratio", "top1", "basin"):
        want = df[name].to_numpy(dtype=np.float64)[rows].astype(np.float32)
        np.testing.assert_allclose(values[:, columns.index(name)], want)
    offsets = decode(state, "text_offsets")
    blob = decode(state, "text_bytes").tobytes()
    for i in (0, 7, int(rows[0])):
        text = blob[offsets[i] : offsets[i + 1]].decode("utf-8")
        assert text == df["text"].iloc[i]
    seq_ce = decode(state, "seq_ce")
    np.testing.assert_allclose(seq_ce.astype(np.float64), ce, rtol=1e-3)


def test_long_texts_are_cut_and_multibyte_safe():
    a = fake_audit(n_blocks=1, d=40, n=8, seed=1)
    a.samples.loc[0, "text"] = "é" * 500
    s = widget_state(a, text_chars=50)
    off = decode(s, "text_offsets")
    t0 = decode(s, "text_bytes").tobytes()[off[0] : off[1]].decode("utf-8")
    assert t0 == "é" * 49 + "…"


def test_size_is_about_eight_bytes_per_point():
    a = fake_audit(n_blocks=2, d=1500, n=8, seed=2)
    for e in a.embeddings.values():
        e.sequence = e.sequence.copy()  # same values: still sent once
    s = widget_state(a, text_chars=0)
    points = sum(m["n"] for m in s["scatter_layers"])
    scatter = sum(
        len(s[k]["view"])
        for k in (
            "scatter_xy",
            "scatter_basin",
            "scatter_ratio",
            "scatter_seq",
            "scatter_basin_sizes",
        )
    )
    # 4 (xy) + 2 (basin) + 1 (ratio) per point, one shared uint16 sequence array, basin sizes
    # run-length encoded (sizes by rank never increase: few distinct values)
    runs = sum(m["basin_runs"] for m in s["scatter_layers"])
    assert s["scatter_seq"]["dtype"] == "uint16"
    assert scatter == points * 7 + 1500 * 2 + 8 * runs
    assert runs < 100
    assert scatter / points < 8


def test_json_parts_have_no_nan(state):
    import json

    json.dumps({k: v for k, v in state.items() if not schema.is_array(v)}, allow_nan=False)


def test_bins_must_be_at_least_two(audit):
    with pytest.raises(ValueError, match="bins"):
        widget_state(audit, bins=1)


def test_report_payload_round_trips(state):
    packed = report.pack_state(state)
    back = report.unpack_state(packed)
    assert back.keys() == state.keys()
    for k, v in state.items():
        assert back[k] == v, k
    # buffers are 8-byte aligned in the body so typed arrays need no copy
    n = int.from_bytes(packed[4:8], "little")
    assert (8 + n) % 8 == 0
    esm, css = "export default 1; // é", "a { b: c }"
    page = report.pack_page(state, esm, css)
    assert page[:4] == b"HAP1" and report.unpack_page(page) == (esm, css, back)


@pytest.mark.skipif(not HAS_BUNDLE, reason="front end not built (npm run build in js/)")
def test_html_is_self_contained(audit, tmp_path):
    path = report.to_html(audit, tmp_path / "r.html")
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf<!DOCTYPE html>")  # a UTF-8 byte order mark
    text = raw.decode("utf-8")
    # the payload: standard base64 (only its alphabet: no control character, no "<")
    m = re.search(r'id="hopaudit-data" data-encoding="base64"[^>]*>([^<]*)</script>', text)
    payload = m.group(1)
    assert re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", payload)
    assert base64.b64encode(base64.b64decode(payload, validate=True)).decode() == payload
    # the bootstrap is the built js/src/bootstrap.ts, inlined as it is
    assert report.BOOTSTRAP_PATH.read_text(encoding="utf-8").strip() in text
    # no network: no external script, stylesheet or module URL around the payload
    page = re.sub(r'(id="hopaudit-data"[^>]*>)[^<]*', r"\1", text)
    assert len(page) < 10_000 < len(text)
    assert not re.search(r"<(script|link)[^>]+(src|href)=", page)
    assert "cdn" not in page.lower()
    # the bundle and its CSS travel compressed inside the payload, byte for byte
    esm, css, back = report.read_html_page(path)
    assert esm == widget.ESM_PATH.read_text(encoding="utf-8") and "unpackReport" in esm
    assert css == widget.CSS_PATH.read_text(encoding="utf-8")
    assert back.keys() == widget_state(audit).keys()
    assert back["layer_stats"] == widget_state(audit)["layer_stats"]
    # one payload element, then the two bootstrap scripts and nothing else
    assert text.count("<script") == 3
    assert report.read_html_state(text) == back


@pytest.mark.skipif(not HAS_BUNDLE, reason="front end not built (npm run build in js/)")
def test_text_chars_caps_the_texts_in_a_report(audit, tmp_path):
    texts = audit.samples["text"].tolist()
    assert max(map(len, texts)) > 12  # the fixture's texts are longer than the cap below

    def kept(state):
        offsets = decode(state, "text_offsets")
        raw = decode(state, "text_bytes").tobytes()
        return [raw[a:b].decode() for a, b in itertools.pairwise(offsets)]

    full = report.read_html_state(report.to_html(audit, tmp_path / "full.html"))
    short = report.read_html_state(report.to_html(audit, tmp_path / "short.html", text_chars=12))
    none = report.read_html_state(report.to_html(audit, tmp_path / "none.html", text_chars=0))
    for got, text in zip(kept(short), texts, strict=True):
        # empty where the sequence is not shown; else the first 11 characters and an ellipsis
        assert got in ("", text if len(text) <= 12 else text[:11] + "…")
    assert any(kept(short)) and not any(kept(none))
    sizes = [len(st["text_bytes"]["view"]) for st in (full, short, none)]
    assert sizes[0] > sizes[1] > sizes[2] == 0
    with pytest.raises(ValueError, match="text_chars"):
        widget_state(audit, text_chars=-1)


def test_to_html_rejects_other_objects(tmp_path):
    with pytest.raises(TypeError, match="to_html takes"):
        report.to_html(object(), tmp_path / "x.html")


def test_missing_bundle_error(monkeypatch, tmp_path):
    monkeypatch.setattr(widget, "ESM_PATH", tmp_path / "nope" / "widget.js")
    with pytest.raises(FileNotFoundError, match=r"reinstall with pip install -e \. \(needs npm\)"):
        widget.AuditWidget()


@pytest.mark.skipif(not HAS_BUNDLE, reason="front end not built (npm run build in js/)")
def test_widget_traits_hold_the_state(audit, state):
    w = widget.AuditWidget.from_audit(audit)
    for k, v in state.items():
        assert getattr(w, k) == v, k
    assert w._esm.startswith(widget.ESM_PATH.read_text()[:50])
    # everything the view needs is synced (a saved notebook shows it all)
    synced = set(w.trait_names(sync=True))
    assert set(state) <= synced


def test_float_helper():
    assert widget._f(float("nan")) is None and widget._f(math.inf) is None
    assert widget._f(np.float32(2.5)) == 2.5


def test_histogram_goes_log_when_distances_are_far_below_two_r_star():
    a = fake_audit(n_blocks=1, d=60, n=8, seed=4)
    rep = a.reports["final"]
    for k in rep.saturation_nn:
        rep.saturation_nn[k] = rep.saturation_nn[k] * 1e-3
    rep.nn = rep.nn * 1e-3
    rep.r_hat = float(np.median(rep.nn) / 2)
    s = widget_state(a)
    i = s["layer_names"].index("final")
    assert decode(s, "hist_log")[i] == 1
    lo, hi = decode(s, "hist_range")[i]
    assert lo <= rep.nn.min() and hi >= 2 * rep.r_star
    assert decode(s, "hist_counts")[i, -1].sum() == len(rep.nn)
    assert decode(s, "hist_log")[0] == 0  # block 0 untouched: linear


def test_floor_curves_are_the_volume_form_floor_computed_independently(audit, state):
    """Each layer's (r, F) pairs against F = log Z + 1/Z, log Z = log d + log V_n(r), computed
    here with math.lgamma; the curve spans r_hat, r_star and r_c and is densest near r_c."""
    curves = decode(state, "floor_curve")
    stats = decode(state, "layer_stats")
    col = {c: j for j, c in enumerate(LAYER_STAT_COLUMNS)}
    assert curves.shape == (
        len(state["layer_names"]),
        widget.FLOOR_STEPS + widget.FLOOR_STEPS_IN_VIEW,
        2,
    )
    drawn = 0
    for i, row in enumerate(stats):
        n, d, r_c = row[col["n"]], row[col["n_patterns"]], row[col["r_c"]]
        r, f = curves[i, :, 0].astype(np.float64), curves[i, :, 1].astype(np.float64)
        if not (np.isfinite(n) and np.isfinite(d)):  # a skipped layer has no curve
            assert np.isnan(curves[i]).all()
            continue
        drawn += 1
        assert np.all(np.diff(r) >= 0)
        for mark in ("r_hat", "r_star", "r_c"):
            assert r[0] <= row[col[mark]] <= r[-1]
        log_v = [
            0.5 * n * math.log(math.pi) + n * math.log(x) - math.lgamma(0.5 * n + 1) for x in r
        ]
        log_z = np.log(d) + np.array(log_v)
        with np.errstate(over="ignore"):
            want = log_z + np.exp(-log_z)
        shown = want < 1e30
        np.testing.assert_allclose(f[shown], want[shown], rtol=1e-5)
        assert np.all(np.isinf(f[~shown]) | (f[~shown] > 1e29))
        # F >= 1 with its minimum at r_c, where the dense part of the grid sits
        assert f.min() >= 1 - 1e-5 and r[np.argmin(f)] == pytest.approx(r_c, rel=2 / n)
        assert (np.abs(np.log(r / r_c)) < 1.5 * 64 / n).sum() >= widget.FLOOR_STEPS_IN_VIEW
        # F at r_star, beside floor_low (F at r_hat)
        log_z_star = math.log(d) + 0.5 * n * math.log(math.pi) + n * math.log(row[col["r_star"]])
        log_z_star -= math.lgamma(0.5 * n + 1)
        assert row[col["floor_r_star"]] == pytest.approx(log_z_star + math.exp(-log_z_star))
    assert drawn >= 2


@pytest.mark.parametrize(
    ("option", "value"),
    [("bins", 10**9), ("bins", "60"), ("bins", 2.5), ("bins", True), ("top_basins", -1),
     ("top_basins", 10**6), ("text_chars", 10**12), ("text_chars", None)],
)  # fmt: skip
def test_view_options_are_checked_before_any_allocation(audit, option, value):
    """Issue 26: bins=10**9 raised MemoryError and bins="60" a TypeError deep in numpy: each
    option is an integer in a stated range, else a DataError naming it and the range."""
    from hopaudit.errors import DataError

    with pytest.raises(DataError, match=f"{option} must be .*from"):
        widget_state(audit, **{option: value})
