"""One self-contained HTML file of an audit's widget: it opens offline in any browser.

The file holds one payload (:func:`pack_page`): the front-end bundle, its CSS and the widget's
state (the JSON scalars and every binary array, :func:`pack_state`, with each array's filters
named in the state's header: byte shuffle, and delta coding for the usually increasing integer
arrays, both lossless). The payload is gzip-compressed, then written as "b7" text
(:func:`encode_text`: 7 bits per ASCII character, the few characters unsafe in a ``<script>``
element escaped; about 1.18 characters per byte where base64 takes 1.33) into
``<script type="application/octet-stream" id="hopaudit-data" data-encoding="b7">``.

A short inline bootstrap decodes the text, gunzips it with the browser's own
``DecompressionStream("gzip")`` (no library is loaded yet), imports the bundle from a Blob URL
as an ES module, injects the CSS and hands the state bytes to the bundle's ``unpackReport``,
which undoes the filters and returns DataViews, exactly what anywidget hands the view in a
notebook. A ~30-line model object (get/set/on/off/save_changes/send) stands in for the kernel,
so the same ``render({model, el})`` draws it. A browser without ``DecompressionStream`` (or
without ES modules) gets a message, not a blank page.

The file is UTF-8 with a byte order mark, which browsers obey over any charset a server
declares; the payload itself is ASCII. :func:`read_html_state` reads a state back (tests).
"""

from __future__ import annotations

import gzip
import html
import json
import re
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .widget import CSS_PATH, ESM_PATH, _read_static, widget_state

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
}
#: Delta coding (then shuffle) of the unsigned integer arrays that are usually increasing.
DELTA = {"text_offsets": 4, "sample_seq": 4, "sequence_ids": 4, "scatter_seq": 4}
#: The filters a payload may declare, and the item sizes they take.
FILTER_SIZES = {"delta": (1, 2, 4, 8), "shuffle": tuple(range(1, 256))}


def default_filters(state: dict[str, Any]) -> dict[str, list[tuple[str, int]]]:
    """The filters :func:`pack_state` applies to the arrays of a single audit's state (the
    ``blob`` of a comparison or a timeline, a mix of arrays, gets none)."""
    out: dict[str, list[tuple[str, int]]] = {}
    for key, size in DELTA.items():
        if key == "scatter_seq":
            size = int(state.get("scatter_seq_bytes", 4))
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

    ``bytes`` values become ``{"$buffer": [offset, length]}`` in the header; buffers start on
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
        if isinstance(value, (bytes, bytearray, memoryview)):
            b = bytes(value)
            chain = [[str(name), int(size)] for name, size in filters.get(key, ())]
            for name, size in chain:
                b = apply_filter(b, name, size)
            pad = (-offset) % 8
            if pad:
                buffers.append(b"\0" * pad)
                offset += pad
            header[key] = {"$buffer": [offset, len(b)]}
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
    return isinstance(value, dict) and "$buffer" in value and set(value) <= {"$buffer", "$filters"}


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
            out[key] = b
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
ENCODING = "b7"
#: b7: the values of a 7-bit group that may not stand for themselves in the page: NUL (the HTML
#: parser makes it U+FFFD), CR (made LF), "<" (could start "</script" or "<!--"), and the
#: escape character itself. Each is written as the escape then the ASCII digit of its index.
B7_UNSAFE = (0x00, 0x0D, 0x3C, 0x7F)
B7_ESCAPE = 0x7F
_B7_DIGIT = ord("0")


def encode_text(data: bytes) -> str:
    """Bytes -> "b7" text: pure ASCII, safe inside an HTML ``<script>`` raw-text element.

    The text is the byte length in decimal, a colon, then one character per 7-bit group of the
    bytes (most significant bit first; the last group padded with zero bits): the ASCII
    character of the group's value, except that the values of :data:`B7_UNSAFE` become two
    characters, DEL (0x7F) and the digit of their index. About 8/7 (1 + 4/128) = 1.18 characters
    per byte, against 4/3 for base64. ASCII only, so any ASCII-compatible charset reads the same
    characters (the report also starts with a UTF-8 byte order mark, which wins over a charset
    a server declares)."""
    a = np.frombuffer(bytes(data), np.uint8)
    bits = np.unpackbits(a)
    bits = np.concatenate([bits, np.zeros((-len(bits)) % 7, np.uint8)])
    groups = np.packbits(bits.reshape(-1, 7), axis=1)[:, 0] >> 1  # a zero bit appended: v << 1
    first = np.arange(128, dtype=np.uint8)
    second = np.zeros(128, np.uint8)
    width = np.ones(128, np.int64)
    for i, v in enumerate(B7_UNSAFE):
        first[v], second[v], width[v] = B7_ESCAPE, _B7_DIGIT + i, 2
    w = width[groups]
    pos = np.cumsum(w) - w
    out = np.empty(int(w.sum()), np.uint8)
    out[pos] = first[groups]
    esc = w == 2
    out[pos[esc] + 1] = second[groups[esc]]
    return f"{len(a)}:" + out.tobytes().decode("ascii")


