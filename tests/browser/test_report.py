"""The exported report of a real (tiny) audit, opened from disk in Chromium."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from browser_helpers import PANELS, decode_png, save_screenshot

from hopaudit.views import schema
from hopaudit.views.widget import decode


def _luminance(css: str) -> float:
    nums = [float(v) for v in css[css.index("(") + 1 : css.index(")")].split(",")[:3]]
    r, g, b = (v / 255 for v in nums)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_every_panel_draws_without_console_errors(open_report):
    p = open_report()
    for name in PANELS:
        panel = p.page.locator(f'[data-panel="{name}"]')
        assert panel.count() == 1, name
        assert panel.get_attribute("data-ready") == "true", name
    assert p.page.locator(".ha-error").count() == 0
    # the charts are real SVGs with axes, not empty boxes
    for name in ("distances", "radii", "floor"):
        assert p.page.locator(f'[data-panel="{name}"] svg g[aria-label="x-axis tick"]').count()
    assert p.errors == []


def test_each_geometric_panel_says_what_the_validity_study_found(open_report):
    """distances, radii, floor and basins each carry the line hopaudit/views/validity.json's
    numbers make (rho with its interval, the link to docs/validity.md), the membership panel
    the per-sequence scores' line; the others none."""
    from hopaudit.views.validity import PANELS, load_validity, membership_line, panel_line

    data = load_validity()
    p = open_report()
    for name in PANELS:
        note = p.page.locator(f'[data-panel="{name}"] .ha-validity[data-validity="{name}"]')
        assert note.count() == 1, name
        assert note.is_visible(), name
        text = " ".join(note.inner_text().split())
        assert text.startswith("Validity study:"), text
        assert " ".join(panel_line(data["panels"][name]).split()) in text
        entry = data["panels"][name]
        assert f"{entry['rho']:.2f} [{entry['rho_lo']:.2f}, {entry['rho_hi']:.2f}]" in text
        assert "docs/validity.md" in text
    note = p.page.locator('[data-panel="membership"] .ha-validity[data-validity="membership"]')
    text = " ".join(note.inner_text().split())
    assert " ".join(membership_line(data["membership"]).split()) in text
    assert "nn / r̂, mean of layers 0.523" in text and "docs/validity.md" in text
    for name in ("summary", "samples"):
        assert p.page.locator(f'[data-panel="{name}"] .ha-validity').count() == 0, name
    assert p.errors == []


def test_summary_shows_the_audit_numbers(open_report, real_audit):
    p = open_report()
    text = p.page.locator('[data-panel="summary"]').inner_text()
    s = real_audit.summary()
    assert f"{s['cross_entropy']:.4g}"[:4] in text
    assert str(s["normalize"]) in text
    assert f"{s['log10_N']:.3g}" in text


def test_summary_names_a_compiled_forward(open_report, real_audit, tmp_path):
    import copy
    from pathlib import Path

    audit = copy.copy(real_audit)
    audit.capture = copy.copy(real_audit.capture)
    audit.capture.compiled = "torch.compile: 3 blocks"
    path = Path(audit.to_html(tmp_path / "compiled.html"))
    text = open_report(path=path).page.locator('[data-panel="summary"]').inner_text()
    assert "torch.compile: 3 blocks" in text
    assert str(real_audit.summary()["compute_dtype"]) in text
    plain = open_report().page.locator('[data-panel="summary"]').inner_text()
    assert "torch.compile" not in plain and real_audit.summary()["compiled"] is None


def test_scatter_canvas_is_not_blank(open_report):
    p = open_report()
    canvas = p.page.locator('[data-panel="basins"] canvas')
    w, h, ch, px = decode_png(canvas.screenshot())
    arr = np.frombuffer(px, dtype=np.uint8).reshape(h, w, ch)[..., :3].astype(int)
    # background: the most common colour; points: pixels clearly different from it
    flat = arr.reshape(-1, 3)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    bg = colours[counts.argmax()]
    differs = np.abs(flat - bg).sum(axis=1) > 60
    assert differs.sum() > 200, f"only {differs.sum()} non-background pixels"
    assert len(colours) > 5


