"""The anywidget views, and the packing of an audit into the state they draw.

``widget_state(audit)`` is a pure function from an :class:`~hopaudit.result.Audit` (or anything
with the same attributes) to the widget's traits: small scalars as JSON, every array packed by
:func:`hopaudit.schema.pack` as ``{dtype, shape, view}`` (anywidget sends the view as a binary
buffer; the front end reads dtype and shape from the array itself). Histograms are binned here,
scatter coordinates quantized to uint16, ratios to uint8, per-sequence numbers to float16, and
the loss-floor curves computed here (docs/theory.md §3), so a view of 80 000 points stays a few
hundred KB and the front end holds no formula of the theory.

What each array means is in ``STATE_LAYOUT``; its dtype and shape travel with it.
"""

from __future__ import annotations

import json
import math
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import anywidget
import numpy as np
import pandas as pd
import traitlets

from hopaudit.errors import DataError
from hopaudit.jsonable import json_safe
from hopaudit.layer.measuring import ROW_COLUMNS
from hopaudit.theory import log_ball_volume, loss_floor
from hopaudit.views.schema import pack, unpack
from hopaudit.views.validity import validity_state

STATIC = Path(__file__).parent.parent / "static"
ESM_PATH = STATIC / "widget.js"
CSS_PATH = STATIC / "widget.css"
MISSING_BUNDLE = "the front end was not built: reinstall with pip install -e . (needs npm)"

#: Fractions of the stored patterns whose nearest-pattern distances the distance panel shows.
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
#: Per-layer numbers the view draws beyond the layer table: the interquartile band of the
#: nearest-pattern distances (and of r_hat, their half), and F at r_star.
VIEW_ONLY_COLUMNS = ("nn_q25", "nn_q75", "r_hat_q25", "r_hat_q75", "floor_r_star")
#: Per-layer numbers sent to the view (float64 columns of ``layer_stats``, in this order):
#: the stable id, every numeric column of the layer table (its bootstrap intervals among them,
#: NaN where the audit made none), and VIEW_ONLY_COLUMNS.
LAYER_STAT_COLUMNS = (
    "layer",
    *(c for c in ROW_COLUMNS if c != "normalize"),
    *VIEW_ONLY_COLUMNS,
)
#: Histogram bins become geometric (log axis) when the range spans more than this factor.
LOG_BINS_ABOVE = 30.0
SAMPLE_ROWS = 100  # sequences kept per ranking score (the most memorized by each)
#: The per-sequence columns the samples panel shows, in order, where the audit has them, with
#: the direction that means "more memorized" (+1: higher, -1: lower; 0: shown, not ranked).
#: The membership scores are oriented higher = memorized (docs/theory.md §6).
SAMPLE_COLUMNS = {
    "extracted_tokens": 1,
    "loss": 1,
    "cross_entropy": -1,  # left out where ``loss`` (its negation) is there
    "zlib": 1,
    "min_k": 1,
    "min_k_pp": 1,
    "ref_loss_diff": 1,
    "distance_ratio": -1,
    "top1": 0,
    "basin": 0,
}
#: Points of each ROC curve sent to the membership panel (an even grid of false-positive rates).
ROC_POINTS = 101
#: Points of each layer's loss-floor curve: spread evenly on a log axis over the panel's range,
#: and again where F is in view. F(r) = n log(r / r_c) + (r / r_c)^-n is below FLOOR_IN_VIEW
#: nats only within a few 1/n of r_c, which an even grid over the range would step over.
FLOOR_STEPS = 120
FLOOR_STEPS_IN_VIEW = 80
FLOOR_IN_VIEW = 64.0
#: The floor curve spans [min, max] of r_hat, r_star and r_c, widened by this factor each way.
FLOOR_MARGIN = 1.6

