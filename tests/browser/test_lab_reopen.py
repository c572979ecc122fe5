"""A saved notebook reopened in JupyterLab 4 (default settings) without a kernel.

Run an audit (with progress bars), save, shut the kernel down, reopen: what shows where the
audit and the bars were. And an untrusted notebook (one JupyterLab did not save: executed
elsewhere), opened without running it."""

from __future__ import annotations

import base64
import json
import re
import urllib.request

import pytest
from browser_helpers import (
    SCREENSHOTS,
    audit_cells,
    jupyter_lab,
    open_notebook,
    run_all_cells,
    write_notebook,
)

pytestmark = pytest.mark.slow

CELLS = audit_cells(
    60,
    "a",
    "print('selected', a.selected()['sequence'].tolist())",
    max_length=32,
    chunking="document",
    umap_layers=["final"],
    autocast="off",
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One JupyterLab server for the module's tests (each opens its own notebook, from a reset
    workspace)."""
    root = tmp_path_factory.mktemp("lab")
    with jupyter_lab(root) as (url, token):
        yield url, token, root


def _api(url: str, token: str, method: str, path: str) -> object:
    req = urllib.request.Request(f"{url}{path}?token={token}", method=method)
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
    return json.loads(body) if body else None


def _outputs(page) -> list[str]:
    return page.locator(".jp-OutputArea-output").all_inner_texts()


PANEL = """() => document.querySelector('.jp-OutputArea-output .hopaudit').__hopaudit
    .panels.find((q) => q.name === 'basins')"""
# Every widget model of the notebook, its state messages answered by the kernel: ipywidgets
# keeps one in flight per model (the rest buffered) and counts it until the kernel is idle
# after handling it.
MODELS = f"""async () => {{ const manager = ({PANEL})().ctx.model.widget_manager;
    window.__models = await Promise.all(Object.values(manager._models)); }}"""
SYNCED = "() => window.__models.every((m) => m._pending_msgs === 0 && m._msg_buffer === null)"


def _select_a_box_and_read_it_in_python(page) -> None:
    """Shift+drag a box in the live basins view; the last cell, run again, prints
    ``a.selected()`` from the kernel: the ids of the points inside the box."""
    import numpy as np

    out = page.locator(".jp-OutputArea-output .hopaudit")
    scatter = out.locator('[data-panel="basins"] .ha-scatter')
    scatter.scroll_into_view_if_needed()
    found = page.evaluate(
        f"""() => {{ const panel = ({PANEL})(); const p = panel.current;
        return Array.from({{ length: p.seq.length }}, (_, i) =>
          [...panel.screenPosition(i), panel.ctx.state.sequenceId(p.seq[i])]); }}"""
    )
    pos, ids = np.array([f[:2] for f in found]), np.array([f[2] for f in found])
    lo, hi = np.percentile(pos, 25, axis=0), np.percentile(pos, 75, axis=0)
    inside = np.all((pos > lo + 3) & (pos < hi - 3), axis=1)
    outside = np.any((pos < lo - 3) | (pos > hi + 3), axis=1)
    assert inside.sum() >= 2
    box = scatter.bounding_box()
    # the drag menu on "select a box": a plain drag selects (no modifier key for JupyterLab)
    out.locator('[data-panel="basins"] select').nth(2).select_option("rectangle")
    page.mouse.move(box["x"] + lo[0], box["y"] + lo[1])
    page.mouse.down()
    for d in (1.0, 2.0):  # the rectangle starts at the lasso's first recorded point
        page.mouse.move(box["x"] + lo[0] + d / 2, box["y"] + lo[1] + d / 2)
        page.wait_for_timeout(30)
    for t in np.linspace(0, 1, 12)[1:]:
        page.mouse.move(box["x"] + lo[0] + t * (hi[0] - lo[0]),
                        box["y"] + lo[1] + t * (hi[1] - lo[1]))  # fmt: skip
        page.wait_for_timeout(30)
    page.mouse.up()
    try:
        page.wait_for_function(f"() => ({PANEL})().selection.length > 0", timeout=10_000)
    except Exception:
        page.screenshot(path="/tmp/hopaudit-lab-selection.png")
        raise
    page.evaluate(MODELS)
    page.wait_for_function(SYNCED, timeout=60_000)  # the selection reached the kernel
    last = page.locator(".jp-Notebook .jp-Cell").nth(len(CELLS) - 1)  # Shift+Enter adds one
    last.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    printed = last.locator(".jp-OutputArea-output", has_text=re.compile(r"selected \[\d"))
    try:
        printed.wait_for(timeout=60_000)
    except Exception:
        page.screenshot(path="/tmp/hopaudit-lab-selection.png")
        raise AssertionError(f"the kernel printed: {last.inner_text()!r}") from None
    got = json.loads(printed.inner_text().split("selected", 1)[1].strip())
    assert set(ids[inside].tolist()) <= set(got) <= set(ids[~outside].tolist()), got


def test_saved_notebook_reopened_without_kernel(browser, lab):
    url, token, root = lab
    write_notebook(root / "audit.ipynb", CELLS)
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = ctx.new_page()
    try:
        run_all_cells(page, url, token, "audit.ipynb")
        page.locator(".jp-OutputArea-output .hopaudit[data-ready='true']").wait_for(timeout=300_000)
        _select_a_box_and_read_it_in_python(page)
        # live: the widget shows, its snapshot (an output of its own) is hidden
        assert page.locator(".hopaudit-snapshot").count() == 1
        assert not page.locator(".hopaudit-snapshot").is_visible()
        assert page.locator(".jp-OutputArea-output .hopaudit").is_visible()
        page.keyboard.press("Control+s")
        page.wait_for_function(  # saved: the notebook's tab no longer marked as changed
            "() => !document.querySelector('.lm-TabBar-tab.jp-mod-dirty')", timeout=60_000
        )
        for kernel in _api(url, token, "GET", "/api/kernels"):
            _api(url, token, "DELETE", f"/api/kernels/{kernel['id']}")
        for session in _api(url, token, "GET", "/api/sessions"):
            _api(url, token, "DELETE", f"/api/sessions/{session['id']}")
        saved = json.loads((root / "audit.ipynb").read_text())
        snap, live = (o["data"] for o in saved["cells"][2]["outputs"])
        assert "hopaudit-snapshot" in "".join(snap["text/html"])
        assert "application/vnd.jupyter.widget-view+json" in live
        assert not saved["metadata"].get("widgets")  # default settings: no widget state saved
        bar_mimes = [set(o.get("data", {})) for o in saved["cells"][1]["outputs"]]
        page.close()

        page = ctx.new_page()
        open_notebook(page, url, token, "audit.ipynb", kernel="No Kernel")  # if asked
        # the widget's renderer has tried the model the kernel no longer has
        page.get_by_text("Error displaying widget: model not found").wait_for(
            state="attached", timeout=60_000
        )
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "lab-reopen.png"), full_page=True)
        snap = page.locator(".hopaudit-snapshot")
        texts = _outputs(page)  # the visible text of every output
        report = {
            "bar_mimes": [sorted(m) for m in bar_mimes],
            "outputs": [t[:120] for t in texts],
            "snapshot_visible": page.locator(".hopaudit-snapshot").count(),
        }
        print(json.dumps(report, indent=1))
        assert snap.count() == 1 and snap.is_visible(), report
        shown = snap.inner_text()
        assert "hopaudit audit of GPT2LMHeadModel" in shown and "Most memorized" in shown
        chart = snap.locator("img.radii")  # the chart is an image: sanitizers keep it
        assert chart.count() == 1, report
        svg = base64.b64decode(chart.get_attribute("src").split(",", 1)[1]).decode()
        assert svg.count('class="r-hat"') == 4
        assert snap.locator("table.samples tr").count() == 21
        body = page.locator(".jp-Notebook").inner_text()
        assert "model not found" not in body and "Error displaying widget" not in body, report
        # the renderer's error text is still in the page (JupyterLab writes it and never falls
        # back to the other mime types); the snapshot's style rule hides its row
        error = page.get_by_text("Error displaying widget: model not found")
        assert error.count() == 1 and not error.is_visible()
        assert "measuring layers: 100%" in body.replace("\u2007", " "), report
    finally:
        ctx.close()


def test_untrusted_notebook_shows_the_snapshot(browser, lab):
    from notebooks import executed_notebook

    url, token, root = lab
    nb_dir = root / "elsewhere"
    nb_dir.mkdir()
    executed_notebook(nb_dir, store_widget_state=False)  # run by nbclient: not trusted here
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = ctx.new_page()
    try:
        open_notebook(page, url, token, "elsewhere/audit.ipynb", kernel="No Kernel")  # if asked
        snap = page.locator(".hopaudit-snapshot")
        snap.wait_for(timeout=60_000)
        texts = _outputs(page)
        assert "Most memorized sequences" in snap.inner_text()
        assert not any("model not found" in t for t in texts), texts
        # the sanitizer strips inline SVG: the chart is an image, and it loaded
        page.wait_for_function("() => document.querySelector('.hopaudit-snapshot img')?.complete")
        chart = snap.locator("img.radii")
        assert chart.evaluate("(i) => i.naturalWidth") >= 300
        assert chart.bounding_box()["width"] > 200
        assert snap.locator("svg").count() == 0
        assert "r̂ =" not in snap.inner_text()  # no chart text spilled into the page
        assert not any("run the cell with a kernel;" in t for t in texts), texts  # no fallback line
    finally:
        ctx.close()
