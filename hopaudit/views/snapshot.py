"""Outputs that outlive the kernel: a static HTML snapshot and a plain-text rendering of a view.

Both are pure functions of ``widget_state()`` (docs/architecture.md, "The view protocol"), put
in the notebook output beside the widget view (:meth:`hopaudit.view.View._repr_mimebundle_`), so
whatever shows a notebook without a kernel (nbconvert HTML, GitHub's preview, VS Code, an
untrusted notebook in JupyterLab) shows the result: the summary, each layer's radius r̂ against
r* (with its interval when the state has ``r_hat_lo``/``r_hat_hi``) as an inline SVG, and the
most memorized sequences. No script, no external resource, inline styles only (sanitizers drop
``<style>`` elements), at most about :data:`MAX_BYTES`.
"""

from __future__ import annotations

import base64
import html
import math
import textwrap
from typing import Any

import numpy as np

from hopaudit.theory import floor_words
from hopaudit.views.schema import is_array, unpack

#: The snapshot's budget: well under what notebook viewers inline (GitHub stops near 1 MB).
MAX_BYTES = 150_000
SAMPLE_ROWS = 20  # sequences in the snapshot's table
TEXT_CHARS = 200  # characters of each sequence's text in the HTML table
PLAIN_ROWS = 5  # sequences in the plain text
_FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:13px"
_CELL = "padding:2px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top"
_NUM = _CELL.replace("text-align:left", "text-align:right") + ";font-variant-numeric:tabular-nums"
#: The samples table's columns before ``sample_columns`` existed (states saved earlier).
OLD_SAMPLE_COLUMNS = ("cross_entropy", "min_k", "top1", "distance_ratio", "basin")
#: Headers of the sample columns (widget.SAMPLE_COLUMNS has their order and directions).
SAMPLE_LABELS = {
    "extracted_tokens": "extracted",
    "loss": "loss",
    "cross_entropy": "cross-entropy",
    "zlib": "zlib",
    "min_k": "Min-K%",
    "min_k_pp": "Min-K%++",
    "ref_loss_diff": "ref − model",
    "distance_ratio": "nn / r̂",
    "top1": "top-1",
}


def _num(x: Any, digits: int = 4) -> str:
    if x is None or isinstance(x, bool):
        return "–" if x is None else ("yes" if x else "no")
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "–"
    if v == int(v) and abs(v) < 1e15 and isinstance(x, (int, np.integer)):
        return f"{int(v):,}"
    return f"{v:.{digits}g}"


def _arr(state: dict[str, Any], key: str) -> np.ndarray | None:
    value = state.get(key)
    return unpack(value) if is_array(value) else None