#: What each packed array of an audit's state holds (dtype and shape travel with the array).
STATE_LAYOUT = {
    "layer_stats": "(n_layers, len(layer_columns)) per-layer numbers; NaN = missing",
    "hist_range": "(n_layers, 2): [lo, hi] of the shared bin edges of a layer",
    "hist_log": "(n_layers): 1 = geometric edges (log axis), 0 = linear edges",
    "hist_counts": "(n_layers, len(hist_fractions), hist_bins) counts",
    "hist_medians": "(n_layers, len(hist_fractions)): median distance per fraction",
    "floor_curve": "(n_layers, FLOOR_STEPS + FLOOR_STEPS_IN_VIEW, 2): (r, F) pairs, r increasing, "
    "F = log Z + 1/Z of the volume form; NaN rows for a layer without a curve",
    "scatter_xy": "(sum m, 2): x, y quantized on [x0, x1], [y0, y1] of the layer's meta",
    "scatter_basin": "(sum m): basin rank by size within the layer (0 = largest)",
    "scatter_ratio": "(sum m): nn / r_hat quantized on [ratio_lo, ratio_hi]; 255 = NaN",
    "scatter_seq": "(sum of distinct sequence arrays): the sequence of each point",
    "scatter_basin_sizes": "(2 runs): basin sizes by rank as (size, run) pairs, per layer at "
    "basin_offset (basin_runs pairs)",
    "seq_ce": "(n_sequences): mean token cross-entropy; NaN = none",
    "text_bytes": "UTF-8 of every shown sequence's text (truncated to text_chars)",
    "text_offsets": "(n_sequences + 1): byte offsets into text_bytes",
    "sample_seq": "(k): sequences of the samples table",
    "sample_values": "(k, len(sample_columns)): the samples table's values (SAMPLE_COLUMNS)",
    "roc_points": "(sum of roc_n, 2): (false-positive rate, true-positive rate) of the ROC curves "
    "of the membership rows (ROC_POINTS each, at their roc_offset)",
    "sequence_ids": "(n_sequences) display ids, or empty when they are 0..n-1",
}


class LayerLike(Protocol):
    """What the view reads of a layer's report (:class:`~hopaudit.measure.LayerReport`)."""

    n_patterns: int
    nn: np.ndarray
    r_hat: float
    r_star: float
    basin_sizes: np.ndarray
    saturation_nn: Mapping[float, np.ndarray]


class EmbeddingLike(Protocol):
    """What the view reads of a layout (:class:`~hopaudit.result.Embedding`)."""

    xy: np.ndarray
    sequence: np.ndarray
    basin: np.ndarray
    ratio: np.ndarray


class AuditLike(Protocol):
    """What :func:`widget_state` reads of an audit: an :class:`~hopaudit.result.Audit`, or
    anything with the same attributes (the tests' fakes, a timeline's aligned copies)."""

    @property
    def layers(self) -> pd.DataFrame: ...
    @property
    def samples(self) -> pd.DataFrame: ...

    reports: Mapping[str, LayerLike]
    embeddings: Mapping[str, EmbeddingLike]

    def summary(self) -> dict[str, Any]: ...


def _f(x: Any) -> float | None:
    """A JSON-safe float: None for None, NaN or inf."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _text_or_none(v: Any) -> str | None:
    """A table cell as text; None for a missing one (None or NaN)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return str(v)


def _finite(a: Any) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def quantize(v: np.ndarray, lo: float, hi: float, levels: int) -> np.ndarray:
    """Round ``v`` on [lo, hi] to integers 0..levels-1 (NaN handled by the caller)."""
    span = hi - lo if hi > lo else 1.0
    q = np.rint((np.clip(v, lo, hi) - lo) / span * (levels - 1))
    return np.nan_to_num(q, nan=0).astype(np.int64)


def _layer_distances(report: LayerLike) -> dict[float, np.ndarray]:
    """Per-fraction nearest-pattern distances of one layer (fraction 1.0 = all patterns)."""
    out: dict[float, np.ndarray] = {}
    sat = getattr(report, "saturation_nn", None) or {}
    for frac in FRACTIONS:
        for key, arr in sat.items():
            if abs(float(key) - frac) < 1e-9:
                out[frac] = _finite(arr)
    if 1.0 not in out:
        out[1.0] = _finite(report.nn)
    return out