def decode_text(text: str) -> bytes:
    """The inverse of :func:`encode_text` (the page's bootstrap does the same in JS). Raises
    ``ValueError`` on anything :func:`encode_text` cannot have written."""
    head, colon, body = text.partition(":")
    if not colon or not head.isascii() or not head.isdigit():
        raise ValueError("not b7 text: no byte length before a colon")
    n = int(head)
    try:
        codes = np.frombuffer(body.encode("ascii"), np.uint8)
    except UnicodeEncodeError:
        raise ValueError("not b7 text: a character outside ASCII") from None
    esc = np.flatnonzero(codes == B7_ESCAPE)
    if np.any(np.diff(esc) < 2) or (len(esc) and esc[-1] + 1 >= len(codes)):
        raise ValueError("not b7 text: an escape without its digit")
    index = codes[esc + 1].astype(np.int64) - _B7_DIGIT
    if np.any((index < 0) | (index >= len(B7_UNSAFE))):
        raise ValueError("not b7 text: an unknown escape")
    raw = np.delete(codes, esc + 1)
    if np.isin(np.delete(raw, esc - np.arange(len(esc))), B7_UNSAFE).any():
        raise ValueError("not b7 text: a character that must be escaped")
    raw[esc - np.arange(len(esc))] = np.asarray(B7_UNSAFE, np.uint8)[index]
    if len(raw) != -(-8 * n // 7):
        raise ValueError(f"not b7 text: {len(raw)} groups for {n} bytes")
    bits = np.unpackbits(raw.reshape(-1, 1), axis=1)[:, 1:].ravel()
    if bits[8 * n :].any():
        raise ValueError("not b7 text: padding bits are not zero")
    return np.packbits(bits[: 8 * n]).tobytes()


def encode_page(state: dict[str, Any], esm: str, css: str) -> str:
    """The payload as it sits in the HTML file: gzip (mtime 0, reproducible), then b7 text."""
    return encode_text(gzip.compress(pack_page(state, esm, css), compresslevel=9, mtime=0))


def read_html_page(path_or_text: str | Path) -> tuple[str, str, dict[str, Any]]:
    """(bundle, CSS, state) of an exported report, given its path or its text (for tests)."""
    text = str(path_or_text)
    if isinstance(path_or_text, Path) or "<" not in text:
        text = Path(path_or_text).read_text(encoding="utf-8")
    m = re.search(r'<script [^>]*id="hopaudit-data" data-encoding="(\w+)">([^<]*)</script>', text)
    if m is None:
        raise ValueError("no hopaudit report payload in this page")
    if m.group(1) != ENCODING:
        raise ValueError(f"unknown payload encoding {m.group(1)!r}")
    return unpack_page(gzip.decompress(decode_text(m.group(2))))


def read_html_state(path_or_text: str | Path) -> dict[str, Any]:
    """The widget state of an exported report, given its path or its text (for tests)."""
    return read_html_page(path_or_text)[2]


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
<script type="application/octet-stream" id="hopaudit-data" data-encoding="b7">{payload}</script>
<script nomodule>
(function () {{
  var box = document.createElement("pre");
  box.className = "page-error";
  box.textContent = "This report could not be drawn: {old_browser}";
  document.getElementById("hopaudit-root").appendChild(box);
}})();
</script>
<script type="module">
const root = document.getElementById("hopaudit-root");
const theme = document.getElementById("hopaudit-theme");
theme.addEventListener("change", () => {{
  if (theme.value) document.body.setAttribute("data-theme", theme.value);
  else document.body.removeAttribute("data-theme");
}});
function fail(message) {{
  const box = document.createElement("pre");
  box.className = "page-error";
  box.textContent = "This report could not be drawn: " + message;
  root.append(box);
}}
// b7 (hopaudit/report.py, encode_text): "<byte length>:", then one character per 7-bit group,
// DEL + digit i standing for the i-th of NUL, CR, "<", DEL.
function decodeText(text) {{
  const colon = text.indexOf(":");
  const n = colon > 0 ? Number(text.slice(0, colon)) : NaN;
  if (!Number.isSafeInteger(n)) throw new Error("the report's payload has no length");
  const unsafe = [0x00, 0x0d, 0x3c, 0x7f];
  const out = new Uint8Array(n);
  let acc = 0, bits = 0, j = 0;
  for (let i = colon + 1; i < text.length && j < n; i++) {{
    let v = text.charCodeAt(i);
    if (v === 0x7f) v = unsafe[text.charCodeAt(++i) - 48];
    if (!(v < 128)) throw new Error("the report's payload is damaged");
    acc = ((acc << 7) | v) & 0x7fff;
    bits += 7;
    if (bits >= 8) {{
      bits -= 8;
      out[j++] = acc >> bits;
    }}
  }}
  if (j !== n) throw new Error("the report's payload is truncated");
  return out;
}}
async function main() {{
  // No library is loaded yet: the browser's own gunzip, or a message.
  if (typeof DecompressionStream !== "function") return fail("{old_browser}");
  const packed = decodeText(document.getElementById("hopaudit-data").textContent);
  const gunzip = new Blob([packed]).stream().pipeThrough(new DecompressionStream("gzip"));
  const raw = new Uint8Array(await new Response(gunzip).arrayBuffer());
  // pack_page: "HAP1", uint32 bundle length, uint32 CSS length, bundle, CSS, pad to 8, state.
  if (String.fromCharCode(...raw.subarray(0, 4)) !== "HAP1") {{
    throw new Error("not a hopaudit report page payload");
  }}
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const ne = dv.getUint32(4, true);
  const nc = dv.getUint32(8, true);
  const style = document.createElement("style");
  style.textContent = new TextDecoder().decode(raw.subarray(12 + ne, 12 + ne + nc));
  document.head.append(style);
  const esm = new Blob([raw.subarray(12, 12 + ne)], {{ type: "text/javascript" }});
  const url = URL.createObjectURL(esm);
  const mod = await import(url);
  URL.revokeObjectURL(url);
  const state = mod.unpackReport(raw.subarray(Math.ceil((12 + ne + nc) / 8) * 8));
  const listeners = new Map();
  const model = {{
    get: (k) => state[k],
    set: (k, v) => {{
      state[k] = v;
      for (const cb of listeners.get("change:" + k) || []) cb();
    }},
    on: (ev, cb) => {{
      if (!listeners.has(ev)) listeners.set(ev, new Set());
      listeners.get(ev).add(cb);
    }},
    off: (ev, cb) => {{
      if (!ev) listeners.clear();
      else if (!cb) listeners.delete(ev);
      else listeners.get(ev)?.delete(cb);
    }},
    save_changes: () => {{}},
    send: () => {{}},
  }};
  window.hopauditModel = model;
  await mod.default.render({{ model, el: root }});
}}
main().catch((err) => {{
  fail(String(err));
  console.error(err);
}});
</script>
</body>
</html>
"""


def _state_of(audit_or_state: Any, text_chars: int | None = None) -> dict[str, Any]:
    from .comparison import state_of as multi_state_of

    if text_chars is not None and not (
        hasattr(audit_or_state, "summary") and hasattr(audit_or_state, "layers")
    ):
        raise TypeError("text_chars applies to an Audit's report only")

    multi = multi_state_of(audit_or_state)  # a Comparison, a Timeline or their widgets
    if multi is not None:
        return multi
    if isinstance(audit_or_state, dict):
        return audit_or_state
    if hasattr(audit_or_state, "summary") and hasattr(audit_or_state, "layers"):
        if text_chars is None:
            return widget_state(audit_or_state)
        return widget_state(audit_or_state, text_chars=text_chars)
    if hasattr(audit_or_state, "get_state") and hasattr(audit_or_state, "layer_stats"):
        return {
            k: getattr(audit_or_state, k)
            for k in audit_or_state.trait_names(sync=True)
            if not k.startswith("_") and k not in ("layout", "tabbable", "tooltip")
        }
    raise TypeError(
        f"to_html takes an Audit, a Comparison, a Timeline, their widgets or a state dict, "
        f"not {type(audit_or_state).__name__}"
    )


def render_html(audit_or_state: Any, *, text_chars: int | None = None) -> str:
    """The report page as a string (see :func:`to_html`, which also writes a UTF-8 byte order
    mark before it)."""
    state = _state_of(audit_or_state, text_chars)
    esm = _read_static(ESM_PATH)
    css = _read_static(CSS_PATH)
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
        payload=encode_page(state, esm, css),
        old_browser=OLD_BROWSER,
    )


def to_html(audit_or_state: Any, path: str | Path, *, text_chars: int | None = None) -> Path:
    """Write one self-contained HTML report of an audit (or a ``widget_state`` dict) to
    ``path`` and return the path. It needs no network and no server: open it in any browser.

    The sequences' texts (shown on hover and in the samples table) are most of a big report:
    about 80 bytes per sequence at the default 240 characters, against about 7 bytes per
    scatter point for everything else. ``text_chars`` (an Audit only) keeps fewer characters
    per text for a smaller file; 0 keeps none.
    """
    from .atomic import write_text

    path = Path(path)
    text = render_html(audit_or_state, text_chars=text_chars)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A UTF-8 byte order mark: it wins over any charset a web server may declare. Written to a
    # fresh temporary sibling, then renamed over path (a link there is replaced, not followed).
    return write_text(path, text, encoding="utf-8-sig")
