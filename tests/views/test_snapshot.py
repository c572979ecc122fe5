"""The static snapshot and plain text of a view (hopaudit/snapshot.py) and the notebook bundle.

Oracles: the audit's own tables (layers, samples) read directly, the SVG parsed as XML with its
coordinates checked to be one affine map of log10(radius) for every mark, and, for the
notebook, a real kernel run by nbclient whose saved outputs are read back.
"""

from __future__ import annotations

import base64
import html
import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from notebooks import executed_notebook
from tiny_models import random_texts, tiny_model, tiny_tokenizer

import hopaudit
from hopaudit.views.protocol import WIDGET_TEXT
from hopaudit.views.schema import pack, unpack
from hopaudit.views.snapshot import MAX_BYTES, SAMPLE_ROWS, snapshot_html, snapshot_text

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def audited(one_torch_thread):
    model, _ = tiny_model("gpt2")
    return hopaudit.audit(
        model,
        random_texts(120),
        tokenizer=tiny_tokenizer(),
        max_length=12,
        progress=False,
        umap_layers=["final"],
        autocast="off",
    )


@pytest.fixture(scope="module")
def state(audited):
    return audited.widget_state()


def _svg(page: str) -> ET.Element:
    """The radii chart: the SVG inside the snapshot's one ``<img>`` data URI."""
    (uri,) = re.findall(r'<img class="radii"[^>]* src="data:image/svg\+xml;base64,([^"]+)"', page)
    return ET.fromstring(base64.b64decode(uri).decode("utf-8"))


def _marks(svg: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    ns = "{http://www.w3.org/2000/svg}"
    return [e for e in svg.iter(ns + tag) if e.get("class") == cls]


def test_snapshot_has_no_script_and_fits(state):
    page = snapshot_html(state)
    assert len(page.encode("utf-8")) <= MAX_BYTES
    low = page.lower()
    assert "<script" not in low and "javascript:" not in low
    assert not re.search(r"\son[a-z]+\s*=", low)  # no event handler attributes
    # nothing fetched: one source, the chart's data URI; no inline <svg> (sanitizers drop it)
    assert re.findall(r"(src|href)\s*=\s*\"(\w+):", low) == [("src", "data")]
    assert "<svg" not in low
    assert "<style" not in low  # inline styles only: sanitizers drop style elements


def test_radii_chart_is_one_log_map_of_the_layers_radii(audited, state):
    layers = audited.layers
    svg = _svg(snapshot_html(state))
    dots = _marks(svg, "circle", "r-hat")
    squares = _marks(svg, "rect", "r-star")
    measured = layers[layers["r_hat"] > 0]
    assert len(dots) == len(squares) == len(measured)
    # every mark's y is a + b log10(value), one a and b for r_hat and r_star alike
    ys = [float(d.get("cy")) for d in dots] + [float(s.get("y")) + 3.5 for s in squares]
    vs = list(measured["r_hat"]) + list(measured["r_star"])
    fit = np.polyfit(np.log10(vs), ys, 1)
    assert fit[0] < 0  # bigger radius, higher on the page
    assert np.allclose(np.polyval(fit, np.log10(vs)), ys, atol=0.06)
    # layers in order, left to right
    xs = [float(d.get("cx")) for d in dots]
    assert xs == sorted(xs)
    titles = [d.find("{http://www.w3.org/2000/svg}title").text for d in dots]
    assert [t.split(":")[0] for t in titles] == list(measured["name"])


def test_intervals_are_drawn_when_the_state_has_them(state):
    stats = np.array(unpack(state["layer_stats"]), dtype=np.float64)
    cols = list(state["layer_columns"])
    r_hat = stats[:, cols.index("r_hat")]
    lo, hi = r_hat * 0.8, r_hat * 1.25

    def with_interval(lo, hi):
        s = stats.copy()
        s[:, cols.index("r_hat_lo")], s[:, cols.index("r_hat_hi")] = lo, hi
        return dict(state, layer_stats=pack(s, "float64"))

    svg = _svg(snapshot_html(with_interval(lo, hi)))
    bars = _marks(svg, "line", "interval")
    dots = _marks(svg, "circle", "r-hat")
    assert len(bars) == len(dots) == int(np.sum(r_hat > 0))
    ok = r_hat > 0
    ys = [float(b.get("y1")) for b in bars] + [float(b.get("y2")) for b in bars]
    ys += [float(d.get("cy")) for d in dots]
    vs = np.r_[hi[ok], lo[ok], r_hat[ok]]
    fit = np.polyfit(np.log10(vs), ys, 1)
    assert np.allclose(np.polyval(fit, np.log10(vs)), ys, atol=0.06)
    nan = np.full_like(r_hat, np.nan)  # an audit made with bootstrap=0
    assert not _marks(_svg(snapshot_html(with_interval(nan, nan))), "line", "interval")


def test_samples_table_lists_the_lowest_cross_entropy_sequences(audited, state):
    page = snapshot_html(state)
    table = re.search(r'<table class="samples".*?</table>', page, re.S).group(0)
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]
    assert len(rows) == SAMPLE_ROWS
    got = [int(re.search(r">(\d+)</td>", r).group(1)) for r in rows]
    samples = audited.samples
    ce32 = samples["cross_entropy"].to_numpy().astype(np.float32)
    expected = samples.assign(ce=ce32).sort_values(["ce", "sequence"], kind="stable")
    assert got == expected["sequence"].tolist()[:SAMPLE_ROWS]
    for row, seq in zip(rows, got, strict=True):
        text = html.unescape(re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)[-1])
        assert text == audited.texts[seq][: len(text)]


