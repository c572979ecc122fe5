"""The result of one audit: per-layer table, per-sequence samples, summary, and its views."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .errors import HopauditError
from .measure import ROW_COLUMNS, LayerReport
from .theory import chinchilla_loss
from .view import View

if TYPE_CHECKING:
    from .capture import CaptureResult

#: The per-layer table's columns, in order (one row per layer, ``final`` last): the stable id
#: and full name, what :meth:`LayerReport.row` gives, and why a layer was skipped.
LAYER_COLUMNS = ["layer", "name", *ROW_COLUMNS, "skipped_reason"]


@dataclass
class Embedding:
    """A 2-D UMAP of one layer's patterns: ``xy`` (m, 2) for stored rows ``rows``."""

    xy: np.ndarray
    rows: np.ndarray
    sequence: np.ndarray
    basin: np.ndarray
    ratio: np.ndarray
    n_total: int = 0

    @property
    def subsampled(self) -> bool:
        return len(self.rows) < self.n_total


@dataclass
class Audit(View):
    """What ``hopaudit.audit`` found. Show it as a cell's last line to get the widget.

    ``layers`` is the per-layer table (one row per block plus ``final``, the LM head's input),
    ``samples`` one row per sequence, ``summary()`` the headline numbers.
    """

    model_name: str
    model_config: dict[str, Any]
    options: dict[str, Any]
    layer_names: list[str]
    hidden_size: int
    n_blocks: int
    n_params_total: int
    n_params_blocks: int
    texts: list[str]
    n_tokens: int
    capture: CaptureResult  # of the stored set
    reports: dict[str, LayerReport]  # layer name -> report (measured layers only)
    skipped: dict[str, str] = field(default_factory=dict)
    embeddings: dict[str, Embedding] = field(default_factory=dict)
    heldout_capture: CaptureResult | None = None
    timings: dict[str, float] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)  # peak RSS and its stage (memory.py)

    # ---------------------------------------------------------------- tables
    @property
    def layers(self) -> pd.DataFrame:
        """One row per layer: stable id, full module path, and every THEORY.md quantity."""
        rows = []
        for i, name in enumerate(self.layer_names):
            row: dict[str, Any] = {c: math.nan for c in LAYER_COLUMNS}
            row.update(layer=i, name=name, normalize=self.options.get("normalize"))
            row["skipped_reason"] = self.skipped.get(name)
            row["nonfinite"] = int(self.capture.nonfinite.get(name, 0))
            if name in self.reports:
                row.update(self.reports[name].row())
            rows.append(row)
        return pd.DataFrame(rows, columns=LAYER_COLUMNS)

    @property
    def saturation(self) -> pd.DataFrame:
        """Nearest-pattern distance against the fraction of patterns stored (the paper's Fig. 2)."""
        rows = []
        for i, name in enumerate(self.layer_names):
            rep = self.reports.get(name)
            if rep is None:
                continue
            for frac, dists in sorted(rep.saturation_nn.items()):
                d = np.asarray(dists, dtype=np.float64)
                rows.append(
                    {
                        "layer": i,
                        "name": name,
                        "fraction": frac,
                        "mean": float(d.mean()) if d.size else math.nan,
                        "median": float(np.median(d)) if d.size else math.nan,
                        "n_queries": int(d.size),
                    }
                )
        columns = ["layer", "name", "fraction", "mean", "median", "n_queries"]
        return pd.DataFrame(rows, columns=columns)

    @property
    def samples(self) -> pd.DataFrame:
        """One row per sequence: its text, its scores, and where it sits in the final layer."""
        cap = self.capture
        n = len(self.texts)
        nan = np.full(n, np.nan)
        ratio = np.full(n, np.nan)
        basin = np.full(n, -1, dtype=np.int64)
        last = self.layer_names[-1]
        rep = self.reports.get(last)
        if rep is not None and rep.r_hat > 0:
            rows = np.asarray(rep.valid_rows)
            seq = cap.row_sequence[rows]
            r = rep.nn / rep.r_hat
            # Several rows per sequence (positions="all"): the mean ratio, the last row's basin.
            sums = np.bincount(seq, weights=r, minlength=n)
            counts = np.bincount(seq, minlength=n)
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
            basin[seq] = cap.row_sequence[rows[rep.basin]]
        return pd.DataFrame(
            {
                "sequence": np.arange(n),
                "text": self.texts,
                "cross_entropy": nan if cap.seq_nll is None else cap.seq_nll,
                "min_k": nan if cap.seq_min_k is None else cap.seq_min_k,
                "top1": nan if cap.seq_top1 is None else cap.seq_top1,
                "distance_ratio": ratio,
                "basin": basin,
            }
        )

    # --------------------------------------------------------------- summary
    def summary(self) -> dict[str, Any]:
        """The headline numbers: model and data size, cross-entropy against the floor."""
        cap = self.capture
        final = self.reports.get(self.layer_names[-1])
        n_big = self.n_params_blocks
        ce = cap.cross_entropy
        return {
            "model": self.model_name,
            "n_params_total": self.n_params_total,
            "n_params_blocks": self.n_params_blocks,
            "n_layers": self.n_blocks,
            "hidden_size": self.hidden_size,
            "n_sequences": len(self.texts),
            "n_tokens": self.n_tokens,
            "n_patterns": None if final is None else final.n_patterns,
            "cross_entropy": ce,
            "loss_note": cap.loss_note,
            "floor_low": None if final is None else final.floor_low,
            "floor_high": None if final is None else final.floor_high,
            "floor_gauss": None if final is None else final.floor_gauss,
            "below_floor": None if (ce is None or final is None) else bool(ce < final.floor_low),
            "chinchilla_loss": float(chinchilla_loss(self.n_params_total, self.n_tokens)),
            "log10_N": math.log10(n_big) if n_big > 0 else None,
            "two_log10_D": 2 * math.log10(self.n_tokens) if self.n_tokens > 0 else None,
            "normalize": self.options.get("normalize"),
            "positions": self.options.get("positions"),
            "compute_dtype": cap.compute_dtype,
            "store_dtype": self.options.get("store_dtype"),
            "capture_seconds": cap.seconds,
            "tokens_per_second": cap.tokens_per_second,
            "total_seconds": self.timings.get("total"),
            "peak_rss_mb": self.memory.get("peak_rss_mb"),
            "peak_rss_stage": self.memory.get("peak_rss_stage"),
        }

    def summary_text(self) -> str:
        """The summary as aligned ``key: value`` lines, for the shell."""
        s = self.summary()
        width = max(len(k) for k in s)
        lines = []
        for key, value in s.items():
            if isinstance(value, float):
                value = f"{value:.4g}"
            lines.append(f"{key:<{width}}  {value}")
        return "\n".join(lines)

    # ---------------------------------------------------------------- access
    def _layer_name(self, layer: int | str) -> str:
        if isinstance(layer, (int, np.integer)):
            if not -len(self.layer_names) <= layer < len(self.layer_names):
                last = len(self.layer_names) - 1
                raise HopauditError(f"layer {layer} out of range: this audit has layers 0..{last}")
            return self.layer_names[layer]
        if layer not in self.layer_names:
            raise HopauditError(
                f"no layer named {layer!r}; layers are {self.layer_names[0]!r} .. "
                f"{self.layer_names[-1]!r} (see audit.layers)"
            )
        return layer

    def activations(self, layer: int | str) -> np.ndarray:
        """The captured array of a layer (id or name): (n_rows, hidden), storage dtype."""
        return self.capture.store.get(self._layer_name(layer))

    def layer_report(self, layer: int | str) -> LayerReport:
        """The full :class:`~hopaudit.measure.LayerReport` of a layer (id or name)."""
        name = self._layer_name(layer)
        if name not in self.reports:
            raise HopauditError(f"layer {name!r} was skipped: {self.skipped.get(name)}")
        return self.reports[name]

    def report(self, layer: int | str) -> LayerReport:
        """Deprecated alias of :meth:`layer_report` (``report`` read as the HTML report)."""
        warnings.warn(
            "Audit.report(layer) is renamed Audit.layer_report(layer); the old name goes in the "
            "next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.layer_report(layer)

    # ------------------------------------------------------------------ disk
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write this audit to a directory; ``hopaudit.load(path)`` reads it back whole."""
        from .persist import save_audit

        return save_audit(self, path, overwrite=overwrite)

    # ----------------------------------------------------------------- views
    def widget_state(self, **options: Any) -> dict[str, Any]:
        """The view's state (see :func:`hopaudit.widget.widget_state` for ``options``, e.g.
        ``text_chars``); ``widget()``, ``to_html()`` and the notebook render it."""
        from .widget import widget_state

        return widget_state(self, **options)

    def __repr__(self) -> str:
        s = self.summary()
        ce = "n/a" if s["cross_entropy"] is None else f"{s['cross_entropy']:.3f}"
        return (
            f"<Audit {s['model']}: {s['n_layers']} blocks + final, {s['n_sequences']} sequences, "
            f"{s['n_tokens']} tokens, cross-entropy {ce}, normalize={s['normalize']}>"
        )
