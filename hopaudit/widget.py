"""The anywidget view of an audit, and the binary packing of everything it shows.

``widget_state(audit)`` is a pure function from an :class:`~hopaudit.audit.Audit` (or anything
with the same attributes) to the widget's traits: small scalars as JSON, every array as
little-endian ``bytes`` (anywidget sends them as binary buffers; the front end reads them as
typed arrays). Histograms are binned here, scatter coordinates quantized to uint16, ratios to
uint8, per-sequence numbers to float16, so a view of 80 000 points stays a few hundred KB.

The layout of each array is written next to it in ``STATE_LAYOUT``; ``js/src/state.ts`` reads
the same names.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets

STATIC = Path(__file__).parent / "static"
ESM_PATH = STATIC / "widget.js"
CSS_PATH = STATIC / "widget.css"
MISSING_BUNDLE = "the front end was not built: reinstall with pip install -e . (needs npm)"

#: Fractions of the stored patterns whose nearest-pattern distances the distance panel shows.
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
#: Per-layer numbers sent to the view (float64 columns of ``layer_stats``, in this order).
LAYER_STAT_COLUMNS = (
    "layer",
    "n",
    "n_patterns",
    "n_queries",
    "nn_mean",
    "nn_median",
    "nn_q10",
    "nn_q25",
    "nn_q75",
    "nn_q90",
    "r_hat",
    "r_hat_mean",
    "r_hat_q25",
    "r_hat_q75",
    "r_star",
    "r_ratio",
    "separated_frac",
    "contained_frac",
    "log_z_gauss",
    "log_z_vol",
    "r_c",
    "floor_low",
    "floor_high",
    "floor_gauss",
    "twonn_id",
    "nonfinite",
)
#: Distinct basin colours in the scatter: the largest basins; the rest are drawn grey.
#: Histogram bins become geometric (log axis) when the range spans more than this factor.
LOG_BINS_ABOVE = 30.0
SAMPLE_ROWS = 100  # sequences kept per ranking (lowest CE, highest Min-K%, lowest ratio)

STATE_LAYOUT = {
    "layer_stats": "float64 (n_layers, len(layer_columns)) row-major; NaN = missing",
    "hist_range": "float64 (n_layers, 2): [lo, hi] of the shared bin edges of a layer",
    "hist_log": "uint8 (n_layers): 1 = geometric edges (log axis), 0 = linear edges",
    "hist_counts": "uint32 (n_layers, len(hist_fractions), hist_bins)",
    "hist_medians": "float64 (n_layers, len(hist_fractions)): median distance per fraction",
    "scatter_xy": "uint16 (sum m, 2): x, y quantized on [x0, x1], [y0, y1] of the layer's meta",
    "scatter_basin": "uint16 (sum m): basin rank by size within the layer (0 = largest)",
    "scatter_ratio": "uint8 (sum m): nn / r_hat quantized on [ratio_lo, ratio_hi]; 255 = NaN",
    "scatter_seq": "uint16 or uint32 (scatter_seq_bytes; sum of distinct sequence arrays): "
    "the sequence of each point",
    "scatter_basin_sizes": "uint32 (size, run) pairs: basin sizes by rank, run-length encoded, "
    "per layer at basin_offset (basin_runs pairs)",
    "seq_ce": "float16 (n_sequences): mean token cross-entropy; NaN = none",
    "text_bytes": "UTF-8 of every shown sequence's text (truncated to text_chars)",
    "text_offsets": "uint32 (n_sequences + 1): byte offsets into text_bytes",
    "sample_seq": "uint32 (k): sequences of the samples table",
    "sample_values": "float32 (k, 5): cross_entropy, min_k, top1, distance_ratio, basin",
}


def _f(x: Any) -> float | None:
    """A JSON-safe float: None for None, NaN or inf."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return _f(v)
    return str(v)


def _le(a: np.ndarray, dtype: str) -> bytes:
    return np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def _finite(a: Any) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def _quantize(v: np.ndarray, lo: float, hi: float, levels: int) -> np.ndarray:
    """Round ``v`` on [lo, hi] to integers 0..levels-1 (NaN handled by the caller)."""
    span = hi - lo if hi > lo else 1.0
    q = np.rint((np.clip(v, lo, hi) - lo) / span * (levels - 1))
    return np.nan_to_num(q, nan=0).astype(np.int64)


def _layer_distances(report: Any) -> dict[float, np.ndarray]:
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


def _histograms(audit: Any, names: list[str], bins: int) -> dict[str, Any]:
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
        "hist_range": _le(ranges, "f8"),
        "hist_counts": _le(counts, "u4"),
        "hist_medians": _le(medians, "f8"),
        "hist_log": _le(scale, "u1"),
    }