def _histograms(audit: AuditLike, names: list[str], bins: int) -> dict[str, Any]:
    n_layers, n_frac = len(names), len(FRACTIONS)
    counts = np.zeros((n_layers, n_frac, bins), dtype=np.uint32)
    ranges = np.full((n_layers, 2), np.nan)
    medians = np.full((n_layers, n_frac), np.nan)
    scale = np.zeros(n_layers, dtype=np.uint8)
    for i, name in enumerate(names):
        rep = audit.reports.get(name)
        if rep is None:
            continue
        dists = _layer_distances(rep)
        values = [d for d in dists.values() if d.size]
        if not values:
            continue
        lo = min(float(d.min()) for d in values)
        hi = max(float(d.max()) for d in values)
        # The view draws 2 r_star and 2 r_hat on the same axis: keep them inside the range.
        for extra in (2 * (_f(getattr(rep, "r_star", None)) or lo), 2 * (_f(rep.r_hat) or lo)):
            lo, hi = min(lo, extra), max(hi, extra)
        positive = [float(d[d > 0].min()) for d in values if (d > 0).any()]
        if positive and hi / max(min(positive), 1e-300) > LOG_BINS_ABOVE:
            # Distances and 2 r_star orders of magnitude apart: geometric bins, log axis
            # (zero distances, exact duplicates, are counted in the first bin).
            lo = min(positive) / 1.05
            hi = hi * 1.05
            scale[i] = 1
            edges = np.geomspace(lo, hi, bins + 1)
        else:
            lo = max(0.0, lo - 0.02 * (hi - lo))
            hi = hi + 0.02 * (hi - lo) if hi > lo else lo + 1.0
            edges = np.linspace(lo, hi, bins + 1)
        ranges[i] = (lo, hi)
        for j, frac in enumerate(FRACTIONS):
            d = dists.get(frac)
            if d is None or not d.size:
                continue
            counts[i, j] = np.histogram(np.clip(d, lo, hi), bins=edges)[0]
            medians[i, j] = float(np.median(d))
    return {
        "hist_fractions": list(FRACTIONS),
        "hist_bins": int(bins),
        "hist_range": pack(ranges, "float64"),
        "hist_counts": pack(counts, "uint32"),
        "hist_medians": pack(medians, "float64"),
        "hist_log": pack(scale, "uint8"),
    }


def _floor_at(n: Any, d: Any, r: Any) -> float:
    """F = log Z + 1/Z of the volume form, Z = d V_n(r) (docs/theory.md §3); NaN when any of
    n, d, r is missing or not positive."""
    n, d, r = (_f(v) for v in (n, d, r))
    if not (n and d and r and n > 0 and d > 0 and r > 0):
        return math.nan
    return float(loss_floor(math.log(d) + log_ball_volume(n, r)))


def _floor_curves(stats: np.ndarray) -> dict[str, Any]:
    """Each layer's floor curve, (r, F) pairs over [min, max] of r_hat, r_star and r_c widened
    by FLOOR_MARGIN, dense near r_c where F is in view, so the floor panels draw it without
    the theory's maths (docs/theory.md §3)."""
    col = {c: j for j, c in enumerate(LAYER_STAT_COLUMNS)}
    steps = FLOOR_STEPS + FLOOR_STEPS_IN_VIEW
    curves = np.full((len(stats), steps, 2), np.nan)
    for i, row in enumerate(stats):
        n, d, r_c = row[col["n"]], row[col["n_patterns"]], row[col["r_c"]]
        marks = row[[col["r_hat"], col["r_star"], col["r_c"]]]
        marks = marks[np.isfinite(marks) & (marks > 0)]
        if not (n > 0 and d > 0 and marks.size):
            continue
        lo, hi = marks.min() / FLOOR_MARGIN, marks.max() * FLOOR_MARGIN
        r = np.geomspace(lo, hi, FLOOR_STEPS)
        if np.isfinite(r_c) and r_c > 0:
            # log(r / r_c) from where (r / r_c)^-n reaches FLOOR_IN_VIEW to where n log(r / r_c)
            # does, with a margin: the part of the curve a panel shows.
            a, b = -1.5 * math.log(FLOOR_IN_VIEW) / n, 1.5 * FLOOR_IN_VIEW / n
            near = r_c * np.exp(np.linspace(a, b, FLOOR_STEPS_IN_VIEW))
            r = np.sort(np.concatenate([r, np.clip(near, lo, hi)]))
        else:
            r = np.geomspace(lo, hi, steps)
        with np.errstate(over="ignore"):
            curves[i, :, 0] = r
            curves[i, :, 1] = loss_floor(np.log(d) + log_ball_volume(n, r))
    # Beyond float32's range the floor is drawn off the chart anyway: send it as +inf.
    curves[np.abs(curves) > np.finfo(np.float32).max] = np.inf
    return {"floor_curve": pack(curves, "float32")}


