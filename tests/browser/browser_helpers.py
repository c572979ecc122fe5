"""Helpers of the browser tests: paths, a tiny PNG decoder, screenshots, a free port, and
JupyterLab: a server, the cells of a notebook that audits the tiny GPT-2, opening and running it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The committed screenshots are refreshed only on request (HOPAUDIT_SCREENSHOTS=1), so a test
# run leaves the working tree as it was.
SCREENSHOTS = (
    ROOT / "docs" / "screenshots"
    if os.environ.get("HOPAUDIT_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "hopaudit-screenshots"
)
PANELS = ("summary", "distances", "radii", "basins", "floor", "membership", "samples")


def decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, channels, raw pixel bytes) of an 8-bit, non-interlaced RGB/RGBA PNG.

    A small decoder so the pixel checks need no imaging library."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and interlace == 0 and ctype in (2, 6)
            channels = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    out = bytearray(height * stride)
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - channels] if x >= channels else 0
            b = prev[x]
            c = prev[x - channels] if x >= channels else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pred) & 255
        out[y * stride : (y + 1) * stride] = line
        prev = line
    return width, height, channels, bytes(out)


def save_screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.locator(".hopaudit").screenshot(path=str(path))
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Counts the WebGL contexts a page makes: getContext is wrapped before the page's scripts run.
COUNT_WEBGL = """
window.__webglContexts = 0;
const orig = HTMLCanvasElement.prototype.getContext;
HTMLCanvasElement.prototype.getContext = function (kind, ...rest) {
  if (String(kind).includes('webgl')) window.__webglContexts++;
  return orig.call(this, kind, ...rest);
};
"""


def open_counting_webgl(browser, path: Path, *, width: int = 1200, color_scheme: str | None = None):
    """(context, page, console errors) of `path` opened once its view is ready, with
    ``window.__webglContexts`` counting the WebGL contexts made."""
    options = {"color_scheme": color_scheme} if color_scheme is not None else {}
    ctx = browser.new_context(viewport={"width": width, "height": 900}, **options)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.add_init_script(COUNT_WEBGL)
    page.goto(path.as_uri())
    page.wait_for_selector(".hopaudit[data-ready=true]", timeout=60_000)
    return ctx, page, errors


def non_background(png: bytes) -> int:
    """How many pixels of a screenshot differ clearly from its most common colour."""
    import numpy as np

    w, h, ch, px = decode_png(png)
    flat = np.frombuffer(px, dtype=np.uint8).reshape(h * w, ch)[:, :3].astype(int)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    return int((np.abs(flat - colours[counts.argmax()]).sum(axis=1) > 60).sum())


def audit_cells(n_texts: int, *after: str, heldout: int = 0, **options) -> list[str]:
    """The cells of a notebook that audits the tiny GPT-2 as ``a``: this checkout and tests/
    put first on ``sys.path``, then ``a = hopaudit.audit(model, texts, **options)`` on
    ``n_texts`` short texts (the last ``heldout`` of them held out), then the cells ``after``."""
    cut = n_texts - heldout
    texts = f"texts[:{cut}], heldout=texts[{cut}:]" if heldout else "texts"
    args = ", ".join(
        [texts, "tokenizer=tiny_tokenizer()", *(f"{k}={v!r}" for k, v in options.items())]
    )
    return [
        f"import sys\nsys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]",
        "import hopaudit\n"
        "from tiny_models import tiny_model, tiny_tokenizer\n"
        "model, _ = tiny_model('gpt2')\n"
        "texts = [f'Notebook sequence {i}: pattern {i % 9} sits in basin {i % 4}.'\n"
        f"         for i in range({n_texts})]\n"
        f"a = hopaudit.audit(model, {args})",
        *after,
    ]


def write_notebook(path: Path, cells: list[str]) -> None:
    """A notebook of ``cells`` (code sources, unexecuted) for the python3 kernel."""
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "metadata": {},
                "source": c,
                "outputs": [],
                "execution_count": None,
            }
            for c in cells
        ],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb), encoding="utf-8")


@contextlib.contextmanager
def jupyter_lab(root: Path) -> Iterator[tuple[str, str]]:
    """A JupyterLab 4 server over ``root`` with default settings (its own config and data
    folders in ``root``), on a free port with a fresh token: yields (url, token). The server's
    process group is ended afterwards, and only that one."""
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JUPYTER_CONFIG_DIR=str(root / "cfg"),
               JUPYTER_DATA_DIR=str(root / "data"))  # fmt: skip
    log = open(root / "lab.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip", "127.0.0.1", "--port",
         str(port), f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=None", "--allow-root"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
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
                        "jupyter lab did not start:\n" + (root / "lab.log").read_text()
                    ) from None
                time.sleep(0.5)
        yield url, token
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the session this started, only
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def open_notebook(page, url: str, token: str, notebook: str, kernel: str = "Select") -> None:
    """Open ``notebook`` in JupyterLab and wait until its kernel is settled: JupyterLab either
    asks which kernel to start (the dialog's button ``kernel`` is clicked: "Select" takes the
    default, "No Kernel" starts none) or starts the kernel the notebook's metadata names. The
    workspace is reset: what an earlier page on the same server had open is not reopened."""
    page.goto(f"{url}/lab/tree/{notebook}?reset&token={token}", timeout=120_000)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    label = re.compile(rf"^\s*{re.escape(kernel)}\s*$")  # "Select" is labelled "Select Kernel"
    dialog = page.locator(".jp-Dialog button").filter(has_text=label)
    started = page.get_by_text("Python 3 (ipykernel) | Idle")
    dialog.or_(started).first.wait_for(timeout=120_000)
    if dialog.count():
        dialog.click()


def run_all_cells(page, url: str, token: str, notebook: str) -> None:
    """Open ``notebook`` in JupyterLab, accept the default kernel if asked, and run every cell."""
    open_notebook(page, url, token, notebook)
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
