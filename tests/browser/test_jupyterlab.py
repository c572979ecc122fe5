"""End to end in JupyterLab 4: a notebook audits a tiny model, shows it, every panel renders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser_helpers import (
    PANELS,
    SCREENSHOTS,
    audit_cells,
    jupyter_lab,
    run_all_cells,
    write_notebook,
)

pytestmark = pytest.mark.slow

CELLS = audit_cells(80, "a", max_length=64, chunking="document", progress=False)


@pytest.fixture
def lab(tmp_path):
    write_notebook(tmp_path / "audit.ipynb", CELLS)
    with jupyter_lab(tmp_path) as (url, token):
        yield url, token


def test_notebook_renders_every_panel(browser, lab):
    url, token = lab
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        run_all_cells(page, url, token, "audit.ipynb")
        out = page.locator(".jp-OutputArea-output .hopaudit[data-ready='true']")
        try:
            out.wait_for(timeout=300_000)
        except Exception:
            shot = Path(os.environ.get("TMPDIR", "/tmp")) / "hopaudit-lab-failure.png"
            page.screenshot(path=str(shot), full_page=True)
            outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
            pytest.fail(f"no widget rendered (screenshot {shot}); outputs: {outputs}")
        for name in PANELS:
            panel = out.locator(f'[data-panel="{name}"]')
            assert panel.get_attribute("data-ready") == "true", name
        # the scatter got a real size from its container inside the output area
        box = out.locator('[data-panel="basins"] canvas').bounding_box()
        assert box["width"] > 200 and box["height"] > 200
        assert out.locator(".ha-error").count() == 0
        assert not [e for e in errors if "hopaudit" in e or "anywidget" in e]
        out.scroll_into_view_if_needed()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "widget-jupyterlab.png"))
    finally:
        ctx.close()
