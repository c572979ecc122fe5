"""End to end in JupyterLab 4: a notebook audits a tiny model, shows it, every panel renders."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser_helpers import PANELS, ROOT, SCREENSHOTS, free_port

pytestmark = pytest.mark.slow

CELLS = [
    f"import sys\nsys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]",
    "import hopaudit\n"
    "from tiny_models import tiny_model, tiny_tokenizer\n"
    "model, _ = tiny_model('gpt2')\n"
    "texts = [f'Notebook sequence {i}: pattern {i % 9} sits in basin {i % 4}.'\n"
    "         for i in range(80)]\n"
    "a = hopaudit.audit(model, texts, tokenizer=tiny_tokenizer(), max_length=64,\n"
    "                   chunking='document', progress=False)",
    "a",
]


def _notebook(path: Path) -> None:
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "metadata": {},
                "source": c,
                "outputs": [],
                "execution_count": None,
            }
            for c in CELLS
        ],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb), encoding="utf-8")


@pytest.fixture
def lab(tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    _notebook(tmp_path / "audit.ipynb")
    env = dict(os.environ, PYTHONPATH=str(ROOT), JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"))
    log = open(tmp_path / "lab.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            f"--ServerApp.token={token}",
            f"--ServerApp.root_dir={tmp_path}",
            "--LabApp.news_url=None",
            "--allow-root",
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log.flush()
                    raise RuntimeError(
                        "jupyter lab did not start:\n" + (tmp_path / "lab.log").read_text()
                    ) from None
                time.sleep(0.5)
        yield url, token
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the session this fixture started, only
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def test_notebook_renders_every_panel(browser, lab):
    url, token = lab
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{url}/lab/tree/audit.ipynb?token={token}", timeout=120_000)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        # JupyterLab asks which kernel to start for a notebook it has not seen: the default.
        dialog = page.locator(".jp-Dialog button.jp-mod-accept", has_text="Select")
        try:
            dialog.wait_for(timeout=30_000)
            dialog.click()
        except Exception:
            pass  # no dialog: the kernel was chosen from the notebook's metadata
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
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
