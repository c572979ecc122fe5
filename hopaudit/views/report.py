"""One self-contained HTML file of a view (an audit, a comparison, a timeline): it opens offline
in any browser.

The file holds one payload (:func:`pack_page`): the front-end bundle, its CSS and the view's
state (:func:`pack_state`: the JSON scalars, and the bytes of every packed array
(:mod:`hopaudit.schema`) stored through the lossless filters named in the state's header: byte
shuffle, and delta coding for the usually increasing integer arrays). The payload is gzipped and
written as standard base64 into
``<script type="application/octet-stream" id="hopaudit-data" data-encoding="base64">``.

The page's bootstrap (js/src/bootstrap.ts, built beside the bundle and inlined) decodes the
base64, gunzips it with the browser's own ``DecompressionStream("gzip")``, imports the bundle
from a Blob URL, injects the CSS and hands the state to the bundle's ``unpackReport``, which
undoes the filters and gives each array back as ``{dtype, shape, view}``, exactly what anywidget
hands the view in a notebook. A small model object stands in for the kernel, so the same
``render({model, el})`` draws it. A browser without ``DecompressionStream`` (or ES modules) gets
a message, not a blank page.

The file is UTF-8 with a byte order mark, which browsers obey over any charset a server
declares; the payload itself is ASCII. :func:`read_html_state` reads a state back (tests).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import html
import json
import re
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from hopaudit.views.schema import DTYPES, is_array
from hopaudit.views.widget import CSS_PATH, ESM_PATH, STATIC, read_static

MAGIC = b"HAR2"  # hopaudit report state, version 2 (buffers may carry filters)
PAGE_MAGIC = b"HAP1"  # hopaudit report page payload (bundle, CSS, state), version 1

#: Byte shuffle (one byte plane per byte of an item, as blosc does) before gzip: the item size
#: of every multi-byte array of an audit's state. ``scatter_xy`` shuffles whole points (x, y).
SHUFFLE = {
    "layer_stats": 8,
    "hist_range": 8,
    "hist_counts": 4,
    "hist_medians": 8,
    "scatter_xy": 4,
    "scatter_basin": 2,
    "scatter_basin_sizes": 4,
    "seq_ce": 2,
    "sample_values": 4,
    "floor_curve": 4,
}
#: Delta coding (then shuffle, both of the array's item size) of the unsigned integer arrays that
#: are usually increasing.
DELTA = ("text_offsets", "sample_seq", "sequence_ids", "scatter_seq")
#: The filters a payload may declare, and the item sizes they take.
FILTER_SIZES = {"delta": (1, 2, 4, 8), "shuffle": tuple(range(1, 256))}


def default_filters(state: dict[str, Any]) -> dict[str, list[tuple[str, int]]]:
    """The filters :func:`pack_state` applies to the arrays of a single audit's state (the
    ``blob`` of a comparison or a timeline, a mix of arrays, gets none)."""
    out: dict[str, list[tuple[str, int]]] = {}
    for key in DELTA:
        if is_array(state.get(key)):
            size = np.dtype(DTYPES[state[key]["dtype"]]).itemsize
            out[key] = [("delta", size), ("shuffle", size)]
    for key, size in SHUFFLE.items():
        out[key] = [("shuffle", size)]
    return out


def _check_filter(name: str, size: int) -> None:
    if name not in FILTER_SIZES or size not in FILTER_SIZES[name]:
        raise ValueError(f"unknown filter {name!r} of item size {size!r}")


def apply_filter(data: bytes, name: str, size: int) -> bytes:
    """One filter, forwards. Both keep the length; a tail shorter than one item stays as is.

    ``delta``: little-endian unsigned integers of ``size`` bytes -> their first value, then the
    differences modulo 2**(8 size) (lossless whatever the order). ``shuffle``: the first byte
    of every item, then the second byte of every item, and so on."""
    _check_filter(name, size)
    n = len(data) // size * size
    if n == 0:
        return bytes(data)
    head, tail = data[:n], data[n:]
    if name == "delta":
        a = np.frombuffer(head, f"<u{size}")
        d = a.copy()
        d[1:] = a[1:] - a[:-1]  # unsigned: wraps around
        return d.tobytes() + tail
    a = np.frombuffer(head, np.uint8).reshape(-1, size)
    return a.T.tobytes() + tail


def undo_filter(data: bytes, name: str, size: int) -> bytes:
    """The inverse of :func:`apply_filter`."""
    _check_filter(name, size)
    n = len(data) // size * size
    if n == 0:
        return bytes(data)
    head, tail = data[:n], data[n:]
    if name == "delta":
        d = np.frombuffer(head, f"<u{size}")
        return np.cumsum(d, dtype=d.dtype).tobytes() + tail  # wraps around
    a = np.frombuffer(head, np.uint8).reshape(size, -1)
    return a.T.tobytes() + tail


def pack_state(
    state: dict[str, Any], filters: dict[str, list[tuple[str, int]]] | None = None
) -> bytes:
    """State dict -> one binary payload: MAGIC, uint32 header length, JSON header, buffers.

    A packed array ``{dtype, shape, view}`` keeps its dtype and shape in the header, its bytes
    replaced by ``"$buffer": [offset, length]``; buffers start on
    8-byte boundaries so the front end can view them as typed arrays without copying. A buffer
    stored through filters (``filters``, by default :func:`default_filters`: byte shuffle,
    delta coding, which compress better with gzip) says so in its header entry,
    ``"$filters": [[name, item size], ...]`` in the order applied; readers undo them in reverse.
    """
    if filters is None:
        filters = default_filters(state)
    header: dict[str, Any] = {}
    buffers: list[bytes] = []
    offset = 0
    for key, value in state.items():
        if is_array(value):
            b = bytes(value["view"])
            chain = [[str(name), int(size)] for name, size in filters.get(key, ())]
            for name, size in chain:
                b = apply_filter(b, name, size)
            pad = (-offset) % 8
            if pad:
                buffers.append(b"\0" * pad)
                offset += pad
            header[key] = {"dtype": value["dtype"], "shape": value["shape"]}
            header[key]["$buffer"] = [offset, len(b)]
            if chain:
                header[key]["$filters"] = chain
            buffers.append(b)
            offset += len(b)
        else:
            header[key] = value
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    head += b" " * ((-(len(head) + 8)) % 8)
    return MAGIC + struct.pack("<I", len(head)) + head + b"".join(buffers)


def _is_buffer(value: Any) -> bool:
    return isinstance(value, dict) and "$buffer" in value


def unpack_state(payload: bytes) -> dict[str, Any]:
    """The inverse of :func:`pack_state`, filters undone (for tests; the browser does the same
    in JS, js/src/report.ts)."""
    if payload[:4] != MAGIC:
        raise ValueError("not a hopaudit report payload")
    (n,) = struct.unpack("<I", payload[4:8])
    header = json.loads(payload[8 : 8 + n])
    body = payload[8 + n :]
    out = {}
    for key, value in header.items():
        if _is_buffer(value):
            start, length = value["$buffer"]
            b = bytes(body[start : start + length])
            for name, size in reversed(value.get("$filters", [])):
                b = undo_filter(b, name, size)
            out[key] = {"dtype": value["dtype"], "shape": value["shape"], "view": b}
        else:
            out[key] = value
    return out


def pack_page(state: dict[str, Any], esm: str, css: str) -> bytes:
    """Bundle, CSS and state -> one payload: PAGE_MAGIC, uint32 bundle length, uint32 CSS
    length (both in UTF-8 bytes), the bundle, the CSS, zero padding to 8 bytes, then
    :func:`pack_state`."""
    e, c = esm.encode("utf-8"), css.encode("utf-8")
    head = PAGE_MAGIC + struct.pack("<II", len(e), len(c)) + e + c
    return head + b"\0" * ((-len(head)) % 8) + pack_state(state)


def unpack_page(payload: bytes) -> tuple[str, str, dict[str, Any]]:
    """The inverse of :func:`pack_page`: (bundle, CSS, state)."""
    if payload[:4] != PAGE_MAGIC:
        raise ValueError("not a hopaudit report page payload")
    ne, nc = struct.unpack("<II", payload[4:12])
    esm = payload[12 : 12 + ne].decode("utf-8")
    css = payload[12 + ne : 12 + ne + nc].decode("utf-8")
    start = 12 + ne + nc
    start += (-start) % 8
    return esm, css, unpack_state(payload[start:])


#: The text encoding of the payload in the page (``data-encoding`` of its element).
ENCODING = "base64"


def encode_page(state: dict[str, Any], esm: str, css: str) -> str:
    """The payload as it sits in the HTML file: gzip (mtime 0, reproducible), then base64."""
    packed = gzip.compress(pack_page(state, esm, css), compresslevel=9, mtime=0)
    return base64.b64encode(packed).decode("ascii")


def read_html_page(path_or_text: str | Path) -> tuple[str, str, dict[str, Any]]:
    """(bundle, CSS, state) of an exported report, given its path or its text (for tests)."""
    text = str(path_or_text)
    if isinstance(path_or_text, Path) or "<" not in text:
        text = Path(path_or_text).read_text(encoding="utf-8")
    m = re.search(r'<script id="hopaudit-data" data-encoding="(\w+)"[^>]*>([^<]*)</script>', text)
    if m is None:
        raise ValueError("no hopaudit report payload in this page")
    if m.group(1) != ENCODING:
        raise ValueError(f"unknown payload encoding {m.group(1)!r}")
    try:
        packed = base64.b64decode(m.group(2), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"the report's payload is not base64: {exc}") from None
    return unpack_page(gzip.decompress(packed))


def read_html_state(path_or_text: str | Path) -> dict[str, Any]:
    """The widget state of an exported report, given its path or its text (for tests)."""
    return read_html_page(path_or_text)[2]


#: The page's bootstrap (js/src/bootstrap.ts), built beside the bundle and inlined in the page.
BOOTSTRAP_PATH = STATIC / "bootstrap.js"
#: What a browser without ES modules shows (the bootstrap says the same where modules run but
#: DecompressionStream is missing).
OLD_BROWSER = (
    "this browser cannot decompress the report; open it in a current Chrome, Firefox, Safari "
    "or Edge"
)

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="hopaudit">
<title>{title}</title>
<style>
html, body {{ margin: 0; background: #ffffff; color: #1f2328; }}
body {{ font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }}
body[data-theme="dark"] {{ background: #0b0e12; color: #e6edf3; }}
@media (prefers-color-scheme: dark) {{
  body:not([data-theme="light"]) {{ background: #0b0e12; color: #e6edf3; }}
}}
.page {{ max-width: 1400px; margin: 0 auto; padding: 12px 16px 24px; }}
.page-head {{ display: flex; align-items: baseline; gap: 12px; flex-wrap: wrap;
  font-size: 13px; opacity: .8; margin-bottom: 8px; }}
.page-head strong {{ font-size: 15px; opacity: 1; }}
.page-head select {{ font: inherit; font-size: 12px; margin-left: auto; }}
noscript, .page-error {{ display: block; padding: 12px; border: 1px dashed #d1242f;
  color: #d1242f; }}
</style>
</head>
<body>
<div class="page">
  <div class="page-head"><strong>hopaudit</strong><span>{subtitle}</span>
    <label>theme <select id="hopaudit-theme" aria-label="colour theme">
      <option value="">auto</option><option value="light">light</option>
      <option value="dark">dark</option></select></label></div>
  <noscript>This report needs JavaScript to draw its charts.</noscript>
  <div id="hopaudit-root"></div>
</div>
<script id="hopaudit-data" data-encoding="{encoding}"
 type="application/octet-stream">{payload}</script>
<script nomodule>
(function () {{
  var box = document.createElement("pre");
  box.className = "page-error";
  box.textContent = "This report could not be drawn: {old_browser}";
  document.getElementById("hopaudit-root").appendChild(box);
}})();
</script>
<script type="module">{bootstrap}</script>
</body>
</html>
"""


