"""Selection in the basins view: shift+drag a box over known screen coordinates; the selected
sequence ids (the panel's and the model's ``selection``) are the ones whose points lie inside.

Oracle: where regl-scatterplot draws each point (its own getScreenPosition), and which
sequence each point is, read in Python from the report's state (scatter_seq)."""

from __future__ import annotations

import numpy as np

from hopaudit.views.widget import decode

PANEL = """() => {
  const view = document.querySelector('.hopaudit').__hopaudit;
  return view.panels.find((q) => q.name === 'basins');
}"""


def _positions(page, n: int) -> np.ndarray:
    return np.array(
        page.evaluate(
            f"""() => {{ const panel = ({PANEL})();
            return Array.from({{ length: {n} }}, (_, i) => panel.screenPosition(i)); }}"""
        ),
        dtype=float,
    )


def test_a_box_selects_the_sequences_inside_it(open_report, report_state):
    p = open_report()
    page = p.page
    shown = int(page.locator('[data-panel="basins"] select').first.input_value())
    meta = report_state["scatter_layers"][shown]
    n = meta["n"]
    seq = decode(report_state, "scatter_seq")[meta["seq_offset"] : meta["seq_offset"] + n]
    ids = decode(report_state, "sequence_ids")
    seq_id = ids[seq] if len(ids) else seq

    scatter = page.locator('[data-panel="basins"] .ha-scatter')
    scatter.scroll_into_view_if_needed()
    box = scatter.bounding_box()
    pos = _positions(page, n)
    # a box over the middle of the points' extent: some inside, some outside
    lo, hi = np.percentile(pos, 30, axis=0), np.percentile(pos, 70, axis=0)
    margin = 3.0
    inside = np.all((pos > lo + margin) & (pos < hi - margin), axis=1)
    outside = np.any((pos < lo - margin) | (pos > hi + margin), axis=1)
    assert inside.sum() >= 3 and outside.sum() >= 3

    page.keyboard.down("Shift")
    page.mouse.move(box["x"] + lo[0], box["y"] + lo[1])
    page.mouse.down()
    # the rectangle starts where the lasso's first point is recorded (its first move of a few
    # px), so creep off the corner before the long drag
    for d in (1.0, 2.0):
        page.mouse.move(box["x"] + lo[0] + d / 2, box["y"] + lo[1] + d / 2)
        page.wait_for_timeout(30)
    for t in np.linspace(0, 1, 12)[1:]:
        page.mouse.move(
            box["x"] + lo[0] + t * (hi[0] - lo[0]), box["y"] + lo[1] + t * (hi[1] - lo[1])
        )
        page.wait_for_timeout(30)
    page.mouse.up()
    page.keyboard.up("Shift")
    page.wait_for_function(
        "() => document.querySelector('[data-panel=\"basins\"] .ha-scatter')"
        ".hasAttribute('data-selected')",
        timeout=10_000,
    )
    got = page.evaluate(f"() => ({PANEL})().selection")
    model = page.evaluate(f"() => ({PANEL})().ctx.model.get('selection')")
    assert got == model == sorted(set(got))
    must = set(seq_id[inside].tolist())
    may = set(seq_id[~outside].tolist())
    assert must <= set(got) <= may, (sorted(must), got, sorted(may))
    note = page.locator('[data-panel="basins"] [data-role="selection"]').inner_text()
    assert f"{len(got)} sequences selected" in note

    # Escape clears the selection
    scatter.focus()
    page.keyboard.press("Escape")
    page.wait_for_function(f"() => ({PANEL})().selection.length === 0", timeout=5_000)
    assert page.evaluate(f"() => ({PANEL})().ctx.model.get('selection')") == []
    assert p.errors == []