def _layer_table(audit: Any, names: list[str]) -> dict[str, Any]:
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
        for j, col in enumerate(LAYER_STAT_COLUMNS):
            v = q[col] if col in q else row.get(col, np.nan)
            stats[i, j] = _f(v) if _f(v) is not None else np.nan
        reason = row.get("skipped_reason")
        info.append(
            {
                "id": int(row["layer"]),
                "name": str(name),
                "skipped_reason": None
                if reason is None or (isinstance(reason, float) and math.isnan(reason))
                else str(reason),
            }
        )
    return {
        "layer_info": info,
        "layer_columns": list(LAYER_STAT_COLUMNS),
        "layer_stats": _le(stats, "f8"),
    }


def _scatter(audit: Any, names: list[str], top_basins: int) -> dict[str, Any]:
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
        qx = _quantize(xy[:, 0], x0, x1, 65536)
        qy = _quantize(xy[:, 1], y0, y1, 65536)
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
        qr = _quantize(ratio, r_lo, r_hi, 255)
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
    seq_dtype = "u2" if top_seq < 65536 else "u4"

    def cat(parts: list[np.ndarray], dtype: str) -> bytes:
        return _le(np.concatenate(parts) if parts else np.zeros(0), dtype)

    return {
        "scatter_layers": meta,
        "scatter_xy": cat(xy_parts, "u2"),
        "scatter_basin": cat(basin_parts, "u2"),
        "scatter_ratio": cat(ratio_parts, "u1"),
        "scatter_basin_sizes": cat(size_parts, "u4"),
        "scatter_seq": cat([s for _, s in seq_parts], seq_dtype),
        "scatter_seq_bytes": int(np.dtype(seq_dtype).itemsize),
    }


def _samples(audit: Any, shown: np.ndarray, text_chars: int) -> dict[str, Any]:
    df = audit.samples
    n = len(df)
    ce = df["cross_entropy"].to_numpy(dtype=np.float64)
    mink = df["min_k"].to_numpy(dtype=np.float64)
    ratio = df["distance_ratio"].to_numpy(dtype=np.float64)
    keep: set[int] = set()
    for key, sign in ((ce, 1.0), (mink, -1.0), (ratio, 1.0)):
        ok = np.flatnonzero(np.isfinite(key))
        keep.update(ok[np.argsort(sign * key[ok], kind="stable")][:SAMPLE_ROWS].tolist())
    if not keep:  # no score at all (an encoder without loss): show the first sequences
        keep = set(range(min(n, SAMPLE_ROWS)))
    rows = np.array(sorted(keep), dtype=np.int64)
    values = np.column_stack(
        [
            ce[rows],
            mink[rows],
            df["top1"].to_numpy(dtype=np.float64)[rows],
            ratio[rows],
            df["basin"].to_numpy(dtype=np.float64)[rows],
        ]
    )
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
        "sequence_ids": _le(seq_ids, "u4") if not np.array_equal(seq_ids, np.arange(n)) else b"",
        "seq_ce": _le(ce, "f2"),
        "text_bytes": b"".join(chunks),
        "text_offsets": _le(np.array(offsets), "u4"),
        "text_chars": int(text_chars),
        "sample_seq": _le(rows, "u4"),
        "sample_values": _le(values, "f4"),
    }


def _summary(audit: Any) -> dict[str, Any]:
    return {str(k): _jsonable(v) for k, v in audit.summary().items()}


def widget_state(
    audit: Any, *, bins: int = 60, top_basins: int = 10, text_chars: int = 240
) -> dict[str, Any]:
    """Pack an audit into the widget's traits: JSON scalars and little-endian ``bytes`` arrays.

    ``bins`` histogram bins per layer (shared by the four saturation fractions), ``top_basins``
    the basins drawn in distinct colours, ``text_chars`` the longest text kept per sequence.
    """
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    if text_chars < 0:
        raise ValueError(f"text_chars must be >= 0, got {text_chars}")
    names = [str(n) for n in audit.layers["name"].tolist()]
    state: dict[str, Any] = {"summary": _summary(audit), "layer_names": names}
    state.update(_layer_table(audit, names))
    state.update(_histograms(audit, names, bins))
    state.update(_scatter(audit, names, top_basins))
    shown = decode(state, "scatter_seq").astype(np.int64)
    state.update(_samples(audit, shown, text_chars))
    return state


def decode(state: dict[str, Any], key: str) -> np.ndarray:
    """Read one packed array back (the inverse of the packing, for tests and notebooks)."""
    dtypes = {
        "layer_stats": "<f8",
        "hist_range": "<f8",
        "hist_counts": "<u4",
        "hist_medians": "<f8",
        "hist_log": "u1",
        "scatter_xy": "<u2",
        "scatter_basin": "<u2",
        "scatter_ratio": "u1",
        "scatter_seq": "<u4",
        "scatter_basin_sizes": "<u4",
        "seq_ce": "<f2",
        "text_offsets": "<u4",
        "sample_seq": "<u4",
        "sample_values": "<f4",
        "sequence_ids": "<u4",
    }
    if key == "scatter_seq":
        dtypes[key] = "<u2" if state.get("scatter_seq_bytes") == 2 else "<u4"
    a = np.frombuffer(state[key], dtype=dtypes[key])
    n_layers = len(state["layer_names"])
    if key == "layer_stats":
        return a.reshape(n_layers, len(state["layer_columns"]))
    if key == "hist_range":
        return a.reshape(n_layers, 2)
    if key == "hist_counts":
        return a.reshape(n_layers, len(state["hist_fractions"]), state["hist_bins"])
    if key == "hist_medians":
        return a.reshape(n_layers, len(state["hist_fractions"]))
    if key == "scatter_xy":
        return a.reshape(-1, 2)
    if key == "sample_values":
        return a.reshape(-1, 5)
    return a


