"""Browser fixtures: Debian's Chromium through Playwright, a real audit of a tiny model, and
its exported report. Skips (with the reason) only when /usr/bin/chromium is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)
            if not CHROMIUM.exists():
                item.add_marker(
                    pytest.mark.skip(reason="/usr/bin/chromium is absent: apt-get install chromium")
                )


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def real_audit():
    """A real audit of a tiny random GPT-2 (3 blocks, hidden 32) on 96 short texts."""
    from tiny_models import tiny_model, tiny_tokenizer

    import hopaudit

    model, _ = tiny_model("gpt2")
    texts = [
        f"Sequence {i}: the {['red', 'green', 'blue', 'grey'][i % 4]} basin holds pattern "
        f"{i * 7 % 13} of layer {i % 5}, and the ball radius grows with depth {i}."
        for i in range(96)
    ]
    return hopaudit.audit(
        model,
        texts,
        tokenizer=tiny_tokenizer(),
        max_length=64,
        chunking="document",
        progress=False,
    )


@pytest.fixture(scope="session")
def report_path(real_audit, tmp_path_factory):
    from hopaudit.views.report import to_html

    return to_html(real_audit, tmp_path_factory.mktemp("report") / "audit.html")


@pytest.fixture(scope="session")
def report_state(real_audit):
    from hopaudit.views.widget import widget_state

    return widget_state(real_audit)


class Page:
    """A page with its console errors collected."""

    def __init__(self, page):
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))


@pytest.fixture
def open_report(browser, report_path):
    pages = []

    def _open(width=1100, height=900, color_scheme="light", init_script=None, path=None):
        ctx = browser.new_context(
            viewport={"width": width, "height": height}, color_scheme=color_scheme
        )
        page = ctx.new_page()
        if init_script:
            page.add_init_script(init_script)
        wrapped = Page(page)
        pages.append(ctx)
        page.goto((path or report_path).as_uri())
        page.wait_for_selector(".hopaudit[data-ready=true]", timeout=30_000)
        return wrapped

    yield _open
    for ctx in pages:
        ctx.close()


os.environ.setdefault("PYTHONHASHSEED", "0")