def test_changing_the_layer_changes_the_histogram(open_report, report_state):
    p = open_report()
    chart = p.page.locator('[data-panel="distances"] .ha-hist')
    before = chart.inner_html()
    sel = p.page.locator('[data-panel="distances"] select')
    current = sel.input_value()
    other = next(
        str(i)
        for i, info in enumerate(report_state["layer_info"])
        if str(i) != current and not info["skipped_reason"]
    )
    sel.select_option(other)
    p.page.wait_for_function(
        f"document.querySelector('[data-panel=distances] .ha-hist').dataset.layer === '{other}'"
    )
    after = chart.inner_html()
    assert after != before
    # the lines are at the new layer's 2 r_hat
    stats = decode(report_state, "layer_stats")
    j = report_state["layer_columns"].index("r_hat")
    two_r_hat = 2 * stats[int(other), j]
    marks = p.page.locator('[data-panel="distances"] .ha-legend .ha-mark', has_text="2 r̂")
    label = marks.first.text_content()  # the marked distances are named in the legend
    assert float(label.split("=")[1]) == float(f"{two_r_hat:.3g}")
    assert p.errors == []


def test_the_layer_selector_works_from_the_keyboard(open_report):
    p = open_report()
    sel = p.page.locator('[data-panel="distances"] select')
    start = sel.input_value()
    sel.focus()
    p.page.keyboard.press("ArrowUp")
    p.page.wait_for_function(
        f"document.querySelector('[data-panel=distances] .ha-hist').dataset.layer !== '{start}'"
    )
    assert sel.input_value() != start


def test_samples_sort_from_the_keyboard(open_report):
    p = open_report()
    button = p.page.locator('[data-panel="samples"] th button[data-sort="distance_ratio"]')
    button.focus()
    p.page.keyboard.press("Enter")
    th = p.page.locator('[data-panel="samples"] th[aria-sort="ascending"] button')
    assert th.get_attribute("data-sort") == "distance_ratio"
    column = '[data-panel="samples"] tbody td[data-column="distance_ratio"]'
    cells = p.page.locator(column).all_inner_texts()
    vals = [float(c) for c in cells if c not in ("–", "")]
    assert vals == sorted(vals) and len(vals) > 3


def test_samples_rank_by_the_chosen_score(open_report):
    """The "rank by" menu re-sorts the table by that score, most memorized first."""
    p = open_report()
    menu = p.page.locator('[data-panel="samples"] header select')
    options = menu.locator("option").evaluate_all("els => els.map(e => e.value)")
    assert options[0] in ("extracted_tokens", "loss", "cross_entropy") and "min_k" in options
    menu.select_option("min_k")
    cells = p.page.locator('[data-panel="samples"] tbody td[data-column="min_k"]').all_inner_texts()
    vals = [float(c) for c in cells if c not in ("–", "")]
    assert vals == sorted(vals, reverse=True) and len(vals) > 3  # higher Min-K% = memorized
    assert p.errors == []


def test_hovering_a_point_shows_its_text(open_report, report_state):
    p = open_report()
    metas = report_state["scatter_layers"]
    shown = p.page.locator('[data-panel="basins"] select').first.input_value()
    meta = metas[int(shown)]
    xy = decode(report_state, "scatter_xy")[meta["offset"] : meta["offset"] + meta["n"]]
    xy = xy.astype(float)
    # the most isolated point, so the hover cannot pick a neighbour
    d2 = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    i = int(d2.min(axis=1).argmax())
    seq = int(decode(report_state, "scatter_seq")[meta["seq_offset"] + i])
    off = decode(report_state, "text_offsets")
    text = decode(report_state, "text_bytes").tobytes()[off[seq] : off[seq + 1]].decode()
    pos = p.page.evaluate(
        f"""() => {{
        const view = document.querySelector('.hopaudit').__hopaudit;
        const panel = view.panels.find((q) => q.name === 'basins');
        return panel.screenPosition({i});
    }}"""
    )
    scatter = p.page.locator('[data-panel="basins"] .ha-scatter')
    scatter.scroll_into_view_if_needed()
    box = scatter.bounding_box()
    assert 0 <= pos[0] <= box["width"] and 0 <= pos[1] <= box["height"]
    p.page.mouse.move(box["x"] + pos[0] - 3, box["y"] + pos[1] - 3)
    p.page.mouse.move(box["x"] + pos[0], box["y"] + pos[1], steps=3)
    tip = p.page.locator('[data-panel="basins"] .ha-tooltip')
    tip.wait_for(state="visible", timeout=5000)
    assert tip.get_attribute("data-point") == str(i)
    assert text[:40] in tip.inner_text()
    assert p.errors == []


