"""hopaudit.compare of three real audits (models of different widths and depths), exported and
opened in Chromium: every panel draws, the scatters are not blank, and all of them share ONE
WebGL context (counted by wrapping getContext before the page's scripts run)."""

from __future__ import annotations

import warnings

import pytest
from browser_helpers import non_background, open_counting_webgl, save_screenshot

import hopaudit

PANELS = ("compare-table", "compare-radii", "compare-floor", "compare-distances", "compare-basins")
MODELS = {  # label -> (arch, config overrides): widths 32, 48, 64; depths 3, 5, 2
    "gpt2-3x32": ("gpt2", {}),
    "llama-5x48": ("llama", {"hidden_size": 48, "num_hidden_layers": 5}),
    "neox-2x64": ("gpt_neox", {"hidden_size": 64, "num_hidden_layers": 2}),
}


@pytest.fixture(scope="module")
def audits():
    from tiny_models import tiny_model, tiny_tokenizer

    texts = [
        f"Text {i}: pattern {i * 7 % 13} sits in basin {i % 4} of the memory." for i in range(80)
    ]
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for arch, overrides in MODELS.values():
            model, _ = tiny_model(arch, **overrides)
            opts = dict(max_length=16, chunking="document", umap_layers=[-1], progress=False)
            out.append(hopaudit.audit(model, texts, tokenizer=tiny_tokenizer(), **opts))
    return out


@pytest.fixture(scope="module")
def compare_path(audits, tmp_path_factory):
    return hopaudit.compare(*audits, labels=list(MODELS)).to_html(
        tmp_path_factory.mktemp("compare") / "compare.html"
    )


def test_every_panel_draws_with_one_webgl_context(browser, compare_path):
    ctx, page, errors = open_counting_webgl(browser, compare_path, color_scheme="light")
    try:
        for name in PANELS:
            panel = page.locator(f'[data-panel="{name}"]')
            assert panel.count() == 1, name
            assert panel.get_attribute("data-ready") == "true", name
        for sub in ("distances", "basins"):
            members = page.locator(f'[data-panel="compare-{sub}"] [data-panel="{sub}"]')
            assert members.count() == 3
            for i in range(3):
                assert members.nth(i).get_attribute("data-ready") == "true"
        for name in ("compare-radii", "compare-floor"):
            assert page.locator(f'[data-panel="{name}"] svg g[aria-label="x-axis tick"]').count()
        canvases = page.locator('[data-panel="compare-basins"] canvas')
        assert canvases.count() == 3
        page.wait_for_timeout(300)
        for i in range(3):
            canvases.nth(i).scroll_into_view_if_needed()
            assert non_background(canvases.nth(i).screenshot()) > 100, f"scatter {i} is blank"
        assert page.evaluate("window.__webglContexts") == 1
        assert page.locator(".ha-error").count() == 0
        assert errors == []
        save_screenshot(page, "compare-light.png")
    finally:
        ctx.close()


def test_table_and_radii_show_each_audit(browser, compare_path, audits):
    ctx, page, errors = open_counting_webgl(browser, compare_path, color_scheme="light")
    try:
        rows = page.locator('[data-panel="compare-table"] tbody tr')
        assert rows.count() == 3
        for i, (label, a) in enumerate(zip(MODELS, audits, strict=True)):
            text = rows.nth(i).inner_text()
            assert label in text and str(a.hidden_size) in text
            ratio = a.layers["r_ratio"].iloc[-1]
            assert f"{float(f'{ratio:.3g}'):g}" in text
        legend = page.locator('[data-panel="compare-radii"]').inner_text()
        assert all(label in legend for label in MODELS)
        # one line per audit over its blocks
        lines = page.locator('[data-panel="compare-radii"] svg g[aria-label="line"] path')
        assert lines.count() == 3
        assert errors == []
    finally:
        ctx.close()


def test_dark_theme(browser, compare_path):
    ctx, page, errors = open_counting_webgl(browser, compare_path, color_scheme="dark")
    try:
        bg = page.locator(".hopaudit").evaluate("e => getComputedStyle(e).backgroundColor")
        nums = [int(v) for v in bg[bg.index("(") + 1 : bg.index(")")].split(",")[:3]]
        assert sum(nums) < 120
        page.wait_for_timeout(300)
        save_screenshot(page, "compare-dark.png")
        assert errors == []
    finally:
        ctx.close()


def test_cli_compare_writes_a_report_that_opens(browser, audits, tmp_path):
    from hopaudit.cli import main

    dirs = [str(a.save(tmp_path / f"a{i}")) for i, a in enumerate(audits[:2])]
    out = tmp_path / "cli.html"
    assert main(["compare", *dirs, "--out", str(out), "--labels", "first,second"]) == 0
    ctx, page, errors = open_counting_webgl(browser, out, color_scheme="light")
    try:
        assert page.locator('[data-panel="compare-table"] tbody tr').count() == 2
        assert "first" in page.locator('[data-panel="compare-table"]').inner_text()
        assert errors == []
    finally:
        ctx.close()
    assert main(["compare", dirs[0], "--out", str(out), "--labels", "a,b"]) == 1