def _layer_table(audit: AuditLike, names: list[str]) -> dict[str, Any]:
    table = audit.layers
    stats = np.full((len(names), len(LAYER_STAT_COLUMNS)), np.nan)
    info = []
    for i, name in enumerate(names):
        row = table.iloc[i]
        rep = audit.reports.get(name)
        q = {}
        if rep is not None:
            nn = _finite(rep.nn)
            if nn.size:
                q25, q75 = np.quantile(nn, [0.25, 0.75])
                q = {"nn_q25": q25, "nn_q75": q75, "r_hat_q25": q25 / 2, "r_hat_q75": q75 / 2}
            q["floor_r_star"] = _floor_at(row.get("n"), row.get("n_patterns"), row.get("r_star"))
        for j, col in enumerate(LAYER_STAT_COLUMNS):
            v = q[col] if col in q else row.get(col, np.nan)
            stats[i, j] = _f(v) if _f(v) is not None else np.nan
        reason = row.get("skipped_reason")
        info.append(
            {
                "id": int(row["layer"]),
                "name": str(name),
                "stack": _text_or_none(row.get("stack")),
                "skipped_reason": None
                if reason is None or (isinstance(reason, float) and math.isnan(reason))
                else str(reason),
            }
        )
    return {
        "layer_info": info,
        "layer_columns": list(LAYER_STAT_COLUMNS),
        "layer_stats": pack(stats, "float64"),
        **_floor_curves(stats),
    }


def _scatter(audit: AuditLike, names: list[str], top_basins: int) -> dict[str, Any]:
    meta, xy_parts, basin_parts, ratio_parts, size_parts, seq_parts = [], [], [], [], [], []
    seq_arrays: list[np.ndarray] = []
    seq_offset = basin_offset = point_offset = 0
    for name, emb in audit.embeddings.items():
        xy = np.asarray(emb.xy, dtype=np.float64).reshape(-1, 2)
        m = len(xy)
        ok = np.isfinite(xy).all(axis=1)
        if not ok.any():
            continue
        x0, y0 = xy[ok].min(axis=0)
        x1, y1 = xy[ok].max(axis=0)
        qx = quantize(xy[:, 0], x0, x1, 65536)
        qy = quantize(xy[:, 1], y0, y1, 65536)
        xy_parts.append(np.stack([qx, qy], axis=1).astype(np.uint16))

        # Basins ranked by size (how many queries of the layer fall in each; ties by id).
        basin = np.asarray(emb.basin, dtype=np.int64).ravel()
        ids, inverse, counts = np.unique(basin, return_inverse=True, return_counts=True)
        rep = audit.reports.get(name)
        sizes_src = getattr(rep, "basin_sizes", None) if rep is not None else None
        if sizes_src is not None:
            sizes_src = np.asarray(sizes_src).ravel()
            if ids.size and ids.min() >= 0 and ids.max() < sizes_src.size:
                counts = sizes_src[ids]
        order = np.lexsort((ids, -counts))
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        basin_parts.append(np.minimum(rank[inverse], 65535).astype(np.uint16))
        sizes = counts[order][:65536]
        # Sizes by rank never increase: send them run-length encoded as (size, run) pairs.
        starts = np.flatnonzero(np.r_[True, sizes[1:] != sizes[:-1]])
        runs = np.diff(np.r_[starts, sizes.size])
        size_parts.append(np.stack([sizes[starts], runs], axis=1).astype(np.uint32).ravel())

        ratio = np.asarray(emb.ratio, dtype=np.float64).ravel()
        fr = ratio[np.isfinite(ratio)]
        r_lo, r_hi = (float(fr.min()), float(fr.max())) if fr.size else (0.0, 1.0)
        qr = quantize(ratio, r_lo, r_hi, 255)
        qr[~np.isfinite(ratio)] = 255
        ratio_parts.append(qr.astype(np.uint8))

        seq = np.asarray(emb.sequence, dtype=np.int64).ravel()
        ref = next((k for k, s in enumerate(seq_arrays) if np.array_equal(s, seq)), None)
        if ref is None:
            seq_arrays.append(seq)
            ref = len(seq_arrays) - 1
            seq_parts.append((seq_offset, seq))
            seq_offset += m
        meta.append(
            {
                "name": str(name),
                "n": m,
                "n_total": int(getattr(emb, "n_total", 0) or m),
                "offset": point_offset,
                "x0": float(x0),
                "x1": float(x1),
                "y0": float(y0),
                "y1": float(y1),
                "ratio_lo": r_lo,
                "ratio_hi": r_hi,
                "seq_offset": next(o for o, s in seq_parts if s is seq_arrays[ref]),
                "basin_offset": basin_offset,
                "basin_runs": int(starts.size),
                "n_basins": int(sizes.size),
                "top_basins": int(min(top_basins, sizes.size)),
            }
        )
        basin_offset += 2 * int(starts.size)
        point_offset += m

    top_seq = max((int(s.max()) for _, s in seq_parts if s.size), default=0)
    seq_dtype = "uint16" if top_seq < 65536 else "uint32"

    def cat(parts: list[np.ndarray], dtype: str) -> dict[str, Any]:
        return pack(np.concatenate(parts) if parts else np.zeros(0), dtype)

    return {
        "scatter_layers": meta,
        "scatter_xy": cat(xy_parts, "uint16"),
        "scatter_basin": cat(basin_parts, "uint16"),
        "scatter_ratio": cat(ratio_parts, "uint8"),
        "scatter_basin_sizes": cat(size_parts, "uint32"),
        "scatter_seq": cat([s for _, s in seq_parts], seq_dtype),
    }