def test_colour_modes_redraw_the_scatter(open_report):
    p = open_report()
    sel = p.page.locator('[data-panel="basins"] select').nth(1)
    canvas = p.page.locator('[data-panel="basins"] canvas')
    before = canvas.screenshot()
    sel.select_option("ratio")
    p.page.wait_for_function(
        "document.querySelector('[data-panel=basins] .ha-scatter').dataset.mode === 'ratio'"
    )
    p.page.wait_for_timeout(300)
    assert canvas.screenshot() != before
    assert "nn / r̂" in p.page.locator('[data-panel="basins"] .ha-legend').inner_text()


def test_dark_theme_follows_jupyterlab_and_vscode(open_report):
    p = open_report()
    root = p.page.locator(".hopaudit")
    light = root.evaluate("e => getComputedStyle(e).backgroundColor")
    assert _luminance(light) > 0.8
    save_screenshot(p.page, "widget-light.png")
    p.page.evaluate("document.body.setAttribute('data-jp-theme-light', 'false')")
    p.page.wait_for_timeout(200)
    dark = root.evaluate("e => getComputedStyle(e).backgroundColor")
    assert _luminance(dark) < 0.2
    # the charts re-render with light text on the dark background
    fg = p.page.locator('[data-panel="floor"] svg').evaluate("e => getComputedStyle(e).color")
    assert _luminance(fg) > 0.6
    save_screenshot(p.page, "widget-dark.png")
    p.page.evaluate(
        "document.body.removeAttribute('data-jp-theme-light');"
        "document.body.className = 'vscode-dark'"
    )
    p.page.wait_for_timeout(200)
    assert _luminance(root.evaluate("e => getComputedStyle(e).backgroundColor")) < 0.2
    assert p.errors == []


def test_host_css_variables_win(open_report):
    p = open_report()
    p.page.evaluate("document.body.style.setProperty('--jp-layout-color0', 'rgb(10, 20, 30)')")
    bg = p.page.locator(".hopaudit").evaluate("e => getComputedStyle(e).backgroundColor")
    assert bg == "rgb(10, 20, 30)"


def test_missing_webgl_gives_a_message(open_report):
    no_webgl = """
      const orig = HTMLCanvasElement.prototype.getContext;
      HTMLCanvasElement.prototype.getContext = function (kind, ...rest) {
        if (String(kind).includes('webgl')) return null;
        return orig.call(this, kind, ...rest);
      };
    """
    p = open_report(init_script=no_webgl)
    msg = p.page.locator('[data-panel="basins"] [data-webgl="missing"]')
    assert "WebGL is not available" in msg.inner_text()
    assert p.page.locator('[data-panel="distances"]').get_attribute("data-ready") == "true"
    assert p.errors == []


def test_fits_a_900px_notebook_output(open_report):
    p = open_report(width=900)
    over = p.page.evaluate(
        """() => [...document.querySelectorAll('.hopaudit [data-panel]')]
            .filter((e) => e.scrollWidth > e.clientWidth + 1).map((e) => e.dataset.panel)"""
    )
    assert over == []
    width = p.page.locator('[data-panel="basins"] canvas').bounding_box()["width"]
    assert 300 < width < 900


def test_without_decompression_stream_the_page_says_why(browser, report_path):
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        page.add_init_script("delete window.DecompressionStream")
        page.goto(report_path.as_uri())
        box = page.locator(".page-error")
        box.wait_for(timeout=10_000)
        assert "cannot decompress the report" in box.inner_text()
        assert "Chrome, Firefox, Safari or Edge" in box.inner_text()
        assert page.locator(".hopaudit").count() == 0
    finally:
        ctx.close()


def _sha(packed: dict) -> list:
    """What SHA256_OF gives for a packed array: its dtype, shape and the SHA-256 of its bytes."""
    return [packed["dtype"], packed["shape"], hashlib.sha256(packed["view"]).hexdigest()]