def basin_sizes(state: dict[str, Any], layer: int) -> np.ndarray:
    """The basin sizes by rank of scatter layer ``layer`` (expands the run-length pairs)."""
    meta = state["scatter_layers"][layer]
    pairs = decode(state, "scatter_basin_sizes")
    pairs = pairs[meta["basin_offset"] : meta["basin_offset"] + 2 * meta["basin_runs"]]
    return np.repeat(pairs[0::2], pairs[1::2])


def _read_static(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(MISSING_BUNDLE + f" ({path} is missing)")
    return path.read_text(encoding="utf-8")


class AuditWidget(anywidget.AnyWidget):
    """The interactive view of one audit (six panels: summary, distances, radii, basins,
    floor, samples). Build it with ``AuditWidget.from_audit(audit)`` or ``audit.widget()``."""

    _esm = traitlets.Unicode("").tag(sync=True)
    _css = traitlets.Unicode("").tag(sync=True)

    summary = traitlets.Dict().tag(sync=True)
    layer_names = traitlets.List(traitlets.Unicode()).tag(sync=True)
    layer_info = traitlets.List().tag(sync=True)
    layer_columns = traitlets.List(traitlets.Unicode()).tag(sync=True)
    layer_stats = traitlets.Bytes(b"").tag(sync=True)
    hist_fractions = traitlets.List(traitlets.Float()).tag(sync=True)
    hist_bins = traitlets.Int(0).tag(sync=True)
    hist_range = traitlets.Bytes(b"").tag(sync=True)
    hist_counts = traitlets.Bytes(b"").tag(sync=True)
    hist_medians = traitlets.Bytes(b"").tag(sync=True)
    hist_log = traitlets.Bytes(b"").tag(sync=True)
    scatter_layers = traitlets.List().tag(sync=True)
    scatter_xy = traitlets.Bytes(b"").tag(sync=True)
    scatter_basin = traitlets.Bytes(b"").tag(sync=True)
    scatter_ratio = traitlets.Bytes(b"").tag(sync=True)
    scatter_basin_sizes = traitlets.Bytes(b"").tag(sync=True)
    scatter_seq = traitlets.Bytes(b"").tag(sync=True)
    scatter_seq_bytes = traitlets.Int(4).tag(sync=True)
    n_sequences = traitlets.Int(0).tag(sync=True)
    sequence_ids = traitlets.Bytes(b"").tag(sync=True)
    seq_ce = traitlets.Bytes(b"").tag(sync=True)
    text_bytes = traitlets.Bytes(b"").tag(sync=True)
    text_offsets = traitlets.Bytes(b"").tag(sync=True)
    text_chars = traitlets.Int(240).tag(sync=True)
    sample_seq = traitlets.Bytes(b"").tag(sync=True)
    sample_values = traitlets.Bytes(b"").tag(sync=True)
    # View state (kept in traits, so a saved notebook reopens where it was left).
    height = traitlets.Int(0).tag(sync=True)

    def __init__(self, state: dict[str, Any] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("_esm", _read_static(ESM_PATH))
        kwargs.setdefault("_css", _read_static(CSS_PATH) if CSS_PATH.is_file() else "")
        super().__init__(**(state or {}), **kwargs)

    @classmethod
    def from_audit(cls, audit: Any, **options: Any) -> AuditWidget:
        """The widget of ``audit``; ``options`` go to :func:`widget_state`."""
        return cls(widget_state(audit, **options))


class _MultiWidget(anywidget.AnyWidget):
    """Several audits in one view: ``members`` (one JSON dict per audit: its single-audit
    widget state without the arrays, plus label and relative depths) and ``blob`` (every
    member's arrays, 8-byte aligned, at ``members[i]["buffers"][key] = [offset, length]``).
    The front end dispatches on ``kind``."""

    _esm = traitlets.Unicode("").tag(sync=True)
    _css = traitlets.Unicode("").tag(sync=True)
    kind = traitlets.Unicode("compare").tag(sync=True)
    labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    members = traitlets.List().tag(sync=True)
    blob = traitlets.Bytes(b"").tag(sync=True)
    height = traitlets.Int(0).tag(sync=True)

    def __init__(self, state: dict[str, Any] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("_esm", _read_static(ESM_PATH))
        kwargs.setdefault("_css", _read_static(CSS_PATH) if CSS_PATH.is_file() else "")
        super().__init__(**(state or {}), **kwargs)


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