def _samples(audit: AuditLike, shown: np.ndarray, text_chars: int) -> dict[str, Any]:
    df = audit.samples
    n = len(df)
    columns = [c for c in SAMPLE_COLUMNS if c in df.columns]
    if "loss" in columns:
        columns.remove("cross_entropy")
    table = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64) for c in columns}
    columns = [c for c in columns if np.isfinite(table[c]).any()]
    keep: set[int] = set()
    for c in columns:
        if SAMPLE_COLUMNS[c] == 0:
            continue
        key = table[c]
        ok = np.flatnonzero(np.isfinite(key))
        order = np.argsort(-SAMPLE_COLUMNS[c] * key[ok], kind="stable")
        keep.update(ok[order][:SAMPLE_ROWS].tolist())
    if not keep:  # no score at all (an encoder without loss): show the first sequences
        keep = set(range(min(n, SAMPLE_ROWS)))
    rows = np.array(sorted(keep), dtype=np.int64)
    values = (
        np.column_stack([table[c][rows] for c in columns]) if columns else np.zeros((len(rows), 0))
    )
    ce = df["cross_entropy"].to_numpy(dtype=np.float64)
    seq_ids = df["sequence"].to_numpy(dtype=np.int64)
    need = np.zeros(n, dtype=bool)
    need[rows] = True
    shown = shown[(shown >= 0) & (shown < n)]
    need[shown] = True
    texts = df["text"].tolist()
    chunks, offsets, pos = [], [0], 0
    for i in range(n):
        if need[i]:
            t = str(texts[i])
            if len(t) > text_chars:
                t = t[: text_chars - 1] + "…" if text_chars > 0 else ""
            b = t.encode("utf-8")
            chunks.append(b)
            pos += len(b)
        offsets.append(pos)
    return {
        "n_sequences": int(n),
        "sequence_ids": pack([] if np.array_equal(seq_ids, np.arange(n)) else seq_ids, "uint32"),
        "seq_ce": pack(ce, "float16"),
        "text_bytes": pack(np.frombuffer(b"".join(chunks), np.uint8), "uint8"),
        "text_offsets": pack(np.array(offsets), "uint32"),
        "text_chars": int(text_chars),
        "sample_seq": pack(rows, "uint32"),
        "sample_columns": columns,
        "sample_values": pack(values, "float32"),
    }


def roc_on_grid(fpr: Any, tpr: Any, points: int = ROC_POINTS) -> np.ndarray:
    """An ROC curve as the true-positive rate at ``points`` evenly spaced false-positive rates
    in [0, 1]: at each, the highest rate the curve reaches at or below it (the step the
    threshold gives); (points, 2) of (fpr, tpr)."""
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    grid = np.linspace(0.0, 1.0, points)
    at = np.searchsorted(fpr, grid, side="right") - 1
    out = np.where(at >= 0, np.maximum.accumulate(tpr)[np.maximum(at, 0)], 0.0)
    return np.column_stack([grid, out])