SHA256_OF = """async (keys) => {
  const out = {};
  for (const k of keys) {
    const v = window.hopauditModel.get(k);
    const dv = v.view;
    if (!(dv instanceof DataView)) throw new Error(k + ": no DataView");
    const bytes = new Uint8Array(dv.buffer, dv.byteOffset, dv.byteLength);
    const h = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    out[k] = [v.dtype, v.shape, [...h].map((b) => b.toString(16).padStart(2, "0")).join("")];
  }
  return out;
}"""


def test_the_page_reads_the_same_bytes_as_python(open_report, report_state):
    p = open_report()
    keys = [k for k, v in report_state.items() if schema.is_array(v)]
    assert {"text_offsets", "scatter_seq", "scatter_xy", "text_bytes", "floor_curve"} <= set(keys)
    got = p.page.evaluate(SHA256_OF, keys)
    assert got == {k: _sha(report_state[k]) for k in keys}
    assert p.errors == []


def test_the_bundle_undoes_every_filter(open_report):
    """unpackReport of the real bundle on a payload with every filter and item size, including
    non-monotone arrays whose differences wrap around."""
    from hopaudit.views import report
    from hopaudit.views.widget import ESM_PATH

    rng = np.random.default_rng(7)
    state, filters = {"kind": "audit", "n": 3}, {}
    for size in (1, 2, 4, 8):
        top = (1 << (8 * size)) - 1
        vals = [5, 3, top, 0, 7, top - 1, 1, *rng.integers(0, 200, 50).tolist()]
        data = b"".join(v.to_bytes(size, "little") for v in vals)
        # a tail shorter than one item
        state[f"delta{size}"] = schema.pack(np.frombuffer(data + b"\x01", np.uint8), "uint8")
        filters[f"delta{size}"] = [("delta", size), ("shuffle", size)]
    for size in (2, 3, 4, 8):
        state[f"shuffle{size}"] = schema.pack(rng.integers(0, 256, 8 * 37 + 3), "uint8")
        filters[f"shuffle{size}"] = [("shuffle", size)]
    state["plain"] = schema.pack(np.arange(256), "uint8")
    packed = report.pack_state(state, filters)
    assert report.unpack_state(packed) == state
    p = open_report()
    got = p.page.evaluate(
        """async ([esm, packed]) => {
          const url = URL.createObjectURL(new Blob([esm], { type: "text/javascript" }));
          const mod = await import(url);
          const state = mod.unpackReport(new Uint8Array(packed));
          const out = {};
          for (const [k, v] of Object.entries(state)) {
            const dv = v && v.view instanceof DataView && v.view;
            const bytes = dv && [...new Uint8Array(dv.buffer, dv.byteOffset, dv.byteLength)];
            out[k] = dv ? [v.dtype, v.shape, bytes] : v;
          }
          return out;
        }""",
        [ESM_PATH.read_text(encoding="utf-8"), list(packed)],
    )
    want = {
        k: [v["dtype"], v["shape"], list(v["view"])] if schema.is_array(v) else v
        for k, v in state.items()
    }
    assert got == want
    assert p.errors == []


@pytest.mark.parametrize(
    ("charset", "bom"),
    [("windows-1252", True), ("utf-16le", True), ("windows-1252", False), ("shift_jis", False)],
)
def test_a_server_declaring_another_charset_does_not_break_it(
    browser, report_path, report_state, charset, bom
):
    """The byte order mark wins over the server's charset; without it, the payload, ASCII,
    still reads the same in any ASCII-compatible charset."""
    body = report_path.read_bytes()
    assert body.startswith(b"\xef\xbb\xbf")
    if not bom:
        body = body[3:]
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        errors = []
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        headers = {"content-type": f"text/html; charset={charset}"}
        page.route("http://localhost/**", lambda route: route.fulfill(body=body, headers=headers))
        page.goto("http://localhost/report/audit.html")  # localhost: a secure context
        page.wait_for_selector(".hopaudit[data-ready=true]", timeout=30_000)
        used = page.evaluate("document.characterSet").lower()
        assert used == ("utf-8" if bom else charset)
        keys = ["text_offsets", "scatter_xy", "text_bytes"]
        got = page.evaluate(SHA256_OF, keys)
        assert got == {k: _sha(report_state[k]) for k in keys}
        if bom:
            assert " · " in page.locator(".page-head").inner_text()
        assert errors == []
    finally:
        ctx.close()


