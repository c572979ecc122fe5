"""Audits side by side (``hopaudit.compare``) and along a training run (``hopaudit.timeline``).

Models of different depths and widths are put on common axes:

- depth as *relative depth* in [0, 1]: block ``i`` of ``L`` blocks sits at ``i / (L - 1)`` (a
  one-block model at 1); the ``final`` layer (the LM head's input) is at 1 too, flagged by
  ``is_final`` so views can draw it apart;
- radii against each model's own ``r_star = sqrt(n / 2 pi e)``: ``r_hat / r_star`` (the
  per-layer column ``r_ratio``), so a width-64 and a width-576 model read on one scale.

Audits made with different ``normalize`` modes are refused: rms-normalized distances and raw
distances are on different scales, and no rescaling makes them comparable.

A timeline keeps its UMAP frames aligned. Points are matched across steps by their sequence's
text and token position. When the points of one step are the same as the step before (the same
evaluation data, as ``AuditCallback`` guarantees), the layout of the step is recomputed from its
own kNN graph with ``umap_from_knn(..., init=<the previous step's layout of the same
sequences>)``, so it starts where the last frame ended; the result is then fitted onto the
previous frame by a Procrustes rotation, scale and shift (UMAP rescales its init). When only
some points match, the step's own layout is fitted onto the previous frame by Procrustes on the
shared points; with fewer than three shared points it is left as it is.
``Timeline.alignment`` says which was used per step.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.linalg import orthogonal_procrustes

from hopaudit.errors import DataError
from hopaudit.results.audit import Audit, Embedding
from hopaudit.views.protocol import View
from hopaudit.views.schema import is_array, pack

__all__ = [
    "Comparison",
    "Timeline",
    "compare",
    "comparison_state",
    "procrustes",
    "relative_depth",
    "timeline",
    "timeline_state",
]

#: Per-audit arrays the multi-audit views do not show (the samples table), left out of payloads.
_DROPPED = ("sample_seq", "sample_values", "sample_columns", "roc_points", "membership")
_STEP_DIR = re.compile(r"^step-(\d+)$")


# ------------------------------------------------------------------------------ pure maths
def relative_depth(
    layer_names: list[str], n_blocks: int, stacks: list[str | None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(relative depth, is_final) of each layer: block ``i`` of ``n_blocks`` at i / (L - 1),
    a one-block model's block at 1, ``final`` (the last layer when it is named so) at 1.

    With ``stacks`` (each layer's stack, as ``audit.layers["stack"]``) naming more than one
    stack, as an encoder-decoder's do, depth runs over each stack's own blocks, and each
    stack's closing layer (``encoder.final``, ``final``) is at 1, flagged final."""
    if stacks is not None and len({s for s in stacks if s is not None}) > 1:
        depth = np.empty(len(layer_names))
        final = np.zeros(len(layer_names), dtype=bool)
        for stack in dict.fromkeys(stacks):
            idx = [i for i, s in enumerate(stacks) if s == stack]
            ends = [
                i for i in idx if layer_names[i] == "final" or layer_names[i].endswith(".final")
            ]
            blocks = [i for i in idx if i not in ends]
            d, _ = relative_depth([layer_names[i] for i in blocks], len(blocks))
            depth[blocks] = d
            depth[ends], final[ends] = 1.0, True
        return depth, final
    depth = np.empty(len(layer_names))
    final = np.zeros(len(layer_names), dtype=bool)
    for i, name in enumerate(layer_names):
        if name == "final" and i == len(layer_names) - 1:
            depth[i], final[i] = 1.0, True
        else:
            depth[i] = i / (n_blocks - 1) if n_blocks > 1 else 1.0
    return depth, final


def _depth_of(audit: Audit) -> tuple[np.ndarray, np.ndarray]:
    """:func:`relative_depth` of an audit's layers, stack by stack."""
    stacks = [_stack(audit, name) for name in audit.layer_names]
    return relative_depth(audit.layer_names, audit.n_blocks, stacks)