# ------------------------------------------------------------------------------ reading
def layer_rows(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-layer numbers of an audit state, one dict per layer (NaN for missing)."""
    stats = _arr(state, "layer_stats")
    columns = state.get("layer_columns") or []
    info = state.get("layer_info") or [{"name": n} for n in state.get("layer_names") or []]
    rows = []
    for i, meta in enumerate(info):
        row = {"name": str(meta.get("name")), "skipped_reason": meta.get("skipped_reason")}
        if stats is not None and i < len(stats):
            row.update({c: float(stats[i, j]) for j, c in enumerate(columns)})
        rows.append(row)
    return rows


def sample_rows(state: dict[str, Any], limit: int) -> tuple[str, list[dict[str, Any]]]:
    """The most memorized sequences as the samples panel ranks them by default: by the first
    score of ``widget.SAMPLE_COLUMNS`` the state has values of (extraction, then the loss,
    ...; nn / r̂ for an encoder without a loss). Returns the column ranked on and up to
    ``limit`` rows (sequence id, every column, the text)."""
    from hopaudit.views.widget import SAMPLE_COLUMNS

    seq = _arr(state, "sample_seq")
    values = _arr(state, "sample_values")
    columns = list(state.get("sample_columns") or OLD_SAMPLE_COLUMNS)
    if seq is None or values is None or not len(seq):
        return columns[0] if columns else "", []
    values = np.asarray(values, dtype=np.float64).reshape(len(seq), -1)
    ranked = [
        c
        for c in SAMPLE_COLUMNS
        if c in columns and SAMPLE_COLUMNS[c] and np.isfinite(values[:, columns.index(c)]).any()
    ]
    key = ranked[0] if ranked else columns[0]
    direction = SAMPLE_COLUMNS.get(key) or 1
    v = values[:, columns.index(key)]
    order = np.argsort(np.where(np.isfinite(v), -direction * v, np.inf), kind="stable")
    ids = _arr(state, "sequence_ids")
    text_bytes = _arr(state, "text_bytes")
    offsets = _arr(state, "text_offsets")
    blob = b"" if text_bytes is None else np.asarray(text_bytes, dtype=np.uint8).tobytes()
    rows = []
    for i in order[:limit]:
        s = int(seq[i])
        text = ""
        if offsets is not None and s + 1 < len(offsets):
            text = blob[int(offsets[s]) : int(offsets[s + 1])].decode("utf-8", "replace")
        row = {"sequence": int(ids[s]) if ids is not None and len(ids) > s else s, "text": text}
        row.update({c: float(values[i, j]) for j, c in enumerate(columns)})
        rows.append(row)
    return key, rows


# ------------------------------------------------------------------------------ the radii chart
def radii_svg(rows: list[dict[str, Any]], width: int = 640, height: int = 230) -> str:
    """Inline SVG: r̂ of each measured layer (dots, with a bar from r_hat_lo to r_hat_hi when
    present) and r* (open squares), on a log axis when they span more than a factor of 10."""
    pts = [
        (i, r)
        for i, r in enumerate(rows)
        if math.isfinite(r.get("r_hat", math.nan)) and r.get("r_hat", 0) > 0
    ]
    if not pts:
        return '<p style="color:#777">no measured layer: no radii to draw</p>'
    values = []
    for _, r in pts:
        for key in ("r_hat", "r_star", "r_hat_lo", "r_hat_hi"):
            v = r.get(key, math.nan)
            if math.isfinite(v) and v > 0:
                values.append(v)
    lo, hi = min(values), max(values)
    log = hi / lo > 10
    if log:
        lo, hi = lo / 1.3, hi * 1.3
        fy = math.log10
    else:
        pad = 0.08 * (hi - lo or hi)
        lo, hi = max(0.0, lo - pad), hi + pad

        def fy(v: float) -> float:
            return v

    left, right, top, bottom = 56, 12, 14, 40
    span_y = (fy(hi) - fy(lo)) or 1.0
    n = len(rows)

    def x(i: int) -> float:
        return left + (i + 0.5) * (width - left - right) / max(n, 1)

    def y(v: float) -> float:
        return top + (fy(hi) - fy(v)) / span_y * (height - top - bottom)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="radius per layer" '
        f'style="{_FONT};font-size:11px">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" '
        'stroke="#888"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#888"/>',
    ]
    ticks = (
        [10.0**e for e in range(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1)]
        if log
        else list(np.linspace(lo, hi, 5))
    )
    for t in ticks:
        ty = y(t)
        out.append(
            f'<line x1="{left - 4}" y1="{ty:.1f}" x2="{width - right}" y2="{ty:.1f}" '
            'stroke="#eee"/>'
            f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end" fill="#555">'
            f"{_num(t, 3)}</text>"
        )
    step = max(1, math.ceil(n / 16))
    for i in range(0, n, step):
        out.append(
            f'<text x="{x(i):.1f}" y="{height - bottom + 14}" text-anchor="middle" fill="#555">'
            f"{'final' if rows[i]['name'] == 'final' else i}</text>"
        )
    out.append(
        f'<text x="{(left + width - right) / 2:.0f}" y="{height - 6}" text-anchor="middle" '
        f'fill="#333">layer{" (log radius axis)" if log else ""}</text>'
    )
    for i, r in pts:
        cx = x(i)
        lo_i, hi_i = r.get("r_hat_lo", math.nan), r.get("r_hat_hi", math.nan)
        if math.isfinite(lo_i) and math.isfinite(hi_i) and lo_i > 0 and hi_i > 0:
            out.append(
                f'<line class="interval" x1="{cx:.1f}" y1="{y(hi_i):.1f}" x2="{cx:.1f}" '
                f'y2="{y(lo_i):.1f}" stroke="#1f77b4" stroke-width="2"/>'
            )
        rs = r.get("r_star", math.nan)
        if math.isfinite(rs) and rs > 0:
            out.append(
                f'<rect class="r-star" x="{cx - 3.5:.1f}" y="{y(rs) - 3.5:.1f}" width="7" '
                'height="7" fill="none" stroke="#d62728"/>'
            )
        title = html.escape(f"{r['name']}: r̂ = {_num(r['r_hat'])}, r* = {_num(rs)}")
        out.append(
            f'<circle class="r-hat" cx="{cx:.1f}" cy="{y(r["r_hat"]):.1f}" r="3.5" '
            f'fill="#1f77b4"><title>{title}</title></circle>'
        )
    out.append("</svg>")
    return "".join(out)


def radii_img(rows: list[dict[str, Any]], width: int = 640, height: int = 230) -> str:
    """:func:`radii_svg` as an ``<img>`` with a data URI (see the module docstring for why),
    its ``alt`` text naming what it shows in one line."""
    svg = radii_svg(rows, width, height)
    if not svg.startswith("<svg"):
        return svg  # "no measured layer": a sentence, not a chart
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    measured = sum(1 for r in rows if math.isfinite(r.get("r_hat", math.nan)))
    alt = f"chart: radius r̂ and r* of {measured} measured layers"
    return (
        f'<img class="radii" alt="{html.escape(alt)}" width="{width}" height="{height}" '
        f'style="max-width:100%;height:auto" src="data:image/svg+xml;base64,{data}"/>'
    )


# ------------------------------------------------------------------------------ renderings
_HEADLINE = (
    ("n_sequences", "sequences"),
    ("n_tokens", "tokens"),
    ("n_params_blocks", "parameters in blocks"),
    ("cross_entropy", "cross-entropy (nats)"),
    ("floor_low", "loss floor, final layer"),
    ("floor_gauss", "floor, Gaussian form"),
    ("below_floor", "below the floor"),
    ("normalize", "normalize"),
)


def _value(summary: dict[str, Any], key: str) -> str:
    """A summary value as text; floors in words when infinite or astronomically large."""
    v = summary.get(key)
    if key.startswith("floor_") and isinstance(v, (float, int)) and not isinstance(v, bool):
        return floor_words(v)
    return _num(v)


def _summary_table(summary: dict[str, Any]) -> str:
    cells = "".join(
        f'<tr><th style="{_CELL};font-weight:normal;color:#555">{html.escape(label)}</th>'
        f'<td style="{_NUM}">{html.escape(_value(summary, key))}</td></tr>'
        for key, label in _HEADLINE
        if key in summary
    )
    return f'<table class="summary" style="border-collapse:collapse;margin:4px 0">{cells}</table>'


def _samples_table(state: dict[str, Any]) -> str:
    key, rows = sample_rows(state, SAMPLE_ROWS)
    if not rows:
        return ""
    shown = [c for c in rows[0] if c in SAMPLE_LABELS]
    head = ("sequence", *(SAMPLE_LABELS[c] for c in shown), "text")
    body = []
    for r in rows:
        text = r["text"] if len(r["text"]) <= TEXT_CHARS else r["text"][: TEXT_CHARS - 1] + "…"
        body.append(
            f'<tr><td style="{_NUM}">{r["sequence"]}</td>'
            + "".join(f'<td style="{_NUM}">{_num(r[c], 3)}</td>' for c in shown)
            + f'<td style="{_CELL};white-space:pre-wrap">{html.escape(text)}</td></tr>'
        )
    by = f"by {SAMPLE_LABELS.get(key, key)}"
    return (
        f'<h4 style="margin:12px 0 4px">Most memorized sequences ({by}, {len(rows)} of '
        f"{_num(state.get('n_sequences'))})</h4>"
        '<table class="samples" style="border-collapse:collapse">'
        + "<tr>"
        + "".join(f'<th style="{_CELL}">{html.escape(h)}</th>' for h in head)
        + "</tr>"
        + "".join(body)
        + "</table>"
    )


def _member_table(state: dict[str, Any]) -> str:
    """Compare and timeline states: one row per audit (its label or step and summary)."""
    members = state.get("members") or []
    names = state.get("labels") or [f"step {s}" for s in state.get("steps") or []]
    keys = ("model", "n_sequences", "cross_entropy", "floor_low", "below_floor")
    rows = []
    for i, m in enumerate(members):
        s = m.get("summary") or {}
        label = names[i] if i < len(names) else str(i)
        rows.append(
            f'<tr><td style="{_CELL}">{html.escape(str(label))}</td>'
            + "".join(f'<td style="{_NUM}">{html.escape(_value(s, k))}</td>' for k in keys)
            + "</tr>"
        )
    head = "".join(f'<th style="{_CELL}">{k}</th>' for k in ("audit", *keys))
    return f'<table style="border-collapse:collapse"><tr>{head}</tr>{"".join(rows)}</table>'


def title(state: dict[str, Any]) -> str:
    kind = state.get("kind", "audit")
    if kind == "compare":
        return "hopaudit comparison of " + ", ".join(map(str, state.get("labels") or []))
    if kind == "timeline":
        steps = state.get("steps") or []
        return f"hopaudit timeline: {len(steps)} audits" + (
            f", steps {steps[0]}–{steps[-1]}" if steps else ""
        )
    s = state.get("summary") or {}
    return (
        f"hopaudit audit of {s.get('model', 'a model')}: {_num(s.get('n_sequences'))} "
        f"sequences, {len(state.get('layer_names') or [])} layers"
    )


NOTE = "A static snapshot: run the cell with a kernel for the interactive view."
#: Why a snapshot has no "ask about a text" box (the live widget's, answered by the kernel).
ASK_NOTE = "No “ask about a text” box: a query runs the model, so it needs the live widget."


#: In a notebook the snapshot is an output of its own, before the widget's. This rule (JupyterLab
#: and Notebook 7 classes; ignored elsewhere, dropped by sanitizers) hides the snapshot's row
#: while the live view is in the same cell, and the widget's row after a snapshot when the
#: widget renderer marked it ``jupyter-widgets`` (it does so only for its error texts, e.g.
#: "model not found" when a saved notebook is reopened) and holds no live view. CSS forbids
#: ``:has`` inside ``:has``, hence the sibling combinator.
NOTEBOOK_STYLE = (
    "<style>"
    ".jp-OutputArea:has(.hopaudit)>.jp-OutputArea-child:has(.hopaudit-snapshot){display:none}"
    ".jp-OutputArea-child:has(.hopaudit-snapshot)~.jp-OutputArea-child"
    ":has(>.jp-OutputArea-output.jupyter-widgets):not(:has(.hopaudit)){display:none}"
    "</style>"
)


#: How each panel is named in the snapshot's validity lines.
_VALIDITY_PANELS = {
    "distances": "distances",
    "radii": "radii",
    "floor": "floor",
    "basins": "basins",
    "membership": "membership",
}


def _validity_block(state: dict[str, Any]) -> str:
    """What the validity study measured the geometric panels to predict, one line each."""
    v = state.get("validity") or {}
    lines = v.get("lines") or {}
    if not lines:
        return ""
    items = "".join(
        f'<li data-validity="{html.escape(k)}"><b>{label}</b>: {html.escape(str(lines[k]))}</li>'
        for k, label in _VALIDITY_PANELS.items()
        if k in lines
    )
    doc = html.escape(str(v.get("doc") or "docs/validity.md"))
    return (
        '<h4 style="margin:12px 0 4px">What the geometry predicts (validity study)</h4>'
        f'<ul class="validity" style="margin:0;padding-left:18px;font-size:12px">{items}</ul>'
        f'<p style="color:#555;font-size:11px;margin:2px 0">Measured on '
        f"{html.escape(str(v.get('grid') or ''))}: see {doc} in hopaudit's repository.</p>"
    )


def snapshot_html(state: dict[str, Any], *, token: str | None = None) -> str:
    """The static HTML snapshot of a view's state (no script; see the module docstring).
    With ``token`` (the notebook form) the snapshot carries it as ``data-hopaudit-snapshot``,
    so the live widget that has the same token hides it, and :data:`NOTEBOOK_STYLE`."""
    mark = "" if token is None else f' data-hopaudit-snapshot="{html.escape(token)}"'
    parts = [
        f'<div class="hopaudit-snapshot"{mark} style="{_FONT};max-width:900px;color:#222">',
        f'<h3 style="margin:4px 0">{html.escape(title(state))}</h3>',
    ]
    if token is not None:
        parts.insert(0, NOTEBOOK_STYLE)
    if state.get("kind", "audit") == "audit":
        parts.append(_summary_table(state.get("summary") or {}))
        parts.append('<h4 style="margin:12px 0 4px">Radius per layer: r̂ (dots) and r* (squares)')
        parts.append("</h4>" + radii_img(layer_rows(state)))
        parts.append(_validity_block(state))
        parts.append(_samples_table(state))
        parts.append(f'<p style="color:#777;font-size:11px">{html.escape(ASK_NOTE)}</p>')
    else:
        parts.append(_member_table(state))
    parts.append(f'<p style="color:#777;font-size:11px">{NOTE}</p></div>')
    out = "".join(parts)
    if len(out.encode("utf-8")) > MAX_BYTES:  # long texts: drop the table's texts, then it
        out = out.replace(_samples_table(state), "")
    return out


def snapshot_text(state: dict[str, Any]) -> str:
    """A readable plain-text rendering of a view's state: title, summary, per-layer radii,
    the most memorized sequences."""
    lines = [title(state)]
    if state.get("kind", "audit") != "audit":
        for i, m in enumerate(state.get("members") or []):
            s = m.get("summary") or {}
            lines.append(
                f"  {i}: {s.get('model')}  cross-entropy {_num(s.get('cross_entropy'))}  "
                f"floor {_value(s, 'floor_low')}"
            )
        return "\n".join([*lines, NOTE])
    s = state.get("summary") or {}
    lines.append(
        "  ".join(f"{label}: {_num(s.get(key))}" for key, label in _HEADLINE[:4] if key in s)
    )
    lines.append(
        f"loss floor (final layer): {_value(s, 'floor_low')}; below it: "
        f"{_num(s.get('below_floor'))}"
    )
    lines.append(f"{'layer':<24} {'r_hat':>10} {'r_star':>10} {'r_ratio':>9} {'separated':>9}")
    for r in layer_rows(state):
        if r.get("skipped_reason"):
            lines.append(f"{r['name'][:24]:<24} skipped: {r['skipped_reason']}")
            continue
        lines.append(
            f"{r['name'][:24]:<24} {_num(r.get('r_hat')):>10} {_num(r.get('r_star')):>10} "
            f"{_num(r.get('r_ratio'), 3):>9} {_num(r.get('separated_frac'), 3):>9}"
        )
    validity = (state.get("validity") or {}).get("lines") or {}
    if validity:
        lines.append("what the geometry predicts (validity study, docs/validity.md):")
        for k in (k for k in _VALIDITY_PANELS if k in validity):
            lines += textwrap.wrap(f"{k}: {validity[k]}", 98, initial_indent="  ",
                                   subsequent_indent="    ")  # fmt: skip
    key, rows = sample_rows(state, PLAIN_ROWS)
    if rows:
        lines.append(f"most memorized ({key.replace('_', ' ')}):")
        for r in rows:
            text = " ".join(r["text"].split())
            text = text if len(text) <= 70 else text[:69] + "…"
            lines.append(f"  #{r['sequence']:<6} {_num(r[key], 3):>7}  {text}")
    lines.append(ASK_NOTE)
    lines.append(NOTE)
    return "\n".join(lines)
