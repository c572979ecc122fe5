"""The "ask about a text" box end to end in JupyterLab 4: the text goes to the kernel as an
anywidget custom message, Audit.query answers, the card and the placed point appear. The static
report has no box and says why in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser_helpers import SCREENSHOTS, audit_cells, jupyter_lab, run_all_cells, write_notebook

pytestmark = pytest.mark.slow

CELLS = audit_cells(
    80,
    "a",
    # the kernel-side answer, to compare the card with
    "expected = a.query(['Notebook sequence 12: pattern 3 sits in basin 0.'], k=5)\n"
    "print('EXPECTED', expected.nearest[expected.nearest['name'] == 'final']"
    "['sequence'].tolist())",
    heldout=16,
    max_length=64,
    chunking="document",
    progress=False,
    umap_layers=["final"],
    extraction={"prefix": 4, "suffix": 4},
)
ASKED = "Notebook sequence 12: pattern 3 sits in basin 0."


@pytest.fixture
def lab(tmp_path):
    write_notebook(tmp_path / "ask.ipynb", CELLS)
    with jupyter_lab(tmp_path) as (url, token):
        yield url, token


def test_box_round_trip_in_jupyterlab(browser, lab):
    url, token = lab
    ctx = browser.new_context(viewport={"width": 1280, "height": 1400})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        run_all_cells(page, url, token, "ask.ipynb")
        out = page.locator(".jp-OutputArea-output .hopaudit[data-ready='true']")
        printed = page.locator(".jp-OutputArea-output pre", has_text="EXPECTED")
        try:
            out.wait_for(timeout=300_000)
            printed.wait_for(timeout=300_000)
        except Exception:
            shot = Path(os.environ.get("TMPDIR", "/tmp")) / "hopaudit-lab-ask-failure.png"
            page.screenshot(path=str(shot), full_page=True)
            outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
            pytest.fail(f"no widget rendered (screenshot {shot}); outputs: {outputs}")
        line = printed.inner_text().strip()
        expected = [int(v) for v in line.split("[", 1)[1].rstrip("]").split(",")]
        ask = out.locator('[data-panel="ask"]')
        ask.scroll_into_view_if_needed()
        ask.locator("textarea").fill(ASKED)
        ask.locator("button", has_text="ask").click()
        page.wait_for_selector('[data-panel="ask"][data-state="answered"]', timeout=120_000)
        # the card: every score with the audit's AUROC beside it, the extraction, the neighbours
        scores = ask.locator('[data-role="scores"] tbody tr')
        assert scores.count() == 4  # loss, zlib, Min-K%, Min-K%++ (no reference model)
        assert "[" in scores.first.locator("td").nth(2).inner_text()  # AUROC [lo, hi]
        assert "greedy decoding reproduced" in ask.locator('[data-role="extraction"]').inner_text()
        final = ask.locator('[data-role="nearest"] tr[data-layer="final"]')
        got = [int(final.nth(i).get_attribute("data-sequence")) for i in range(final.count())]
        assert got == expected
        # the point placed in the basins view (layer final), its neighbours highlighted
        basins = out.locator('[data-panel="basins"] .ha-scatter')
        basins.scroll_into_view_if_needed()
        page.wait_for_selector('[data-panel="basins"] .ha-scatter[data-asked="1"]', timeout=30_000)
        assert int(basins.get_attribute("data-highlighted")) >= len(expected)
        # an error comes back as the status line, not a traceback
        ask.locator("textarea").fill("   x")
        ask.locator("button", has_text="ask").click()
        page.wait_for_selector('[data-panel="ask"][data-state="error"]', timeout=120_000)
        assert "extraction prefix" in ask.locator('[data-role="status"]').inner_text()
        assert not [e for e in errors if "hopaudit" in e or "anywidget" in e]
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "widget-ask-jupyterlab.png"))
    finally:
        ctx.close()


def test_report_has_no_box_and_says_why(open_report):
    page = open_report().page
    ask = page.locator('[data-panel="ask"]')
    assert ask.get_attribute("data-ready") == "true"
    assert ask.locator("textarea").count() == 0
    line = ask.locator('[data-role="no-kernel"]').inner_text()
    assert "needs the live widget" in line