def test_samples_sort_by_distance_ratio_without_a_loss(state):
    values = np.array(unpack(state["sample_values"]), dtype=np.float32)
    columns = state["sample_columns"]
    for c in ("extracted_tokens", "loss", "cross_entropy", "zlib", "min_k", "min_k_pp"):
        if c in columns:
            values[:, columns.index(c)] = np.nan  # an encoder: no loss, no score of it
    no_loss = dict(state, sample_values=pack(values, "float32"))
    text = snapshot_text(no_loss)
    assert "most memorized (distance ratio)" in text
    seq = np.asarray(unpack(state["sample_seq"]))
    best = seq[np.argsort(values[:, columns.index("distance_ratio")], kind="stable")][0]
    assert re.search(rf"#{best}\s", text)


def test_plain_text_is_readable(audited, state):
    text = snapshot_text(state)
    lines = text.splitlines()
    assert audited.model_name in lines[0]
    s = audited.summary()
    assert f"{s['cross_entropy']:.4g}" in text
    for row in audited.layers.itertuples():
        line = next(ln for ln in lines if ln.startswith(row.name))
        assert f"{row.r_hat:.4g}" in line
    assert max(len(ln) for ln in lines) <= 100


def test_bundle_has_the_widget_the_snapshot_and_the_text(audited):
    data, metadata = audited._repr_mimebundle_()
    assert set(data) == {WIDGET_MIME, "text/html", "text/plain"}
    assert data[WIDGET_MIME]["model_id"]
    assert 'class="hopaudit-snapshot"' in data["text/html"]
    assert data["text/plain"].startswith("hopaudit audit of")
    assert isinstance(metadata, dict)


def test_ipython_display_gives_the_snapshot_then_the_widget(audited, monkeypatch):
    import IPython.display
    from ipywidgets.widgets.widget import _instances  # Widget.widgets is deprecated

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append((obj, kw)))
    audited._ipython_display_()
    (snap, snap_kw), (live, live_kw) = shown
    assert snap_kw["raw"] and live_kw["raw"]
    assert set(snap) == {"text/html", "text/plain"}
    assert set(live) == {WIDGET_MIME, "text/plain"} and live["text/plain"] == WIDGET_TEXT
    token = re.search(r'data-hopaudit-snapshot="([0-9a-f]+)"', snap["text/html"]).group(1)
    widget = _instances[live[WIDGET_MIME]["model_id"]]
    assert widget.snapshot_id == token and "snapshot_id" in widget.keys  # synced to the view
    # the notebook form's style rule; the plain snapshot has none
    assert snap["text/html"].startswith("<style>") and "<script" not in snap["text/html"]


def test_long_texts_stay_under_the_budget(audited):
    state = audited.widget_state(text_chars=5000)
    page = snapshot_html(state)
    assert len(page.encode("utf-8")) <= MAX_BYTES


def test_comparison_snapshot(audited):
    view = hopaudit.compare(audited, audited, labels=["one", "two"])
    state = view.widget_state()
    page = snapshot_html(state)
    assert "one" in page and "two" in page and "<script" not in page.lower()
    assert math.isfinite(len(snapshot_text(state)))
    data, _ = view._repr_mimebundle_()
    assert data["text/plain"].startswith("hopaudit comparison of one, two")


@pytest.mark.slow
def test_finished_progress_bars_leave_text_and_the_audit_its_snapshot(tmp_path):
    nb, _ = executed_notebook(tmp_path)
    bars = nb.cells[1].outputs
    assert bars, "the audit showed no progress bar"
    for out in bars:
        assert WIDGET_MIME not in out.get("data", {}), out  # no dead widget left
    texts = [o["data"]["text/plain"] for o in bars if "data" in o and o["data"].get("text/plain")]
    assert any("measuring layers" in t and "100%" in t for t in texts), texts
    snap, live = nb.cells[2].outputs  # the snapshot, then the widget
    assert set(snap["data"]) == {"text/html", "text/plain"}
    token = re.search(r'data-hopaudit-snapshot="([0-9a-f]+)"', snap["data"]["text/html"]).group(1)
    assert snap["data"]["text/plain"].startswith("hopaudit audit of")
    assert set(live["data"]) == {WIDGET_MIME, "text/plain"}
    assert live["data"]["text/plain"] == WIDGET_TEXT  # one line: a fallback repeats nothing
    # the live widget carries the token that hides the snapshot (nbclient kept its state)
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert state[live["data"][WIDGET_MIME]["model_id"]]["state"]["snapshot_id"] == token


def test_infinite_and_astronomical_floors_are_written_as_what_they_mean(state):
    for floor, words in ((math.inf, "no finite floor: Z < 1e-308"), (1.884e152, "> 1e100 nats")):
        s = {**state, "summary": {**state["summary"], "floor_low": floor}}
        page, text = snapshot_html(s), snapshot_text(s)
        assert html.escape(words) in page and words in text
        assert "e+152" not in page and "inf" not in text.split("loss floor", 1)[1].split("\n")[0]