OVERLAPS = """(panel) => {
    const boxes = [...panel.querySelectorAll('.ha-chart svg text')]
      .map((t) => t.getBoundingClientRect()).filter((r) => r.width > 0 && r.height > 0);
    const hits = [];
    for (let a = 0; a < boxes.length; a++)
      for (let b = a + 1; b < boxes.length; b++) {
        const p = boxes[a], q = boxes[b];
        const w = Math.min(p.right, q.right) - Math.max(p.left, q.left);
        const h = Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top);
        if (w > 1 && h > 1) hits.push([a, b, w, h]);
      }
    return hits;
}"""


@pytest.mark.parametrize("width", [1100, 520])
def test_the_marked_radii_are_named_in_a_legend_and_no_chart_text_overlaps(open_report, width):
    """2r*, 2r̂ (distances) and r̂, r*, r_c (floor) sit a few pixels apart on their axes: their
    names are in the panel's legend, and no two texts of either chart overlap, wide or narrow."""
    p = open_report(width=width)
    for name, labels in (("distances", ("2 r* =", "2 r̂ =")), ("floor", ("r̂ =", "r* =", "r_c ="))):
        panel = p.page.locator(f'[data-panel="{name}"]')
        legend = panel.locator(".ha-legend").inner_text()
        assert all(label in legend for label in labels), (name, legend)
        assert panel.evaluate(OVERLAPS) == [], name


def test_quick_colour_switches_end_drawn_in_the_last_choice(open_report):
    """Issue 26: two switches of the colour menu in one go left the scatter drawn in the older
    colouring (2 of 4 runs) with "previous draw call has not yet finished" errors: draws asked
    while one is in flight are coalesced, so the canvas ends as a page that was only ever
    switched to the last choice draws it, with no error."""
    shots = []
    for quick in (True, False):
        p = open_report()
        sel = p.page.locator('[data-panel="basins"] select').nth(1)
        canvas = p.page.locator('[data-panel="basins"] canvas')
        p.page.evaluate(
            "document.querySelector('[data-panel=basins]').removeAttribute('data-ready')"
        )
        if quick:  # ratio, ce then ratio again, all before the first draw can finish
            sel.evaluate(
                """(s) => { for (const v of ['ratio', 'ce', 'ratio']) {
                     s.value = v; s.dispatchEvent(new Event('change', {bubbles: true})); } }"""
            )
        else:
            sel.select_option("ratio")
        p.page.wait_for_function(
            "document.querySelector('[data-panel=basins]').dataset.ready === 'true'"
            " && document.querySelector('[data-panel=basins] .ha-scatter').dataset.mode === 'ratio'"
        )
        p.page.wait_for_timeout(300)
        shots.append(canvas.screenshot())
        assert "nn / r̂" in p.page.locator('[data-panel="basins"] .ha-legend').inner_text()
        assert not [e for e in p.errors if "draw" in e], p.errors
    assert shots[0] == shots[1]


def test_the_membership_panel_draws_the_kept_geometric_scores(open_report, tmp_path):
    """With held-out text, the membership panel's ROC legend names the loss scores and the
    three geometric scores the validity study kept, and its line gives their numbers."""
    from tiny_models import random_texts, tiny_model, tiny_tokenizer

    import hopaudit
    from hopaudit.views.report import to_html

    model, _ = tiny_model("gpt2")
    a = hopaudit.audit(
        model, random_texts(40), tokenizer=tiny_tokenizer(), heldout=random_texts(25, seed=7),
        max_length=12, progress=False, umap_layers=[], bootstrap=20,
    )  # fmt: skip
    assert {"nn_ratio_layers", "member_vs_heldout", "norm_reversed"} <= set(a.membership["score"])
    p = open_report(path=to_html(a, tmp_path / "held.html"))
    panel = p.page.locator('[data-panel="membership"]')
    assert panel.get_attribute("data-ready") == "true"
    legend = " ".join(panel.locator(".ha-roc").inner_text().split())
    for label in ("loss", "Min-K%++", "nn / r̂, mean of layers",
                  "nearest held-out / nearest stored", "−‖h‖ at the last block"):  # fmt: skip
        assert label in legend, (label, legend)
    assert "measurable, not a detector" in panel.locator(".ha-validity").inner_text()
    assert p.errors == []