def _stack(audit: Audit, name: str) -> str | None:
    stack_of = getattr(audit.capture, "stack_of", None)
    return stack_of(name) if callable(stack_of) else None


def procrustes(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """The similarity transform (rotation R, scale s, shift t) minimizing
    ``|| s * source @ R + t - target ||`` over matched rows (orthogonal Procrustes with scale).
    Apply it as ``s * x @ R + t``."""
    a = np.asarray(source, dtype=np.float64)
    b = np.asarray(target, dtype=np.float64)
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    a0, b0 = a - ma, b - mb
    rot, sig_sum = orthogonal_procrustes(a0, b0)  # sig_sum: the singular values' sum
    norm = float((a0**2).sum())
    scale = float(sig_sum / norm) if norm > 0 else 1.0
    return rot, scale, mb - scale * ma @ rot


# ------------------------------------------------------------------------------ inputs
def _as_audit(item: Any) -> Audit:
    if isinstance(item, Audit):
        return item
    if isinstance(item, (str, os.PathLike)):
        from hopaudit.storage.load import load

        return load(item)
    raise DataError(
        f"expected an Audit or the path of a saved audit (audit.save(dir)), "
        f"got {type(item).__name__}"
    )


def _check_normalize(audits: list[Audit], labels: list[str]) -> None:
    modes = {label: a.options.get("normalize") for a, label in zip(audits, labels, strict=True)}
    if len(set(modes.values())) > 1:
        listed = ", ".join(f"{k}: {v!r}" for k, v in modes.items())
        raise DataError(
            f"cannot compare audits made with different normalize modes ({listed}): "
            "rms-normalized distances are on the unit-RMS scale of every row, raw ('none') "
            "distances on the model's own activation scale, so radii, histograms and floors "
            "are not comparable; audit them again with the same normalize="
        )


def _labels(audits: list[Audit], labels: Any, default: list[str]) -> list[str]:
    if labels is None:
        out = list(default)
    else:
        if isinstance(labels, str):
            raise DataError("labels must be a list of strings, one per audit, not one string")
        out = [str(x) for x in labels]
        if len(out) != len(audits):
            raise DataError(f"{len(out)} labels for {len(audits)} audits; give one per audit")
        if len(set(out)) != len(out):
            raise DataError(f"labels must be distinct, got {out}")
        return out
    seen: dict[str, int] = {}
    original = list(out)
    for i, label in enumerate(original):
        if original.count(label) > 1:
            seen[label] = seen.get(label, 0) + 1
            out[i] = f"{label} #{seen[label]}"
    return out


# ------------------------------------------------------------------------------ tables
def _layers_table(audits: list[Audit], keys: dict[str, list[Any]]) -> pd.DataFrame:
    frames = []
    for i, a in enumerate(audits):
        df = a.layers.copy()
        depth, final = _depth_of(a)
        front = {k: [v[i]] * len(df) for k, v in keys.items()}
        front["audit"] = [i] * len(df)
        df.insert(0, "relative_depth", depth)
        df.insert(1, "is_final", final)
        for j, (k, v) in enumerate(front.items()):
            df.insert(j, k, v)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _summary_table(audits: list[Audit], keys: dict[str, list[Any]]) -> pd.DataFrame:
    rows = []
    for i, a in enumerate(audits):
        row: dict[str, Any] = {k: v[i] for k, v in keys.items()}
        row.update(a.summary())
        last = a.layers.iloc[-1]
        row["final_r_hat"] = float(last["r_hat"])
        row["final_r_star"] = float(last["r_star"])
        row["final_r_ratio"] = float(last["r_ratio"])
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ payload
def _pack_members(states: list[dict[str, Any]], extras: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-audit widget states -> one JSON list of members and one binary blob.

    Every packed array of member i goes into the blob (8-byte aligned); the member keeps its
    dtype and shape, with ``"blob": [offset, length]`` in place of its bytes. An array equal to
    one already in the blob (the same texts at every step of a run) points to the same bytes."""
    blob = bytearray()
    where: dict[bytes, list[int]] = {}
    members = []
    for state, extra in zip(states, extras, strict=True):
        member: dict[str, Any] = dict(extra)
        for key, value in state.items():
            if key in _DROPPED:
                continue
            if is_array(value):
                b = bytes(value["view"])
                if b not in where:
                    blob.extend(b"\0" * ((-len(blob)) % 8))
                    where[b] = [len(blob), len(b)]
                    blob.extend(b)
                member[key] = {"dtype": value["dtype"], "shape": value["shape"], "blob": where[b]}
            else:
                member[key] = value
        members.append(member)
    return {"members": members, "blob": pack(np.frombuffer(bytes(blob), np.uint8), "uint8")}


def member_state(state: dict[str, Any], i: int) -> dict[str, Any]:
    """Member ``i`` of a compare/timeline state as a single-audit widget state (for tests and
    notebooks: ``hopaudit.widget.decode(member_state(s, 0), "layer_stats")``)."""
    blob = bytes(state["blob"]["view"])
    out = {}
    for key, value in state["members"][i].items():
        if isinstance(value, dict) and "blob" in value and "dtype" in value:
            off, length = value["blob"]
            value = {
                "dtype": value["dtype"],
                "shape": value["shape"],
                "view": blob[off : off + length],
            }
        out[key] = value
    return out


def comparison_state(comparison: Comparison, **options: Any) -> dict[str, Any]:
    """The compare view's traits: one member per audit (its single-audit widget state, the
    samples table left out, plus label and relative depths) and one binary blob."""
    from hopaudit.views.widget import widget_state

    states, extras = [], []
    for a, label in zip(comparison.audits, comparison.labels, strict=True):
        states.append(widget_state(a, **options))
        depth, final = _depth_of(a)
        extras.append(
            {
                "label": label,
                "depth": [float(d) for d in depth],
                "is_final": [bool(f) for f in final],
                "stack": [_stack(a, name) for name in a.layer_names],
                "n_blocks": int(a.n_blocks),
                # extraction and membership AUROC, drawn on the step axis (docs/validity.md)
                "evidence": audit_evidence(a),
            }
        )
    packed = _pack_members(states, extras)
    return {"kind": "compare", "labels": list(comparison.labels), **packed}


# ------------------------------------------------------------------------------ compare
@dataclass
class Comparison(View):
    """Audits side by side. ``table``: one row of headline numbers per audit; ``layers``: the
    per-layer tables stacked, with ``label``, ``relative_depth`` and ``is_final``. Show it as a
    cell's last line (or ``.widget()``) for the view; ``.to_html(path)`` writes a report."""

    audits: list[Audit]
    labels: list[str]

    @property
    def table(self) -> pd.DataFrame:
        return _summary_table(self.audits, {"label": self.labels})

    @property
    def layers(self) -> pd.DataFrame:
        return _layers_table(self.audits, {"label": self.labels})

    _widget = "CompareWidget"

    def widget_state(self, **options: Any) -> dict[str, Any]:
        """The compare view's state (:func:`comparison_state`)."""
        return comparison_state(self, **options)

    def __repr__(self) -> str:
        return f"<Comparison of {len(self.audits)} audits: {', '.join(self.labels)}>"


def compare(*audits: Any, labels: list[str] | None = None) -> Comparison:
    """Put audits side by side: ``Audit`` objects or paths of saved audits, any number, of
    models of any depth and width. ``labels`` name them (default: the model names). Audits
    made with different ``normalize`` modes are refused (their scales are not comparable)."""
    if len(audits) == 1 and isinstance(audits[0], (list, tuple)):
        audits = tuple(audits[0])
    if not audits:
        raise DataError("compare() needs at least one audit (an Audit or a saved audit's path)")
    loaded = [_as_audit(a) for a in audits]
    names = _labels(loaded, labels, [a.model_name for a in loaded])
    _check_normalize(loaded, names)
    return Comparison(audits=loaded, labels=names)


# ------------------------------------------------------------------------------ timeline
def _step_of(audit: Audit, path: Path | None) -> int | None:
    step = audit.options.get("step")
    if isinstance(step, (int, np.integer)) and not isinstance(step, bool):
        return int(step)
    if path is not None:
        m = _STEP_DIR.match(path.name)
        if m:
            return int(m.group(1))
    return None


def _timeline_sources(source: Any) -> list[Any]:
    if isinstance(source, (list, tuple)):
        if not source:
            raise DataError("timeline() got an empty list; give saved audit paths or Audits")
        return list(source)
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(
            "timeline() takes a training output directory, its hopaudit/ directory, or a list "
            f"of saved audits; got {type(source).__name__}"
        )
    root = Path(source).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such directory (expected a training output directory)")
    for candidate in (root / "hopaudit", root):
        steps = (
            [p for p in candidate.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
            if (candidate.is_dir())
            else []
        )
        if steps:
            return sorted(steps, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))
    raise DataError(
        f"{root} holds no audits: expected step-<N> directories in {root / 'hopaudit'} or "
        f"{root} (AuditCallback writes them to <output_dir>/hopaudit/)"
    )


@dataclass
class Alignment:
    """How one step's UMAP frame of one layer was aligned to the step before."""

    step: int
    layer: str
    method: str  # "first" (step 0), "init" (UMAP from the previous layout), "procrustes", "none"
    n_points: int
    n_matched: int


@dataclass
class Timeline(View):
    """Audits of one training run, in step order. ``table``: one row per step; ``layers``: the
    per-layer tables stacked with ``step``; ``alignment``: how the UMAP frames were aligned."""

    audits: list[Audit]
    steps: list[int]
    paths: list[str | None] = field(default_factory=list)
    _alignment: list[Alignment] = field(default_factory=list)

    @property
    def table(self) -> pd.DataFrame:
        return _summary_table(self.audits, {"step": self.steps})

    @property
    def layers(self) -> pd.DataFrame:
        return _layers_table(self.audits, {"step": self.steps})

    @property
    def alignment(self) -> pd.DataFrame:
        return pd.DataFrame([vars(a) for a in self._alignment])

    @property
    def evidence(self) -> pd.DataFrame:
        """One row per step: the memorization evidence of each audit (:func:`audit_evidence`:
        extraction rates, the loss score's membership AUROC with its interval; None where the
        audit had no ``extraction=`` or ``heldout=``), beside the final layer's r_hat / r_star
        and the cross-entropy against the floor, on the same step axis."""
        rows = []
        for a, step in zip(self.audits, self.steps, strict=True):
            s = a.summary()
            final = a.layers.iloc[-1]
            rows.append(
                {
                    "step": int(step),
                    **audit_evidence(a),
                    "r_ratio_final": float(final["r_ratio"]),
                    "cross_entropy": s.get("cross_entropy"),
                    "floor_low": s.get("floor_low"),
                }
            )
        return pd.DataFrame(rows)

    _widget = "TimelineWidget"

    def widget_state(self, **options: Any) -> dict[str, Any]:
        """The timeline view's state (:func:`timeline_state`)."""
        return timeline_state(self, **options)

    def __repr__(self) -> str:
        return f"<Timeline of {len(self.audits)} audits, steps {self.steps}>"


def timeline(
    source: Any,
    *,
    umap_layers: list[str | int] | str | None = None,
    max_points: int | None = None,
    seed: int = 0,
) -> Timeline:
    """The audits of a training run on a step slider.

    ``source``: a training output directory (holding ``hopaudit/step-<N>/``), that ``hopaudit``
    directory itself, or a list of saved audit paths (or Audits). Audits are sorted by step
    (``audit.options["step"]``, else the ``step-<N>`` directory name). ``umap_layers``: the
    layers laid out at every step (default: ``final``, the last layer; ``"all"`` for every
    measured layer; names or ids). The layouts are made here from each step's kNN graph, each
    step starting from the previous step's layout (see the module docstring); ``max_points``
    caps the points per frame (default: the audits' ``umap_max_points``)."""
    items = _timeline_sources(source)
    audits, steps, paths = [], [], []
    for item in items:
        path = None if isinstance(item, Audit) else Path(item)
        a = _as_audit(item)
        step = _step_of(a, path)
        if step is None:
            where = str(path) if path else f"audit {a.model_name!r}"
            raise DataError(
                f"{where}: no training step (options['step'] or a step-<N> directory name); "
                "AuditCallback and Auditor record it"
            )
        audits.append(a)
        steps.append(step)
        paths.append(None if path is None else str(path))
    order = sorted(range(len(audits)), key=lambda i: steps[i])
    audits = [audits[i] for i in order]
    steps = [steps[i] for i in order]
    paths = [paths[i] for i in order]
    if len(set(steps)) != len(steps):
        dup = sorted({s for s in steps if steps.count(s) > 1})
        raise DataError(f"two audits of the same step {dup}: give one audit per step")
    _check_normalize(audits, [f"step {s}" for s in steps])
    first = audits[0].layer_names
    for a, s in zip(audits, steps, strict=True):
        if a.layer_names != first:
            raise DataError(
                f"step {s} has layers {a.layer_names[0]!r}..{a.layer_names[-1]!r} "
                f"({len(a.layer_names)}), step {steps[0]} has {len(first)}: a timeline shows "
                "one model's run; use hopaudit.compare for different models"
            )
    tl = Timeline(audits=audits, steps=steps, paths=paths)
    layers = _timeline_layers(audits, umap_layers)
    cap = (
        max_points
        if max_points is not None
        else int(audits[0].options.get("umap_max_points") or 20_000)
    )
    tl.audits = [_shallow_copy(a) for a in audits]
    for name in layers:
        tl._alignment.extend(_align_layer(tl.audits, steps, name, cap, seed))
    return tl


def _shallow_copy(a: Audit) -> Audit:
    """The same audit with its own embeddings dict (the timeline's frames replace them)."""
    import dataclasses

    return dataclasses.replace(a, embeddings={})


def _timeline_layers(audits: list[Audit], spec: Any) -> list[str]:
    names = audits[0].layer_names
    measured = [n for n in names if all(n in a.reports for a in audits)]
    if spec is None:
        return measured[-1:]
    if isinstance(spec, str) and spec == "all":
        return measured
    if isinstance(spec, (str, int)):
        spec = [spec]
    out = []
    for layer in spec:
        if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
            if not -len(names) <= layer < len(names):
                raise DataError(f"umap_layers: layer {layer} out of range 0..{len(names) - 1}")
            layer = names[layer]
        if layer not in names:
            raise DataError(f"umap_layers: no layer named {layer!r}; layers are {names}")
        if layer not in measured:
            raise DataError(f"umap_layers: layer {layer!r} was not measured at every step")
        if layer not in out:
            out.append(layer)
    return out


def _keys(audit: Audit, name: str, rows: np.ndarray, text_ids: dict[str, int]) -> np.ndarray:
    """One int64 per stored row of layer ``name`` naming its point across steps: the row's
    sequence *text* (numbered in ``text_ids``, shared by the steps) and its token position (in
    the layer's own stack). Matching by text, not by sequence number, keeps audits of
    different evaluation data from being paired."""
    row_sequence, row_position = audit.capture.rows_of(name)
    seq_key = np.array([text_ids.setdefault(t, len(text_ids)) for t in audit.texts], np.int64)
    position = row_position[rows].astype(np.int64) % (1 << 20)
    return seq_key[row_sequence[rows]] * (1 << 20) + position


def _graph(audit: Audit, name: str, pick: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The kNN graph (self in column 0) of the patterns ``pick`` (ids into valid rows)."""
    rep = audit.reports[name]
    if len(pick) == rep.n_patterns:
        return rep.knn_ids, rep.knn_dists
    from hopaudit.geometry import normalize_rows
    from hopaudit.search.backends import build_index, knn_self

    rows = np.asarray(rep.valid_rows)[pick]
    sub = normalize_rows(np.asarray(audit.activations(name)[rows], np.float32), rep.normalize)
    k = min(rep.knn_ids.shape[1] - 1, len(pick) - 1)
    idx = build_index(sub, "exact" if len(pick) <= 4096 else "hnsw")
    ids, dists = knn_self(idx, sub, k)
    ids = np.concatenate([np.arange(len(pick))[:, None], ids], axis=1)
    dists = np.concatenate([np.zeros((len(pick), 1), dists.dtype), dists], axis=1)
    return ids, dists


def _embedding(audit: Audit, name: str, pick: np.ndarray, xy: np.ndarray) -> Embedding:
    rep = audit.reports[name]
    rows = np.asarray(rep.valid_rows)[pick]
    ratio = rep.nn[pick] / rep.r_hat if rep.r_hat > 0 else np.full(len(pick), np.nan)
    return Embedding(
        xy=np.asarray(xy, dtype=np.float32),
        rows=rows,
        sequence=audit.capture.rows_of(name)[0][rows],
        basin=np.asarray(rep.basin)[pick],
        ratio=np.asarray(ratio, dtype=np.float32),
        n_total=int(rep.n_patterns),
    )


def _layout(audit: Audit, name: str, pick: np.ndarray, init: np.ndarray | None, seed: int):
    from hopaudit.layer.embedding import umap_from_knn

    ids, dists = _graph(audit, name, pick)
    return umap_from_knn(ids, dists, n_neighbors=min(ids.shape[1], 15), seed=seed, init=init)


def _align_layer(
    audits: list[Audit], steps: list[int], name: str, cap: int, seed: int
) -> list[Alignment]:
    """Lay out layer ``name`` at every step, each frame starting from the one before."""
    from hopaudit.layer.embedding import MIN_POINTS

    out: list[Alignment] = []
    prev_keys: np.ndarray | None = None
    prev_xy: np.ndarray | None = None
    chosen: np.ndarray | None = None  # the keys a subsampled frame kept
    text_ids: dict[str, int] = {}
    for a, step in zip(audits, steps, strict=True):
        rep = a.reports[name]
        valid = np.asarray(rep.valid_rows)
        keys = _keys(a, name, valid, text_ids)
        n = len(valid)
        if n < MIN_POINTS:
            out.append(Alignment(step, name, "none", n, 0))
            continue
        pick = np.arange(n)
        if cap and n > cap:
            # A subsample: the points the first subsampled frame kept, while there are enough.
            if chosen is not None:
                pick = np.flatnonzero(np.isin(keys, chosen))[:cap]
            if chosen is None or len(pick) < MIN_POINTS:
                pick = np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))
                chosen = keys[pick]
        pick_keys = keys[pick]
        if prev_keys is None:
            xy, method, matched = _layout(a, name, pick, None, seed), "first", 0
        else:
            order = np.argsort(prev_keys)
            pos = np.searchsorted(prev_keys, pick_keys, sorter=order)
            pos = np.minimum(pos, len(prev_keys) - 1)
            hit = prev_keys[order[pos]] == pick_keys
            matched = int(hit.sum())
            if matched == len(pick) and len(np.unique(pick_keys)) == len(pick_keys):
                init = prev_xy[order[pos]]
                init = init + np.random.default_rng(seed).normal(scale=1e-4, size=init.shape)
                xy, method = _layout(a, name, pick, init, seed), "init"
            else:
                xy, method = _layout(a, name, pick, None, seed), "procrustes"
            if matched >= 3:
                rot, s, t = procrustes(xy[hit], prev_xy[order[pos[hit]]])
                xy = s * xy @ rot + t
            elif method == "procrustes":
                method = "none"
        xy = np.asarray(xy, dtype=np.float32)
        a.embeddings[name] = _embedding(a, name, pick, xy)
        out.append(Alignment(step, name, method, len(pick), matched))
        prev_keys, prev_xy = pick_keys, xy
    return out


def _common_boxes(states: list[dict[str, Any]]) -> None:
    """Re-quantize every step's scatter coordinates on one box per layer (the union of the
    steps' boxes), so aligned frames are drawn with the same framing and points stay put."""
    from hopaudit.views.widget import decode, quantize

    boxes: dict[str, list[float]] = {}
    for st in states:
        for m in st["scatter_layers"]:
            b = boxes.setdefault(m["name"], [math.inf, -math.inf, math.inf, -math.inf])
            b[0], b[1] = min(b[0], m["x0"]), max(b[1], m["x1"])
            b[2], b[3] = min(b[2], m["y0"]), max(b[3], m["y1"])
    for st in states:
        xy = decode(st, "scatter_xy").astype(np.float64)
        for m in st["scatter_layers"]:
            x0, x1, y0, y1 = boxes[m["name"]]
            sl = slice(m["offset"], m["offset"] + m["n"])
            px = m["x0"] + xy[sl, 0] * (m["x1"] - m["x0"]) / 65535
            py = m["y0"] + xy[sl, 1] * (m["y1"] - m["y0"]) / 65535
            xy[sl, 0] = quantize(px, x0, x1, 65536)
            xy[sl, 1] = quantize(py, y0, y1, 65536)
            m.update(x0=x0, x1=x1, y0=y0, y1=y1)
        st["scatter_xy"] = pack(xy, "uint16")


def audit_evidence(a: Audit) -> dict[str, float | None]:
    """An audit's memorization evidence as plain numbers: the extraction rate of the stored
    and of the held-out sequences (``extraction=``), and the membership AUROC of the loss
    score with its 95 % interval (``heldout=``); None for what the audit did not measure."""
    s = a.summary()
    out: dict[str, float | None] = {
        "extraction_rate": s.get("extraction_rate"),
        "extraction_rate_heldout": s.get("extraction_rate_heldout"),
        "auroc_loss": None,
        "auroc_loss_lo": None,
        "auroc_loss_hi": None,
    }
    if getattr(a, "heldout_capture", None) is None:
        return out
    table = a.membership
    loss = table[table["score"] == "loss"] if len(table) else table
    if len(loss):
        for key in ("auroc", "auroc_lo", "auroc_hi"):
            v = float(loss.iloc[0][key])
            out[f"{key.replace('auroc', 'auroc_loss')}"] = v if math.isfinite(v) else None
    return out


def timeline_state(tl: Timeline, **options: Any) -> dict[str, Any]:
    """The timeline view's traits: one member per step (its single-audit widget state with
    the aligned frames, on one box per layer) and one binary blob; ``steps`` in order."""
    from hopaudit.views.widget import widget_state

    states = [widget_state(a, **options) for a in tl.audits]
    _common_boxes(states)
    extras = []
    for a, step in zip(tl.audits, tl.steps, strict=True):
        depth, final = _depth_of(a)
        extras.append(
            {
                "label": f"step {step}",
                "step": int(step),
                "depth": [float(d) for d in depth],
                "is_final": [bool(f) for f in final],
                "stack": [_stack(a, name) for name in a.layer_names],
                "n_blocks": int(a.n_blocks),
                # extraction and membership AUROC, drawn on the step axis (docs/validity.md)
                "evidence": audit_evidence(a),
            }
        )
    packed = _pack_members(states, extras)
    methods = sorted({al.method for al in tl._alignment})
    return {
        "kind": "timeline",
        "labels": [f"step {s}" for s in tl.steps],
        "steps": [int(s) for s in tl.steps],
        "alignment": methods,
        "step_index": len(tl.steps) - 1,
        **packed,
    }