def test_colour_by_a_metadata_column(browser, tmp_path):
    """audit(metadata=...): the colour menu lists its columns; a categorical one gives a
    legend of its categories, a numeric one a ramp."""
    from tiny_models import tiny_model, tiny_tokenizer

    import hopaudit

    texts = [
        f"Metadata sequence {i}: the split is {'train' if i % 3 else 'test'}." for i in range(60)
    ]
    split = ["train" if i % 3 else "test" for i in range(60)]
    model, _ = tiny_model("gpt2")
    a = hopaudit.audit(model, texts, tokenizer=tiny_tokenizer(), max_length=32,
                       chunking="document", progress=False, umap_layers=["final"], autocast="off",
                       metadata={"split": split, "length": [len(t) for t in texts]})  # fmt: skip
    path = a.to_html(tmp_path / "meta.html")
    ctx = browser.new_context(viewport={"width": 1100, "height": 900})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(path.as_uri())
        page.wait_for_selector(".hopaudit[data-ready=true]", timeout=30_000)
        colour = page.locator('[data-panel="basins"] select').nth(1)
        labels = colour.locator("option").all_inner_texts()
        assert labels[-2:] == ["split", "length"]
        colour.select_option("meta:0")
        scatter = page.locator('[data-panel="basins"] .ha-scatter')
        page.wait_for_function(
            "() => document.querySelector('[data-panel=\"basins\"] .ha-scatter')"
            ".getAttribute('data-mode') === 'meta:0'",
            timeout=10_000,
        )
        legend = page.locator('[data-panel="basins"] .ha-legend').inner_text()
        assert "split:" in legend and "train" in legend and "test" in legend
        colour.select_option("meta:1")
        page.wait_for_function(
            "() => document.querySelector('[data-panel=\"basins\"] .ha-scatter')"
            ".getAttribute('data-mode') === 'meta:1'",
            timeout=10_000,
        )
        assert "length" in page.locator('[data-panel="basins"] .ha-legend').inner_text()
        assert scatter.is_visible()
    finally:
        ctx.close()
    assert errors == []


def _layer(page, report_state):
    shown = int(page.locator('[data-panel="basins"] select').first.input_value())
    meta = report_state["scatter_layers"][shown]
    seq = decode(report_state, "scatter_seq")[meta["seq_offset"] : meta["seq_offset"] + meta["n"]]
    off = decode(report_state, "text_offsets")
    blob = decode(report_state, "text_bytes").tobytes()
    texts = {int(s): blob[off[s] : off[s + 1]].decode() for s in set(seq.tolist())}
    return seq, texts


def _highlighted(page) -> list[int]:
    return sorted(page.evaluate(f"() => ({PANEL})().sp.get('selectedPoints')"))


def test_a_samples_row_click_and_a_search_highlight_points(open_report, report_state):
    p = open_report()
    page = p.page
    seq, texts = _layer(page, report_state)
    # a sequence of the samples table that has a point in the layer shown
    rows = page.locator('[data-panel="samples"] tr[data-sequence]')
    ids = [int(v) for v in rows.evaluate_all("rs => rs.map(r => r.dataset.sequence)")]
    target = next(i for i in ids if i in set(seq.tolist()))
    row = page.locator(f'[data-panel="samples"] tr[data-sequence="{target}"]')
    row.scroll_into_view_if_needed()
    row.locator("td").first.click()
    page.wait_for_function(f"() => ({PANEL})().highlighted.length > 0", timeout=5_000)
    assert _highlighted(page) == np.flatnonzero(seq == target).tolist()
    # highlighting is not selecting: nothing goes to Python
    assert page.evaluate(f"() => ({PANEL})().ctx.model.get('selection')") in (None, [])

    # search: a substring some texts hold, in another case
    query = "RED BASIN"
    expected = [i for i, s in enumerate(seq.tolist()) if query.lower() in texts[s].lower()]
    assert 0 < len(expected) < len(seq)
    search = page.locator('[data-panel="basins"] input[type="search"]')
    search.fill(query)
    page.wait_for_function(
        f"() => ({PANEL})().highlighted.length === {len(expected)}", timeout=5_000
    )
    assert _highlighted(page) == expected
    note = page.locator('[data-panel="basins"] [data-role="selection"]').inner_text()
    assert f"{len(expected)} points highlighted" in note
    search.fill("")
    page.wait_for_function(f"() => ({PANEL})().highlighted.length === 0", timeout=5_000)
    assert _highlighted(page) == []
    assert p.errors == []
