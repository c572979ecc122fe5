"""The result of one audit: per-layer table, per-sequence samples, summary, and its views."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hopaudit.errors import HopauditError
from hopaudit.evidence.geometric import (
    KEPT_SCORES,
    layer_mean,
    log_distance_ratio,
    nearest_heldout,
    per_sequence_mean,
    row_norms,
)
from hopaudit.evidence.membership import MEMBERSHIP_COLUMNS, membership_table, roc_curve
from hopaudit.layer.embedding import Embedding
from hopaudit.layer.measuring import ROW_COLUMNS, LayerReport
from hopaudit.layer.patterns import layer_patterns
from hopaudit.theory import chinchilla_loss, floor_words
from hopaudit.views.protocol import View

if TYPE_CHECKING:
    from hopaudit.capture.result import CaptureResult
    from hopaudit.results.query import QueryResult

#: The per-layer table's columns, in order (one row per layer, ``final`` last): the stable id
#: and full name, what :meth:`LayerReport.row` gives, and why a layer was skipped.
LAYER_COLUMNS = ["layer", "name", "stack", *ROW_COLUMNS, "skipped_reason"]

#: The membership scores of ``samples`` and ``heldout_samples``, each oriented so that *higher
#: means more likely memorized* (a member of the training data); docs/theory.md §6:
#: ``loss`` -(mean token NLL); ``zlib`` -(NLL sum) / zlib bytes of the text (Carlini et al.
#: 2021); ``min_k`` Min-K% Prob (Shi et al. 2023); ``min_k_pp`` Min-K%++ (Zhang et al. 2024);
#: ``ref_loss_diff`` NLL under ``reference=`` minus NLL under the model (Carlini et al. 2021).
#: The geometric score -(nn / r_hat), per layer, is :meth:`Audit.geometric_scores`; the
#: geometric scores the validity study kept (``KEPT_SCORES``) its ``per_layer=False``.
SCORE_COLUMNS = ("loss", "zlib", "min_k", "min_k_pp", "ref_loss_diff")
GEOMETRIC = "geometric"


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
    heldout_texts: list[str] | None = None  # decoded text of every held-out sequence
    extraction: dict[str, Any] | None = None  # prefix, suffix, seconds, tokens/s, or a note
    #: Per-sequence columns given to ``audit(metadata=...)`` (joined to ``samples``), or None.
    metadata: pd.DataFrame | None = None
    memory: dict[str, Any] = field(default_factory=dict)  # peak RSS and its stage (memory.py)

    # ---------------------------------------------------------------- tables
    @property
    def layers(self) -> pd.DataFrame:
        """One row per layer: stable id, full module path, and every docs/theory.md quantity."""
        rows = []
        for i, name in enumerate(self.layer_names):
            row: dict[str, Any] = {c: math.nan for c in LAYER_COLUMNS}
            row.update(layer=i, name=name, normalize=self.options.get("normalize"))
            row["stack"] = _stack_of(self.capture, name)
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
        """One row per stored sequence: its text, its scores, and where it sits in the final
        layer. ``cross_entropy`` is the mean token NLL and ``top1`` the next-token accuracy;
        ``distance_ratio`` nn / r_hat at the final layer (the mean over a sequence's rows) and
        ``basin`` the sequence of its nearest other pattern there. The membership scores
        (``SCORE_COLUMNS``: loss, zlib, min_k, min_k_pp, ref_loss_diff) are each oriented so
        that higher means more likely memorized; NaN where a score is not available (an
        encoder has no loss; ref_loss_diff needs ``reference=``). With ``extraction=``:
        ``extracted`` (greedy decoding reproduced the whole suffix) and ``extracted_tokens``
        (how many leading suffix tokens it reproduced). The columns given to
        ``audit(metadata=...)`` follow."""
        table = self._sequence_frame(heldout=False)
        if self.metadata is None:
            return table
        return pd.concat([table, self.metadata.reset_index(drop=True)], axis=1)

    @property
    def heldout_samples(self) -> pd.DataFrame:
        """The held-out sequences (``heldout=``), with the columns of :attr:`samples`; their
        ``distance_ratio`` is the distance to the nearest stored pattern over r_hat and their
        ``basin`` that pattern's stored sequence. Empty without held-out data."""
        return self._sequence_frame(heldout=True)

    def _sequence_frame(self, heldout: bool) -> pd.DataFrame:
        cap = self.heldout_capture if heldout else self.capture
        texts = (self.heldout_texts or []) if heldout else self.texts
        if cap is None:
            return pd.DataFrame(columns=list(self.samples.columns))
        n = self._n_sequences(heldout)
        no_texts = heldout and len(texts) != n  # saved by a hopaudit without held-out texts
        if no_texts:
            texts = [""] * n
        nan = np.full(n, np.nan)
        ratio = np.full(n, np.nan)
        basin = np.full(n, -1, dtype=np.int64)
        last = self.layer_names[-1]
        rep = self.reports.get(last)
        if rep is not None and rep.r_hat > 0:
            ratio = self._ratio(last, heldout, n)
            row_seq = _rows_of(cap, last)  # the last layer's own stack's rows
            stored_seq = _rows_of(self.capture, last)
            if heldout and rep.basin_queries is not None:
                rows = np.asarray(rep.query_rows)
                basin[row_seq[rows]] = stored_seq[np.asarray(rep.valid_rows)[rep.basin_queries]]
            elif not heldout:
                rows = np.asarray(rep.valid_rows)
                basin[row_seq[rows]] = row_seq[rows[rep.basin]]
        frame = {
            "sequence": np.arange(n),
            "text": texts,
            "cross_entropy": nan if cap.seq_nll is None else cap.seq_nll,
            "min_k": nan if cap.seq_min_k is None else cap.seq_min_k,
            "top1": nan if cap.seq_top1 is None else cap.seq_top1,
            "distance_ratio": ratio,
            "basin": basin,
        }
        frame.update(_score_columns(cap, texts))
        if no_texts:
            frame["zlib"] = nan  # zlib needs the text
        ex = getattr(cap, "seq_extracted_tokens", None)
        if ex is not None and self.extraction and self.extraction.get("suffix"):
            frame["extracted"] = np.asarray(ex) >= int(self.extraction["suffix"])
            frame["extracted_tokens"] = np.asarray(ex, dtype=np.int64)
        return pd.DataFrame(frame)

    def _n_sequences(self, heldout: bool) -> int:
        """Sequences of the stored (or held-out) set, also for saves without held-out texts."""
        if not heldout:
            return len(self.texts)
        cap = self.heldout_capture
        if cap is None:
            return 0
        if cap.seq_nll is not None:
            return int(cap.seq_nll.size)
        if self.heldout_texts is not None:
            return len(self.heldout_texts)
        return int(cap.row_sequence.max()) + 1 if cap.row_sequence.size else 0

    def _ratio(self, layer: str, heldout: bool, n: int) -> np.ndarray:
        """nn / r_hat of every sequence at ``layer`` (mean over its rows); NaN where unknown."""
        rep = self.reports.get(layer)
        cap = self.heldout_capture if heldout else self.capture
        out = np.full(n, np.nan)
        if rep is None or not rep.r_hat > 0 or cap is None:
            return out
        if heldout:
            if rep.nn_queries is None:
                return out
            rows, dist = np.asarray(rep.query_rows), np.asarray(rep.nn_queries)
        else:
            rows, dist = np.asarray(rep.valid_rows), np.asarray(rep.nn)
        seq = _rows_of(cap, layer)[rows]  # the layer's own stack's rows (encoder-decoders)
        return per_sequence_mean(dist / rep.r_hat, seq, n)

    def geometric_scores(self, which: str = "stored", per_layer: bool = True) -> pd.DataFrame:
        """The geometric membership scores of each sequence (higher = more likely memorized).

        ``per_layer=True``: -(nn / r_hat), sequences x layers: closer to another stored pattern
        than is typical at that layer. ``per_layer=False``: the scores the validity study kept
        (:data:`hopaudit.evidence.geometric.KEPT_SCORES`, docs/validity.md), one column each:
        ``nn_ratio_layers`` (the ratio averaged over layers), ``member_vs_heldout`` (log of the
        nearest held-out over the nearest stored distance at ``final``; NaN without
        ``heldout=``) and ``norm_reversed`` (minus the last block's pattern norm).

        ``which="stored"``: each stored sequence, its nearest *other* stored pattern;
        ``"heldout"``: each held-out sequence, its nearest stored pattern. Several rows per
        sequence (``positions="all"``) are averaged; skipped layers are NaN.
        """
        if which not in ("stored", "heldout"):
            raise HopauditError(f"which must be 'stored' or 'heldout', got {which!r}")
        if not per_layer:
            return self._kept_geometric[which].copy()
        heldout = which == "heldout"
        cap = self.heldout_capture if heldout else self.capture
        n = 0 if cap is None else self._n_sequences(heldout)
        data = {name: -self._ratio(name, heldout, n) for name in self.layer_names}
        frame = pd.DataFrame(data, index=pd.RangeIndex(n, name="sequence"))
        frame.columns.name = "layer"
        return frame

    @cached_property
    def _kept_geometric(self) -> dict[str, pd.DataFrame]:
        """The kept geometric scores (``KEPT_SCORES``) of the stored and held-out sequences,
        computed together: the member-against-held-out score searches both sets once."""
        out = {}
        sizes = {w: self._n_sequences(w == "heldout") for w in ("stored", "heldout")}
        member = self._member_vs_heldout(sizes)
        for which, n in sizes.items():
            cap = self.heldout_capture if which == "heldout" else self.capture
            ratios = self.geometric_scores(which).to_numpy()
            frame = pd.DataFrame(
                {
                    "nn_ratio_layers": layer_mean(ratios),
                    "member_vs_heldout": member[which],
                    "norm_reversed": -self._norms(cap, n),
                },
                index=pd.RangeIndex(n, name="sequence"),
            )
            frame.columns.name = "score"
            out[which] = frame
        return out

    def _norms(self, cap: Any, n: int) -> np.ndarray:
        """Each sequence's mean raw pattern norm at the last block (``final`` alone: there)."""
        name = self.layer_names[-2] if len(self.layer_names) > 1 else self.layer_names[-1]
        if cap is None or n == 0 or name not in getattr(cap.store, "layer_names", ()):
            return np.full(n, np.nan)
        try:
            norms = row_norms(cap.store.get(name))
        finally:
            cap.store.release(name)  # one layer in memory at a time
        return per_sequence_mean(norms, _rows_of(cap, name), n)

    def _member_vs_heldout(self, sizes: dict[str, int]) -> dict[str, np.ndarray]:
        """log(nearest held-out / nearest stored distance) at ``final``, per sequence, for the
        stored and held-out sets (a pattern is never its own neighbour); NaN where unknown."""
        out = {w: np.full(n, np.nan) for w, n in sizes.items()}
        final = self.layer_names[-1]
        rep, held = self.reports.get(final), self.heldout_capture
        if rep is None or held is None or rep.nn_queries is None or rep.query_rows is None:
            return out
        rows = {"stored": np.asarray(rep.valid_rows), "heldout": np.asarray(rep.query_rows)}
        if rows["heldout"].size < 2 or rows["stored"].size < 1:
            return out
        stored = layer_patterns(self.capture.store, final, rows["stored"], rep.normalize)
        queries = layer_patterns(held.store, final, rows["heldout"], rep.normalize)
        to_heldout, among_heldout = nearest_heldout(stored, queries)
        per_row = {
            "stored": log_distance_ratio(to_heldout, rep.nn),
            "heldout": log_distance_ratio(among_heldout, rep.nn_queries),
        }
        for which, cap in (("stored", self.capture), ("heldout", held)):
            seq = _rows_of(cap, final)[rows[which]]
            out[which] = per_sequence_mean(per_row[which], seq, sizes[which])
        return out

    def _membership_inputs(self) -> tuple[dict, dict]:
        members: dict[tuple[str, str | None], np.ndarray] = {}
        nonmembers: dict[tuple[str, str | None], np.ndarray] = {}
        stored, held = self.samples, self.heldout_samples
        for col in SCORE_COLUMNS:
            members[(col, None)] = stored[col].to_numpy(dtype=np.float64)
            nonmembers[(col, None)] = held[col].to_numpy(dtype=np.float64)
        g_in, g_out = self.geometric_scores("stored"), self.geometric_scores("heldout")
        for name in self.layer_names:
            members[(GEOMETRIC, name)] = g_in[name].to_numpy(dtype=np.float64)
            nonmembers[(GEOMETRIC, name)] = g_out[name].to_numpy(dtype=np.float64)
        k_in, k_out = self._kept_geometric["stored"], self._kept_geometric["heldout"]
        for col in KEPT_SCORES:
            members[(col, None)] = k_in[col].to_numpy(dtype=np.float64)
            nonmembers[(col, None)] = k_out[col].to_numpy(dtype=np.float64)
        return members, nonmembers

    @cached_property
    def membership(self) -> pd.DataFrame:
        """How well each score tells stored sequences (members) from held-out ones
        (non-members): one row per score (the loss scores, then the geometric scores the
        validity study kept, ``per_layer=False`` of :meth:`geometric_scores`), and per layer
        for the geometric score -(nn / r_hat), with the AUROC, its 95 % bootstrap interval
        over sequences, the TPR at 1 % and 5 % FPR and the class sizes. Every score is
        oriented higher = member, so 0.5 is chance and 1 perfect. Empty without ``heldout=``;
        ``membership.attrs["reason"]`` then says why."""
        reason = None
        if self.heldout_capture is None:
            reason = "no held-out data: pass heldout= to audit() to evaluate membership scores"
            table = pd.DataFrame(columns=MEMBERSHIP_COLUMNS)
        else:
            members, nonmembers = self._membership_inputs()
            boot = self.options.get("bootstrap")
            table = membership_table(
                members,
                nonmembers,
                n_boot=200 if boot is None else int(boot),
                seed=int(self.options.get("seed") or 0),
            )
            if table.empty:
                reason = "no score has finite values for at least 2 stored and 2 held-out sequences"
        table.attrs["reason"] = reason
        return table

    def roc(self, score: str, layer: int | str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(fpr, tpr) of a score's ROC curve, stored = members, held-out = non-members; one
        point per distinct score value, from (0, 0) to (1, 1). ``layer`` for ``"geometric"``."""
        members, nonmembers = self._membership_inputs()
        key = (score, self._layer_name(layer) if score == GEOMETRIC else None)
        if key not in members or self.heldout_capture is None:
            raise HopauditError(
                f"no ROC for {score!r}: scores are {list(SCORE_COLUMNS + KEPT_SCORES)} and "
                f"{GEOMETRIC!r} (with a layer), and an audit needs heldout= for one"
            )
        fpr, tpr, _ = roc_curve(members[key], nonmembers[key])
        return fpr, tpr

    def roc_curves(self) -> dict[tuple[str, str | None], tuple[np.ndarray, np.ndarray]]:
        """(fpr, tpr) of every row of :attr:`membership`, keyed by (score, layer)."""
        members, nonmembers = self._membership_inputs() if self.heldout_capture else ({}, {})
        out = {}
        for row in self.membership.itertuples():
            key = (row.score, row.layer if row.score == GEOMETRIC else None)
            fpr, tpr, _ = roc_curve(members[key], nonmembers[key])
            out[key] = (fpr, tpr)
        return out

    def selected(self, widget: Any = None) -> pd.DataFrame:
        """The rows of :attr:`samples` selected in the basins view (shift+drag a box or a
        lasso), of ``widget`` or else of the view shown last (``audit`` as a cell's last line,
        or ``audit.widget()``)."""
        view = widget if widget is not None else getattr(self, "_last_view", None)
        if view is None:
            raise HopauditError(
                "no view of this audit was shown yet: show it (audit as a cell's last line, or "
                "w = audit.widget()), select points in the basins view with shift+drag, then "
                "call audit.selected() (or audit.selected(w))"
            )
        if not hasattr(view, "selection"):
            raise HopauditError(
                f"{type(view).__name__} has no selection; pass the widget of this audit "
                "(audit.widget())"
            )
        drawn_from = getattr(view, "drawn_from", None)
        if drawn_from is not None and drawn_from() is not self:
            raise HopauditError(
                "this widget shows another audit, so its selection names that audit's "
                "sequences, not this one's; call selected() on the audit it was drawn from, or "
                "pass this audit's widget (audit.widget())"
            )
        samples = self.samples
        ids = [int(i) for i in view.selection]
        return samples[samples["sequence"].isin(ids)]

    # --------------------------------------------------------------- summary
    def summary(self) -> dict[str, Any]:
        """The headline numbers: model and data size, cross-entropy against the floor. JSON-safe,
        with stable types: int, float, str, bool or None (never NaN, inf or numpy scalars)."""
        from hopaudit.jsonable import json_safe

        cap = self.capture
        final = self.reports.get(self.layer_names[-1])
        n_big = self.n_params_blocks
        ce = cap.cross_entropy
        out = {
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
            "floor_low_lo": None if final is None else final.floor_low_lo,
            "floor_low_hi": None if final is None else final.floor_low_hi,
            "floor_high_lo": None if final is None else final.floor_high_lo,
            "floor_high_hi": None if final is None else final.floor_high_hi,
            "below_floor": None if (ce is None or final is None) else bool(ce < final.floor_low),
            "chinchilla_loss": float(chinchilla_loss(self.n_params_total, self.n_tokens)),
            "log10_N": math.log10(n_big) if n_big > 0 else None,
            "two_log10_D": 2 * math.log10(self.n_tokens) if self.n_tokens > 0 else None,
            "normalize": self.options.get("normalize"),
            "positions": self.options.get("positions"),
            "compute_dtype": cap.compute_dtype,
            "compiled": getattr(cap, "compiled", None),
            "store_dtype": self.options.get("store_dtype"),
            # "encoder,decoder" or one stack's name: a string, as summary values are scalars
            "stacks": _joined(self.options.get("stacks")),
            "architecture_note": self.options.get("architecture_note"),
            "capture_seconds": cap.seconds,
            "tokens_per_second": cap.tokens_per_second,
            "total_seconds": self.timings.get("total"),
            **self._evidence_summary(),
            "peak_rss_mb": self.memory.get("peak_rss_mb"),
            "peak_rss_stage": self.memory.get("peak_rss_stage"),
            # engine="ray": the largest resident set of any Ray actor or task, and its stage
            "peak_rss_worker_mb": self.memory.get("peak_rss_worker_mb"),
            "peak_rss_worker_stage": self.memory.get("peak_rss_worker_stage"),
        }
        # positions may be "last" or a list of ints: one type (str), spelled as the CLI takes it
        pos = out["positions"]
        if pos is not None and not isinstance(pos, str):
            out["positions"] = ",".join(map(str, np.atleast_1d(pos).tolist()))
        return json_safe(out)

    def _evidence_summary(self) -> dict[str, Any]:
        """Extraction rates of the stored and held-out sequences (None when not run, with the
        reason in ``extraction_note`` where there is one)."""
        ex = self.extraction or {}
        out: dict[str, Any] = {
            "extraction_rate": None,
            "extraction_rate_heldout": None,
            "extraction_note": ex.get("note"),
        }
        for key, cap in (
            ("extraction_rate", self.capture),
            ("extraction_rate_heldout", self.heldout_capture),
        ):
            tokens = None if cap is None else getattr(cap, "seq_extracted_tokens", None)
            if tokens is not None and ex.get("suffix") and len(tokens):
                out[key] = float(np.mean(np.asarray(tokens) >= int(ex["suffix"])))
        return out

    def summary_text(self) -> str:
        """The summary as aligned ``key: value`` lines, for the shell."""
        s = self.summary()
        width = max(len(k) for k in s)
        lines = []
        for key, value in s.items():
            if isinstance(value, float) and key.startswith("floor_"):
                value = floor_words(value)  # "no finite floor ..." rather than inf
            elif isinstance(value, float):
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

    # ----------------------------------------------------------------- query
    def query(
        self,
        texts: str | list[str],
        model: Any = None,
        *,
        layers: Any = None,
        k: int = 5,
        **options: Any,
    ) -> QueryResult:
        """Ask the audit about new texts (a str, a list of str, or an (n, length) tensor of
        token ids, one sequence per row): their membership scores and extraction
        (``.scores``), the ``k`` stored sequences each lies nearest to at each layer
        (``.nearest``, with distance / r_hat and whether it lies inside that pattern's ball,
        docs/theory.md §2), and their places on the UMAP layouts (``.placements``).

        The texts go through the audit's own capture (blocks, positions, store dtype,
        precision, normalization) and each layer's own index. ``model`` defaults to the audited
        model while it is alive; a loaded audit needs it passed (a model object or a path), and
        any other model is refused. ``layers``: ids or names (default: every measured layer).
        ``options``: ``tokenizer``, ``reference`` (for ref_loss_diff, when the audit had one),
        ``extraction`` (``{"prefix": p, "suffix": s}``, False; default the audit's lengths, else
        32 + 32), ``place`` (False: no UMAP placement), ``batch_size``. The audit is unchanged.
        """
        from hopaudit.results.query import run_query

        return run_query(self, texts, model, layers=layers, k=k, **options)

    def attach_model(self, model: Any, *, tokenizer: Any = None, reference: Any = None) -> None:
        """Remember the audited model (weakly: the audit never keeps it alive), its tokenizer
        and reference model, so :meth:`query` can default to them; ``audit()`` calls this."""
        from hopaudit.results.query import ModelLink

        self.model_link = ModelLink(model, tokenizer=tokenizer, reference=reference)

    # ------------------------------------------------------------------ disk
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write this audit to a directory; ``hopaudit.load(path)`` reads it back whole."""
        from hopaudit.storage.save import save_audit

        return save_audit(self, path, overwrite=overwrite)

    # ----------------------------------------------------------------- views
    def widget_state(self, **options: Any) -> dict[str, Any]:
        """The view's state (see :func:`hopaudit.widget.widget_state` for ``options``, e.g.
        ``text_chars``); ``widget()``, ``to_html()`` and the notebook render it."""
        from hopaudit.views.widget import widget_state

        return widget_state(self, **options)

    def __repr__(self) -> str:
        s = self.summary()
        ce = "n/a" if s["cross_entropy"] is None else f"{s['cross_entropy']:.3f}"
        return (
            f"<Audit {s['model']}: {s['n_layers']} blocks + final, {s['n_sequences']} sequences, "
            f"{s['n_tokens']} tokens, cross-entropy {ce}, normalize={s['normalize']}>"
        )


def _stack_of(capture: Any, layer: str) -> str | None:
    """The stack of a layer; captures saved before stacks existed have one, unnamed."""
    stack_of = getattr(capture, "stack_of", None)
    return stack_of(layer) if callable(stack_of) else None


def _rows_of(capture: Any, layer: str) -> np.ndarray:
    rows_of = getattr(capture, "rows_of", None)
    return rows_of(layer)[0] if callable(rows_of) else capture.row_sequence


def _score_columns(cap: Any, texts: list[str]) -> dict[str, np.ndarray]:
    """The membership scores (``SCORE_COLUMNS``) of one capture, oriented higher = member."""
    n = len(texts)
    nan = np.full(n, np.nan)
    nll = cap.seq_nll
    counts = getattr(cap, "seq_n_predicted", None)
    ref = getattr(cap, "seq_ref_nll", None)
    min_k_pp = getattr(cap, "seq_min_k_pp", None)
    zlib = nan
    if nll is not None and counts is not None:
        from hopaudit.evidence.scores import zlib_score  # torch: imported when scored

        zlib = zlib_score(np.asarray(nll) * np.asarray(counts), texts)
    return {
        "loss": nan if nll is None else -np.asarray(nll),
        "zlib": zlib,
        "min_k_pp": nan if min_k_pp is None else np.asarray(min_k_pp, dtype=np.float64),
        "ref_loss_diff": nan if ref is None or nll is None else np.asarray(ref) - np.asarray(nll),
    }


def _joined(names: Any) -> str | None:
    """A list of names as one comma-separated string (None stays None)."""
    if names is None or isinstance(names, str):
        return names
    return ",".join(str(n) for n in names)
