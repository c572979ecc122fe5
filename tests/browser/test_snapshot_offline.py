"""A notebook's audit without a kernel: nbconvert HTML opened offline in Chromium shows the
static snapshot (summary, radii, samples), the finished progress bars as text, and no widget
error. The notebook is run by a real kernel (nbclient), saved with and without widget state."""

from __future__ import annotations

import base64

import pytest
from notebooks import executed_notebook

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[False, True], ids=["saved-by-lab", "nbconvert-execute"])
def exported(tmp_path_factory, request):
    """Without widget state (as JupyterLab saves by default: nbconvert falls back to the
    outputs' other mime types), and with it (as ``nbconvert --execute`` stores it: nbconvert
    then writes the widget for the html-manager, which needs the network)."""
    from nbconvert import HTMLExporter

    tmp = tmp_path_factory.mktemp("nbconvert")
    nb, _ = executed_notebook(tmp, store_widget_state=request.param)
    body, _ = HTMLExporter().from_notebook_node(nb)
    path = tmp / "audit.html"
    path.write_text(body, encoding="utf-8")
    return request.param, path


def test_nbconvert_html_offline_shows_the_snapshot(browser, exported):
    with_state, path = exported
    ctx = browser.new_context(viewport={"width": 1200, "height": 900}, offline=True)
    page = ctx.new_page()
    requested: list[str] = []
    page.route(
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith("file:")
            else (requested.append(route.request.url), route.abort())
        ),
    )
    try:
        page.goto(path.as_uri())
        snap = page.locator(".hopaudit-snapshot")
        snap.wait_for(timeout=30_000)
        assert snap.count() == 1 and snap.is_visible()
        text = snap.inner_text()
        assert "hopaudit audit of GPT2LMHeadModel" in text
        assert "cross-entropy" in text and "Most memorized sequences" in text
        # the radii chart: an image that loaded (a data URI), one dot per measured layer,
        # drawn with a real size
        img = snap.locator("img.radii")
        page.wait_for_function("() => document.querySelector('img.radii').complete")
        assert img.evaluate("(i) => i.naturalWidth") >= 300
        src = img.get_attribute("src")
        assert src.startswith("data:image/svg+xml;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).decode().count('class="r-hat"') == 4
        box = img.bounding_box()
        assert box["width"] > 300 and box["height"] > 100
        assert snap.locator("table.samples tr").count() == 21  # header + 20 sequences
        # what the validity study found, one line per geometric panel (docs/validity.md)
        from hopaudit.views.validity import PANELS, load_validity

        data = load_validity()
        for name in PANELS:
            item = snap.locator(f'ul.validity li[data-validity="{name}"]')
            assert item.count() == 1, name
            rho = data["panels"][name]["rho"]
            assert f"{rho:.2f}" in item.inner_text(), name
        item = snap.locator('ul.validity li[data-validity="membership"]')
        assert "nearest held-out / nearest stored" in item.inner_text()
        assert "docs/validity.md" in text
        body = page.locator("body").inner_text()
        assert "model not found" not in body and "Error displaying widget" not in body
        # the finished progress bars are their last line of text
        assert "measuring layers: 100%" in body.replace("\u2007", " ")
    finally:
        ctx.close()
    # Without widget state the page asks the network only for what nbconvert's template links
    # (MathJax, require.js); with it, also for the widgets' html-manager (online, the widget
    # renders and hides the snapshot): offline, the snapshot is what shows in both.
    widgets = [u for u in requested if "jupyter-widgets" in u or "anywidget" in u]
    assert bool(widgets) == with_state, widgets