def _membership(audit: AuditLike) -> dict[str, Any]:
    """The membership panel's rows (one per score, and per layer for the geometric score) and
    ROC curves: of every per-sequence score, and of the geometric score at the last layer."""
    table = getattr(audit, "membership", None)
    empty = {"membership": [], "roc_points": pack(np.zeros((0, 2)), "float32")}
    if not isinstance(table, pd.DataFrame):
        return {**empty, "membership_note": "this audit has no membership evaluation"}
    if table.empty:
        reason = table.attrs.get("reason") or "no membership evaluation"
        return {**empty, "membership_note": str(reason)}
    roc_curves = getattr(audit, "roc_curves", None)
    curves = roc_curves() if callable(roc_curves) else {}
    geometric = table[table["score"] == "geometric"]
    last = None if geometric.empty else geometric["layer"].iloc[-1]
    rows, parts, offset = [], [], 0
    for r in table.to_dict("records"):
        layer = r.get("layer")
        layer = None if layer is None or (isinstance(layer, float) and math.isnan(layer)) else layer
        entry: dict[str, Any] = {"score": str(r["score"]), "layer": json_safe(layer)}
        for c in ("auroc", "auroc_lo", "auroc_hi", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr"):
            entry[c] = _f(r.get(c))
        for c in ("n_members", "n_nonmembers"):
            entry[c] = int(r[c]) if _f(r.get(c)) is not None else None
        key = (r["score"], layer if r["score"] == "geometric" else None)
        if key in curves and (r["score"] != "geometric" or layer == last):
            parts.append(roc_on_grid(*curves[key]))
            entry["roc_offset"], entry["roc_n"] = offset, ROC_POINTS
            offset += ROC_POINTS
        rows.append(entry)
    points = np.concatenate(parts) if parts else np.zeros((0, 2))
    return {"membership": rows, "roc_points": pack(points, "float32"), "membership_note": None}


def _summary(audit: AuditLike) -> dict[str, Any]:
    return {str(k): json_safe(v) for k, v in audit.summary().items()}


#: What each view option may be, checked before anything is allocated: (least, most).
OPTION_RANGES = {"bins": (2, 1000), "top_basins": (0, 64), "text_chars": (0, 100_000)}


def _check_options(**options: Any) -> None:
    """Each option an integer inside :data:`OPTION_RANGES` (a DataError naming it otherwise:
    ``bins=10**9`` would allocate gigabytes, ``bins="60"`` fail deep inside numpy)."""
    for name, value in options.items():
        low, high = OPTION_RANGES[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise DataError(f"{name} must be an integer from {low} to {high}, got {value!r}")
        if not low <= value <= high:
            raise DataError(f"{name} must be from {low} to {high}, got {value}")


def widget_state(
    audit: AuditLike, *, bins: int = 60, top_basins: int = 10, text_chars: int = 240
) -> dict[str, Any]:
    """Pack an audit into the widget's traits: JSON scalars and little-endian ``bytes`` arrays.

    ``bins`` histogram bins per layer (shared by the four saturation fractions), ``top_basins``
    the basins drawn in distinct colours, ``text_chars`` the longest text kept per sequence.
    """
    _check_options(bins=bins, top_basins=top_basins, text_chars=text_chars)
    names = [str(n) for n in audit.layers["name"].tolist()]
    state: dict[str, Any] = {"kind": "audit", "summary": _summary(audit), "layer_names": names}
    state.update(_layer_table(audit, names))
    state.update(_histograms(audit, names, bins))
    state.update(_scatter(audit, names, top_basins))
    shown = decode(state, "scatter_seq").astype(np.int64)
    state.update(_samples(audit, shown, text_chars))
    state.update(_membership(audit))
    from hopaudit.results.metadata import (
        metadata_state,  # audit(metadata=...): colours of the basins view
    )

    state.update(metadata_state(getattr(audit, "metadata", None)))
    # what the validity study measured each geometric panel to predict (docs/validity.md)
    state["validity"] = validity_state()
    return state


#: The custom message the view sends for its "ask about a text" box, and the reply's type.
QUERY_MESSAGE = "hopaudit.query"
QUERY_REPLY = "hopaudit.query_result"
#: Characters of a neighbour's text the card shows.
CARD_TEXT_CHARS = 200


def query_message(audit: Any, content: dict[str, Any]) -> dict[str, Any]:
    """The reply to one "ask about a text" message: the card's data (:func:`query_card`) or
    ``{"error": message}`` for a user error (named by the HopauditError), never a traceback."""
    from hopaudit.errors import HopauditError

    reply: dict[str, Any] = {"type": QUERY_REPLY, "id": content.get("id")}
    text = content.get("text")
    k = content.get("k", 5)
    try:
        if not isinstance(text, str):
            raise HopauditError("the box sent no text")
        result = audit.query([text], k=int(k) if isinstance(k, (int, float)) else k)
    except HopauditError as exc:
        reply["error"] = str(exc)
        return reply
    reply.update(query_card(audit, result))
    return reply


def query_card(audit: Any, result: Any) -> dict[str, Any]:
    """One queried text as the card shows it (JSON): its scores, each with the AUROC of that
    score in the audit's membership beside it; its extraction; its nearest stored sequences
    per layer; its places on the UMAP layouts; the notes."""
    row = result.scores.iloc[0].to_dict()
    table = getattr(audit, "membership", None)
    aurocs: dict[str, Any] = {}
    if isinstance(table, pd.DataFrame) and not table.empty:
        for r in table[table["score"] != "geometric"].to_dict("records"):
            aurocs[str(r["score"])] = {
                "auroc": _f(r.get("auroc")),
                "lo": _f(r.get("auroc_lo")),
                "hi": _f(r.get("auroc_hi")),
            }
    scores = [
        {"score": s, "value": _f(row.get(s)), **aurocs.get(s, {})}
        for s in ("loss", "zlib", "min_k", "min_k_pp", "ref_loss_diff")
        if s in row
    ]
    extraction = dict(result.extraction)
    for c in ("extracted", "extracted_tokens", "compared_tokens"):
        if c in row:
            extraction[c] = json_safe(row[c])
    nearest = []
    for r in result.nearest.to_dict("records"):
        text = str(r["text"])
        nearest.append(
            {
                "layer": int(r["layer"]),
                "name": str(r["name"]),
                "rank": int(r["rank"]),
                "sequence": int(r["sequence"]),
                "text": text if len(text) <= CARD_TEXT_CHARS else text[: CARD_TEXT_CHARS - 1] + "…",
                "distance": _f(r["distance"]),
                "ratio": _f(r["distance_over_r_hat"]),
                "inside": bool(r["inside_ball"]),
            }
        )
    places = [
        {"name": str(r["name"]), "x": _f(r["x"]), "y": _f(r["y"])}
        for r in result.placements.to_dict("records")
    ]
    return {
        "text": str(row.get("text", "")),
        "n_tokens": int(row.get("n_tokens", 0)),
        "scores": scores,
        "extraction": json_safe(extraction),
        "nearest": nearest,
        "places": places,
        "notes": [str(n) for n in result.notes],
        "seconds": _f(result.seconds.get("total")),
    }


def decode(state: dict[str, Any], key: str) -> np.ndarray:
    """Read one packed array of a state back (for tests and notebooks)."""
    return unpack(state[key])


def basin_sizes(state: dict[str, Any], layer: int) -> np.ndarray:
    """The basin sizes by rank of scatter layer ``layer`` (expands the run-length pairs)."""
    meta = state["scatter_layers"][layer]
    pairs = decode(state, "scatter_basin_sizes")
    pairs = pairs[meta["basin_offset"] : meta["basin_offset"] + 2 * meta["basin_runs"]]
    return np.repeat(pairs[0::2], pairs[1::2])


def read_static(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(MISSING_BUNDLE + f" ({path} is missing)")
    return path.read_text(encoding="utf-8")


def _array() -> Any:
    """A trait holding one packed array (:mod:`hopaudit.schema`)."""
    return traitlets.Dict().tag(sync=True)


# The hopaudit views share one bundle; ``js/src/index.ts`` dispatches on the ``kind`` trait.
# anywidget reads (and, with ANYWIDGET_HMR=1, watches) the files these paths name.
_BUILT = ESM_PATH.is_file()


class _View(anywidget.AnyWidget):
    """The base of the three views. ``widget_state()`` gives the state back (what
    :func:`hopaudit.report.to_html` writes): a widget is a :class:`~hopaudit.view.Viewable`."""

    _esm = ESM_PATH if _BUILT else "export default {};"
    _css = CSS_PATH if _BUILT and CSS_PATH.is_file() else ""
    kind = traitlets.Unicode("audit").tag(sync=True)
    # View state (kept in traits, so a saved notebook reopens where it was left).
    height = traitlets.Int(0).tag(sync=True)

    def __init__(self, state: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not ESM_PATH.is_file():
            raise FileNotFoundError(MISSING_BUNDLE + f" ({ESM_PATH} is missing)")
        super().__init__(**(state or {}), **kwargs)

    def widget_state(self, **options: Any) -> dict[str, Any]:
        """The synced traits that hold the view's data (not anywidget's own, not the layout)."""
        if options:
            raise TypeError(
                f"a widget's state is fixed; give {sorted(options)} to the audit's widget_state()"
            )
        skip = {"layout", "tabbable", "tooltip", "height", "can_query"}
        return {
            k: getattr(self, k)
            for k in self.trait_names(sync=True)
            if not k.startswith("_") and k not in skip
        }


#: The data traits of the audit view, name -> kind, from traits.json (js/src/index.ts reads it).
DATA_TRAITS: dict[str, str] = json.loads(
    (Path(__file__).with_name("traits.json")).read_text(encoding="utf-8")
)["audit"]


def _trait(kind: str) -> Any:
    """A synced trait of one kind of traits.json."""
    if kind == "array":
        return _array()
    made = {
        "dict": lambda: traitlets.Dict(),
        "list": lambda: traitlets.List(),
        "list[str]": lambda: traitlets.List(traitlets.Unicode()),
        "list[float]": lambda: traitlets.List(traitlets.Float()),
        "int": lambda: traitlets.Int(0),
        "str?": lambda: traitlets.Unicode(None, allow_none=True),
    }[kind]()
    return made.tag(sync=True)


# The audit view's data traits as a base class (traitlets sets traits up at class creation).
_AuditData = types.new_class(
    "_AuditData",
    (_View,),
    exec_body=lambda ns: ns.update({n: _trait(k) for n, k in DATA_TRAITS.items()}),
)


class AuditWidget(_AuditData):
    """The interactive view of one audit (six panels: summary, distances, radii, basins,
    floor, samples). Build it with ``audit.widget()``."""

    #: Sequence ids of the points selected in the basins view (shift+drag: a box or a lasso);
    #: ``audit.selected(widget)`` gives their rows of ``audit.samples``.
    selection = traitlets.List(traitlets.Int()).tag(sync=True)
    #: True once the kernel answers the "ask about a text" box (:meth:`answer_queries`); a
    #: report or a snapshot has no kernel, and no box.
    can_query = traitlets.Bool(False).tag(sync=True)

    @classmethod
    def from_audit(cls, audit: AuditLike, **options: Any) -> AuditWidget:
        """The widget of ``audit``; ``options`` go to :func:`widget_state`."""
        view = cls(widget_state(audit, **options))
        if callable(getattr(audit, "query", None)):
            view.answer_queries(audit)
        return view

    def answer_queries(self, audit: Any) -> None:
        """Answer the box's texts with ``audit.query`` (anywidget custom messages: the view
        sends ``{"type": "hopaudit.query", "id", "text", "k"}``, the kernel replies with
        :func:`query_message`). The audited model must be alive, or attached to a loaded audit
        with ``audit.attach_model(model, tokenizer=...)``."""
        self._query_audit = audit
        if not self.can_query:
            self.on_msg(self._on_custom_message)
        self.can_query = True

    def _on_custom_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("type") == QUERY_MESSAGE:
            self.send(query_message(self._query_audit, content))


class _MultiWidget(_View):
    """Several audits in one view: ``members`` (one JSON dict per audit: its single-audit
    widget state, each array's bytes replaced by ``{"dtype", "shape", "blob": [offset,
    length]}``) and ``blob`` (every member's array bytes, 8-byte aligned, as one uint8 array)."""

    labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    members = traitlets.List().tag(sync=True)
    blob = _array()


class CompareWidget(_MultiWidget):
    """The side-by-side view of several audits (``hopaudit.compare(...).widget()``)."""

    kind = traitlets.Unicode("compare").tag(sync=True)


class TimelineWidget(_MultiWidget):
    """The audits of a training run on a step slider (``hopaudit.timeline(dir).widget()``);
    ``step_index`` is the step shown (kept in the notebook when it is saved)."""

    kind = traitlets.Unicode("timeline").tag(sync=True)
    steps = traitlets.List(traitlets.Int()).tag(sync=True)
    alignment = traitlets.List(traitlets.Unicode()).tag(sync=True)
    step_index = traitlets.Int(0).tag(sync=True)
