"""One self-contained HTML file of an audit's widget: it opens offline in any browser.

The file inlines the front-end bundle (imported from a Blob URL as an ES module), its CSS, and
the widget's state: the JSON scalars and every binary array packed into one gzip-compressed,
base64-encoded blob that the bundle's ``unpackReport`` reads back into DataViews, exactly what
anywidget hands the view in a notebook. A ~30-line model object (get/set/on/off/save_changes/
send) stands in for the kernel, so the same ``render({model, el})`` draws it.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .widget import CSS_PATH, ESM_PATH, _read_static, widget_state

MAGIC = b"HAR1"  # hopaudit report payload, version 1


def pack_state(state: dict[str, Any]) -> bytes:
    """State dict -> one binary payload: MAGIC, uint32 header length, JSON header, buffers.

    ``bytes`` values become ``{"$buffer": [offset, length]}`` in the header; buffers start on
    8-byte boundaries so the front end can view them as typed arrays without copying.
    """
    header: dict[str, Any] = {}
    buffers: list[bytes] = []
    offset = 0
    for key, value in state.items():
        if isinstance(value, (bytes, bytearray, memoryview)):
            b = bytes(value)
            pad = (-offset) % 8
            if pad:
                buffers.append(b"\0" * pad)
                offset += pad
            header[key] = {"$buffer": [offset, len(b)]}
            buffers.append(b)
            offset += len(b)
        else:
            header[key] = value
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    head += b" " * ((-(len(head) + 8)) % 8)
    return MAGIC + struct.pack("<I", len(head)) + head + b"".join(buffers)


def unpack_state(payload: bytes) -> dict[str, Any]:
    """The inverse of :func:`pack_state` (for tests; the browser does the same in JS)."""
    if payload[:4] != MAGIC:
        raise ValueError("not a hopaudit report payload")
    (n,) = struct.unpack("<I", payload[4:8])
    header = json.loads(payload[8 : 8 + n])
    body = payload[8 + n :]
    out = {}
    for key, value in header.items():
        if isinstance(value, dict) and set(value) == {"$buffer"}:
            start, length = value["$buffer"]
            out[key] = body[start : start + length]
        else:
            out[key] = value
    return out


def encode_state(state: dict[str, Any]) -> str:
    """The payload as it sits in the HTML file: gzip (mtime 0, reproducible), then base64."""
    return base64.b64encode(gzip.compress(pack_state(state), compresslevel=9, mtime=0)).decode()


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
<style>{css}</style>
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
<script type="application/octet-stream" id="hopaudit-state">{payload}</script>
<script type="text/plain" id="hopaudit-esm">{esm}</script>
<script type="module">
const root = document.getElementById("hopaudit-root");
const theme = document.getElementById("hopaudit-theme");
theme.addEventListener("change", () => {{
  if (theme.value) document.body.setAttribute("data-theme", theme.value);
  else document.body.removeAttribute("data-theme");
}});
try {{
  const src = document.getElementById("hopaudit-esm").textContent;
  const url = URL.createObjectURL(new Blob([src], {{ type: "text/javascript" }}));
  const mod = await import(url);
  URL.revokeObjectURL(url);
  const state = mod.unpackReport(document.getElementById("hopaudit-state").textContent);
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
}} catch (err) {{
  const box = document.createElement("pre");
  box.className = "page-error";
  box.textContent = "This report could not be drawn: " + err;
  root.append(box);
  console.error(err);
}}
</script>
</body>
</html>
"""


def _state_of(audit_or_state: Any) -> dict[str, Any]:
    from .comparison import state_of as multi_state_of

    multi = multi_state_of(audit_or_state)  # a Comparison, a Timeline or their widgets
    if multi is not None:
        return multi
    if isinstance(audit_or_state, dict):
        return audit_or_state
    if hasattr(audit_or_state, "summary") and hasattr(audit_or_state, "layers"):
        return widget_state(audit_or_state)
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


def render_html(audit_or_state: Any) -> str:
    """The report page as a string (see :func:`to_html`)."""
    state = _state_of(audit_or_state)
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
        css=css.replace("</style", "<\\/style"),
        payload=encode_state(state),
        # Inside a <script> element only "</script" can end it early; "<\/" means "</" in JS.
        esm=esm.replace("</script", "<\\/script"),
    )


def to_html(audit_or_state: Any, path: str | Path) -> Path:
    """Write one self-contained HTML report of an audit (or a ``widget_state`` dict) to
    ``path`` and return the path. It needs no network and no server: open it in any browser."""
    path = Path(path)
    text = render_html(audit_or_state)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