def _state_of(view: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The state to write: a :class:`~hopaudit.views.protocol.Viewable`'s (an Audit, a Comparison, a
    Timeline or one of their widgets), or a state dict as it is."""
    if callable(getattr(view, "widget_state", None)):  # a views.protocol.Viewable
        return view.widget_state(**options)
    if isinstance(view, dict):
        if options:
            raise TypeError(
                f"{sorted(options)} apply to a view's widget_state, not to a state dict"
            )
        return view
    raise TypeError(
        "to_html takes an Audit, a Comparison, a Timeline, their widgets or a state dict, "
        f"not {type(view).__name__}"
    )


def _bootstrap() -> str:
    code = read_static(BOOTSTRAP_PATH).strip()
    if "</script" in code.lower() or "<!--" in code:
        raise ValueError(f"{BOOTSTRAP_PATH} cannot be inlined in a <script> element")
    return code


def render_html(view: Any, **options: Any) -> str:
    """The report page as a string (see :func:`to_html`, which also writes a UTF-8 byte order
    mark before it)."""
    state = _state_of(view, options)
    esm = read_static(ESM_PATH)
    css = read_static(CSS_PATH)
    summary = state.get("summary") or {}
    model = str(summary.get("model") or "audit")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"{model} · {summary.get('n_sequences', '?')} sequences · generated {stamp}"
    if state.get("kind") == "compare":
        model = "comparison of " + ", ".join(map(str, state.get("labels") or []))
        subtitle = f"{model} · generated {stamp}"
    elif state.get("kind") == "timeline":
        steps = state.get("steps") or []
        first = (state.get("members") or [{}])[0].get("summary", {}).get("model", "model")
        model = f"timeline of {first}"
        span = f"steps {steps[0]}–{steps[-1]}" if steps else "no steps"
        subtitle = f"{model} · {len(steps)} audits, {span} · generated {stamp}"
    return _PAGE.format(
        title=html.escape(f"hopaudit: {model}"),
        subtitle=html.escape(subtitle),
        encoding=ENCODING,
        payload=encode_page(state, esm, css),
        old_browser=OLD_BROWSER,
        bootstrap=_bootstrap(),
    )


def to_html(view: Any, path: str | Path, **options: Any) -> Path:
    """Write one self-contained HTML report of a view (an Audit, a Comparison, a Timeline, one
    of their widgets, or a ``widget_state`` dict) to ``path`` and return the path. It needs no
    network and no server: open it in any browser. ``options`` go to ``widget_state``.

    The sequences' texts (shown on hover and in the samples table) are most of a big report:
    about 80 bytes per sequence at the default 240 characters, against about 7 bytes per
    scatter point for everything else. ``text_chars=`` keeps fewer characters per text for a
    smaller file; 0 keeps none.
    """
    from hopaudit.storage.atomic import write_text

    path = Path(path)
    text = render_html(view, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A UTF-8 byte order mark: it wins over any charset a web server may declare. Written to a
    # fresh temporary sibling, then renamed over path (a link there is replaced, not followed).
    return write_text(path, text, encoding="utf-8-sig")
