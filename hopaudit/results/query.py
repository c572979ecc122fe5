"""Ask an audit about any text: its membership scores, its extraction, and the stored
sequences it lies nearest to at each layer (``Audit.query``).

The texts go through the *same* capture as the audit: the blocks it hooked, its positions,
its store dtype and its forward precision (bfloat16 autocast exactly when the audit's forward
ran in it; eager even after a ``compile=True`` audit, whose compilation would cost a query more
than it saves: the rows then differ by the compiled kernels' rounding), and the rows are
normalized by the one function that made the layer's patterns
(:func:`hopaudit.layer.patterns.layer_patterns`). Each layer's own index answers the search
(:mod:`hopaudit.layer.nearest` turns nearest patterns into nearest sequences), and for the layers
with a UMAP the point is placed on the fitted layout (:func:`hopaudit.layer.embedding.place`).
Nothing of the audit changes: an index opened for the query is released again after it.
"""

from __future__ import annotations

import json
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from hopaudit.errors import DataError, HopauditError, ModelError, SearchError
from hopaudit.evidence.extract import DEFAULT_PREFIX, DEFAULT_SUFFIX, extraction_unsupported
from hopaudit.layer.embedding import layout_parameters
from hopaudit.layer.nearest import nearest_sequences, neighbours_needed

if TYPE_CHECKING:
    from hopaudit.results.audit import Audit

__all__ = [
    "NEAREST_COLUMNS",
    "PLACEMENT_COLUMNS",
    "ModelLink",
    "QueryResult",
    "check_model",
    "run_query",
]

#: ``QueryResult.nearest``'s columns: one row per query, layer and neighbour.
NEAREST_COLUMNS = [
    "query",
    "layer",
    "name",
    "rank",
    "sequence",
    "text",
    "distance",
    "distance_over_r_hat",
    "inside_ball",
]
#: The config key that holds where a model was loaded from: its name is compared instead.
PATH_KEY = "_name_or_path"
#: ``QueryResult.placements``'s columns: one row per query row and UMAP layer.
PLACEMENT_COLUMNS = ["query", "layer", "name", "x", "y"]


class ModelLink:
    """Weak references to the audited model (and its reference model) and the tokenizer the
    audit was given, so ``Audit.query`` needs no model while the audited one is alive; the
    audit never keeps a model alive. A pickled or saved audit loses the link."""

    def __init__(self, model: Any = None, *, tokenizer: Any = None, reference: Any = None):
        self._model = _weak(model)
        self._reference = _weak(reference)
        self.tokenizer = tokenizer

    @property
    def model(self) -> Any:
        return None if self._model is None else self._model()

    @property
    def reference(self) -> Any:
        return None if self._reference is None else self._reference()

    def __reduce__(self) -> tuple:
        return (ModelLink, ())


def _weak(obj: Any) -> Any:
    if obj is None:
        return None
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


@dataclass
class QueryResult:
    """What an audit says about new texts.

    ``scores``: one row per text (``query`` = its position in the input): its text as the
    tokenizer cut it, ``n_tokens``, the membership scores of ``Audit.samples`` (loss, zlib,
    min_k, min_k_pp; ref_loss_diff when the audit had a reference model), and the extraction:
    ``extracted`` (greedy decoding from the first ``prefix`` tokens reproduced the next
    ``suffix``), ``extracted_tokens`` (how many leading ones it reproduced) and
    ``compared_tokens`` (how many the text holds to compare, at most ``suffix``).
    ``nearest``: one row per text, layer and neighbour (``NEAREST_COLUMNS``): ``sequence`` is
    the row of ``Audit.samples``, ``distance`` plain L2 to its nearest pattern,
    ``inside_ball`` whether the text lies in that pattern's ball (docs/theory.md §2).
    ``placements``: the text's place on each UMAP layout (``PLACEMENT_COLUMNS``).
    """

    texts: list[str]
    scores: pd.DataFrame
    nearest: pd.DataFrame
    placements: pd.DataFrame
    extraction: dict[str, Any] = field(default_factory=dict)  # prefix, suffix, or a note
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values: the three tables as lists of records, the notes and timings."""
        from hopaudit.jsonable import json_safe

        return json_safe(
            {
                "scores": self.scores.to_dict("records"),
                "nearest": self.nearest.to_dict("records"),
                "placements": self.placements.to_dict("records"),
                "extraction": self.extraction,
                "notes": list(self.notes),
                "seconds": dict(self.seconds),
            }
        )

    def __repr__(self) -> str:
        layers = self.nearest["name"].nunique() if len(self.nearest) else 0
        return f"<QueryResult: {len(self.texts)} texts, {layers} layers searched>"


# ---------------------------------------------------------------------------- checks
def check_texts(texts: Any) -> Any:
    """A text or a list of texts, none empty, or an (n, length) integer tensor of token ids
    (one sequence per row); a :class:`DataError` naming the fix otherwise."""
    if isinstance(texts, torch.Tensor):
        if texts.ndim != 2 or texts.shape[0] == 0 or texts.shape[1] == 0:
            raise DataError(
                f"token ids must be an (n, length) tensor with n, length >= 1, got shape "
                f"{tuple(texts.shape)}"
            )
        if texts.dtype.is_floating_point or texts.dtype == torch.bool:
            raise DataError(f"token ids must be integers, got {texts.dtype}")
        return texts.long()
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not texts:
        raise DataError(
            f"query takes a text or a non-empty list of texts, got {type(texts).__name__}"
            + (" (empty)" if isinstance(texts, (list, tuple)) else "")
        )
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"text {i} is a {type(t).__name__}, not a str; pass strings")
        if not t.strip():
            raise DataError(f"text {i} is empty: give it some words, or leave it out")
    return list(texts)


def check_model(audit: Audit, model: Any) -> None:
    """Is ``model`` the audited model (name, config and parameter count as the audit recorded
    them)? A :class:`ModelError` naming what differs otherwise."""
    from hopaudit.model.blocks import count_parameters
    from hopaudit.model.identity import config_dict, model_name, weights_digest

    if not isinstance(model, torch.nn.Module):
        raise ModelError(
            f"model must be a torch model (the audited one), got {type(model).__name__}"
        )
    differ = []
    given = _plain(config_dict(model))
    recorded = _plain(audit.model_config)
    keys = sorted(
        k for k in set(given) | set(recorded) if k != PATH_KEY and given.get(k) != recorded.get(k)
    )
    if keys:
        shown = ", ".join(f"{k}: {given.get(k)!r} vs {recorded.get(k)!r}" for k in keys[:4])
        differ.append(f"its config differs ({shown}{', ...' if len(keys) > 4 else ''})")
    total = count_parameters(model, [])[0]  # the total does not depend on the blocks
    if total != audit.n_params_total:
        differ.append(f"it has {total:,} parameters, the audited model {audit.n_params_total:,}")
    digest = audit.options.get("weights_digest")
    same_weights = bool(digest) and weights_digest(model) == digest
    if not differ and digest and not same_weights and weights_digest(model) is not None:
        differ.append("its weights differ from the audited model's (another checkpoint?)")
    name = model_name(model)
    if name != audit.model_name and not same_weights:  # a moved copy of the same weights passes
        differ.insert(0, f"its name is {name!r}, the audit's {audit.model_name!r}")
    if differ:
        raise ModelError(
            "this model is not the audited one: "
            + "; ".join(differ)
            + ". Pass the model the audit was made with (the same weights under another name: "
            f"set model.hopaudit_name = {audit.model_name!r})"
        )


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    """A config as saved audits keep it (JSON round trip: tuples become lists)."""
    return json.loads(json.dumps(config, default=str))


def _layers(audit: Audit, layers: Any) -> list[str]:
    """The layer names to search: every measured one by default; ids or names otherwise."""
    if layers is None:
        return [n for n in audit.layer_names if n in audit.reports]
    if isinstance(layers, (str, int, np.integer)):
        layers = [layers]
    out = []
    last = len(audit.layer_names) - 1
    for layer in layers:
        if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
            if not -len(audit.layer_names) <= layer <= last:
                raise DataError(
                    f"layer {layer} does not exist: this audit has layers 0..{last} "
                    "(see audit.layers); pass ids in that range, names, or layers=None for all"
                )
            name = audit.layer_names[int(layer)]
        elif isinstance(layer, str) and layer in audit.layer_names:
            name = layer
        else:
            raise DataError(
                f"layer {layer!r} does not exist: this audit's layers are "
                f"{audit.layer_names[0]!r} .. {audit.layer_names[-1]!r} (ids 0..{last}, see "
                "audit.layers); pass one of them, or layers=None for all"
            )
        if name not in audit.reports:
            raise DataError(
                f"layer {name!r} was skipped by the audit ({audit.skipped.get(name)}), so it "
                "has no index to search; leave it out of layers="
            )
        if name not in out:
            out.append(name)
    return out


def _check_k(k: Any, audit: Audit) -> int:
    n = len(audit.texts)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DataError(f"k must be a positive integer (neighbours per layer), got {k!r}")
    if k > n:
        raise DataError(f"k={k} but the audit stores {n} sequences; pass k <= {n}")
    return int(k)


def _resolve_model(audit: Audit, model: Any, tokenizer: Any) -> tuple[Any, Any]:
    link = getattr(audit, "model_link", None) or ModelLink()
    if model is None:
        model = link.model
        if model is None:
            raise ModelError(
                "this audit holds no live model (it was loaded from disk, or the audited model "
                "was deleted): pass it, audit.query(texts, model); for the widget's box, "
                "audit.attach_model(model, tokenizer=...)"
            )
        tokenizer = tokenizer if tokenizer is not None else link.tokenizer
    elif isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from hopaudit.model.loading import load_model

        model, found = load_model(model, tokenizer=tokenizer)
        tokenizer = tokenizer if tokenizer is not None else found
    check_model(audit, model)
    if tokenizer is None and model is link.model:
        tokenizer = link.tokenizer
    return model, tokenizer


def _extraction_lengths(audit: Audit, extraction: Any) -> tuple[int, int] | None:
    """(prefix, suffix): the caller's, else the audit's, else 32 + 32; None: off."""
    from hopaudit.evidence.extract import parse_extraction

    if extraction is False:
        return None
    if extraction is not None and extraction is not True:
        return parse_extraction(extraction)
    ex = audit.extraction or {}
    if ex.get("prefix") and ex.get("suffix"):
        return int(ex["prefix"]), int(ex["suffix"])
    return DEFAULT_PREFIX, DEFAULT_SUFFIX


# ---------------------------------------------------------------------------- the query
def run_query(
    audit: Audit,
    texts: Any,
    model: Any = None,
    *,
    layers: Any = None,
    k: int = 5,
    tokenizer: Any = None,
    reference: Any = None,
    extraction: Any = None,
    place: bool = True,
    batch_size: int | None = None,
) -> QueryResult:
    """See :meth:`hopaudit.results.audit.Audit.query`."""
    t0 = time.perf_counter()
    texts = check_texts(texts)
    k = _check_k(k, audit)
    names = _layers(audit, layers)
    model, tokenizer = _resolve_model(audit, model, tokenizer)
    reference, notes = _resolve_reference(audit, model, reference)
    tokens = _tokenize(audit, texts, model, tokenizer)
    lengths, ex_info = _plan_extraction(model, tokens, _extraction_lengths(audit, extraction))
    if ex_info.get("note"):
        notes.append(ex_info["note"])
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    cap = _capture(audit, model, tokens, batch_size, lengths)
    seconds["forward"] = time.perf_counter() - t
    _check_rows(cap, names, tokens.num_sequences, audit.options.get("positions", "last"))
    t = time.perf_counter()
    ref_nll = None
    if reference is not None:
        from hopaudit.evidence.membership import reference_nll

        ref_nll = reference_nll(reference, tokens.input_ids, tokens.attention_mask, progress=False)
    seconds["reference"] = time.perf_counter() - t
    extracted = None if lengths is None else _extracted(cap, tokens, lengths)

    t = time.perf_counter()
    scores = _scores_frame(audit, tokens, cap, ref_nll, extracted)
    nearest, found = _search(audit, cap, names, k)
    seconds["search"] = time.perf_counter() - t
    t = time.perf_counter()
    placements = pd.DataFrame(columns=PLACEMENT_COLUMNS)
    if place:
        placements, place_notes = _place(audit, cap, names, found)
        notes.extend(place_notes)
    seconds["placement"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    return QueryResult(
        texts=list(texts) if isinstance(texts, list) else list(tokens.texts),
        scores=scores,
        nearest=nearest,
        placements=placements,
        extraction=ex_info,
        notes=notes,
        seconds=seconds,
    )


def _resolve_reference(audit: Audit, model: Any, reference: Any) -> tuple[Any, list[str]]:
    """The reference model for ref_loss_diff: the caller's, else the audit's while alive."""
    from hopaudit.model.identity import model_name

    recorded = audit.options.get("reference")
    if recorded is None:
        if reference is not None:
            raise DataError(
                "this audit had no reference model, so its membership has no ref_loss_diff to "
                "compare with; leave reference= out"
            )
        return None, []
    if reference is None:
        link = getattr(audit, "model_link", None)
        reference = None if link is None else link.reference
        if reference is None:
            return None, [
                f"ref_loss_diff not computed: the audit's reference model ({recorded}) is not "
                "alive; pass reference= to get it"
            ]
    if model_name(reference) != recorded:
        raise ModelError(
            f"reference {model_name(reference)!r} is not the audit's reference model "
            f"{recorded!r}; pass that one"
        )
    from hopaudit.evidence.membership import check_reference

    check_reference(model, reference)
    return reference, []


def _tokenize(audit: Audit, texts: Any, model: Any, tokenizer: Any) -> Any:
    """One sequence per text (or row of token ids), cut at the audit's max_length, as the
    audit's data was."""
    from hopaudit.data.prepare import find_tokenizer, prepare_data

    if tokenizer is None:
        tokenizer = find_tokenizer(model)
    if tokenizer is None and not isinstance(texts, torch.Tensor):
        raise ModelError(
            "no tokenizer for this model was found beside it: pass tokenizer= (the one the "
            "audit was made with)"
        )
    tokens = prepare_data(
        texts,
        tokenizer,
        max_length=audit.options.get("max_length"),
        chunking="document",
        model=model,
    )
    counts = tokens.attention_mask.sum(1)
    if tokens.num_sequences != len(texts) or bool((counts == 0).any()):
        empty = int(np.flatnonzero(counts.numpy() == 0)[0]) if bool((counts == 0).any()) else 0
        raise DataError(f"text {empty} gives no tokens: give it some words, or leave it out")
    return tokens


def _plan_extraction(
    model: Any, tokens: Any, lengths: tuple[int, int] | None
) -> tuple[tuple[int, int] | None, dict[str, Any]]:
    if lengths is None:
        return None, {"note": "no extraction: extraction=False"}
    why = extraction_unsupported(model)
    if why is not None:
        return None, {"note": f"no extraction: {why}"}
    prefix, suffix = lengths
    counts = tokens.attention_mask.sum(1).numpy()
    short = np.flatnonzero(counts <= prefix)
    if short.size:
        i = int(short[0])
        raise DataError(
            f"text {i} has {int(counts[i])} tokens, no more than the extraction prefix of "
            f"{prefix}, so there is nothing to extract; give a longer text, a shorter prefix "
            f"(extraction={{'prefix': {max(int(counts[i]) - 1, 1)}, 'suffix': {suffix}}}), or "
            "extraction=False"
        )
    return lengths, {"prefix": prefix, "suffix": suffix}


def _capture(
    audit: Audit,
    model: Any,
    tokens: Any,
    batch_size: int | None,
    extraction: tuple[int, int] | None = None,
) -> Any:
    """The audit's own capture of the query texts (blocks, positions, dtype, precision), with
    each text's extraction read off the same pass when ``extraction`` is given."""
    from hopaudit.capture.forward import capture
    from hopaudit.model.blocks import find_stacks

    stacks = find_stacks(model)
    if [n for st in stacks for n in st.layer_names] != list(audit.layer_names):
        recorded = audit.options.get("blocks")
        if recorded:
            stacks = find_stacks(model, recorded)
    got = [n for st in stacks for n in st.layer_names]
    if got != list(audit.layer_names):
        raise ModelError(
            f"this model's layers ({got[0]!r} .. {got[-1]!r}, {len(got)}) are not the audit's "
            f"({audit.layer_names[0]!r} .. {audit.layer_names[-1]!r}, {len(audit.layer_names)}); "
            "pass the audited model"
        )
    compute = str(getattr(audit.capture, "compute_dtype", None) or "")
    dtype = getattr(torch, str(audit.options.get("store_dtype") or "float32"))
    return capture(
        model,
        tokens,
        stacks,
        positions=audit.options.get("positions", "last"),
        store_dtype=dtype,
        batch_size=batch_size,
        progress=False,
        autocast="bfloat16" if compute.startswith("bfloat16 autocast") else "off",
        extraction=extraction,
    )


def _check_rows(cap: Any, names: list[str], n: int, positions: Any) -> None:
    """Every text must give at least one row at the audit's positions in every layer."""
    for name in names:
        missing = np.setdiff1d(np.arange(n), cap.rows_of(name)[0])
        if missing.size:
            raise DataError(
                f"text {int(missing[0])} gives no row of layer {name!r} at the audit's "
                f"positions ({positions!r}): it is too short; give a longer text"
            )


def _extracted(cap: Any, tokens: Any, lengths: tuple[int, int]) -> dict:
    """Each text's extraction, read off its capture's top-1 hits (docs/theory.md §6): how many
    of the (up to ``suffix``) tokens after its first ``prefix`` greedy decoding reproduces."""
    prefix, suffix = lengths
    counts = tokens.attention_mask.sum(1).numpy()
    compared = np.minimum(counts - prefix, suffix).astype(np.int64)
    matched = np.asarray(cap.seq_extracted_tokens, dtype=np.int64)
    return {
        "extracted": matched == suffix,
        "extracted_tokens": matched,
        "compared_tokens": compared,
    }


def _scores_frame(audit: Audit, tokens: Any, cap: Any, ref_nll: Any, ex: dict | None) -> Any:
    from hopaudit.evidence.scores import zlib_score

    n = tokens.num_sequences
    nan = np.full(n, np.nan)
    nll = cap.seq_nll
    counts = cap.seq_n_predicted
    frame: dict[str, Any] = {
        "query": np.arange(n),
        "text": tokens.texts,
        "n_tokens": tokens.attention_mask.sum(1).numpy().astype(np.int64),
        "loss": nan if nll is None else -np.asarray(nll, dtype=np.float64),
        "zlib": nan
        if nll is None or counts is None
        else zlib_score(np.asarray(nll) * np.asarray(counts), tokens.texts),
        "min_k": nan if cap.seq_min_k is None else np.asarray(cap.seq_min_k, dtype=np.float64),
        "min_k_pp": nan
        if cap.seq_min_k_pp is None
        else np.asarray(cap.seq_min_k_pp, dtype=np.float64),
    }
    if audit.options.get("reference") is not None:
        frame["ref_loss_diff"] = (
            nan if ref_nll is None or nll is None else np.asarray(ref_nll) - np.asarray(nll)
        )
    if ex is not None:
        frame["extracted"] = ex["extracted"]
        frame["extracted_tokens"] = ex["extracted_tokens"]
        frame["compared_tokens"] = ex["compared_tokens"]
    return pd.DataFrame(frame)


def _open_index(audit: Audit, name: str, report: Any) -> tuple[Any, bool]:
    """The layer's index, opened; and whether it was open before (to release it after)."""
    index = report.index
    if index is None:
        raise SearchError(
            f"layer {name!r} of this audit has no index to search; load the saved audit again "
            "with hopaudit.load(dir, rebuild_index=True), which rebuilds it from the activations"
        )
    was_open = bool(getattr(index, "loaded", True))
    try:
        if hasattr(index, "open"):
            index.open()
    except Exception as exc:
        raise SearchError(
            f"the index of layer {name!r} cannot be opened ({type(exc).__name__}: {exc}); "
            "the saved audit was moved, changed or deleted since it was loaded: load it again "
            "with hopaudit.load(dir) (rebuild_index=True rebuilds every index from the saved "
            "activations)"
        ) from exc
    return index, was_open


def _search(audit: Audit, cap: Any, names: list[str], k: int) -> tuple[pd.DataFrame, dict]:
    """Each layer's k nearest stored sequences of every query; and, per layer, the query
    rows' patterns and whether the index was open (kept for the placement)."""
    from hopaudit.layer.patterns import layer_patterns

    frames, found = [], {}
    stored_seq_of = {name: _stored_rows(audit, name) for name in names}
    for name in names:
        rep = audit.reports[name]
        row_query = np.asarray(cap.rows_of(name)[0], dtype=np.int64)
        x = layer_patterns(cap.store, name, np.arange(row_query.size), rep.normalize)
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            raise DataError(
                f"layer {name!r} gave non-finite activations for text "
                f"{int(row_query[~finite][0])}; the model overflows on it, so it cannot be placed"
            )
        pattern_seq = stored_seq_of[name][np.asarray(rep.valid_rows)]
        index, was_open = _open_index(audit, name, rep)
        try:
            ids, dists = index.query(x, neighbours_needed(pattern_seq, k))
        finally:
            if not was_open and hasattr(index, "release"):
                index.release()
        near = nearest_sequences(ids, dists, row_query, pattern_seq, np.asarray(rep.nn) / 2, k)
        found[name] = {"x": x, "row_query": row_query}
        r_hat = float(rep.r_hat)
        ratio = near["distance"] / r_hat if r_hat > 0 else np.full(near["distance"].size, np.nan)
        frames.append(
            pd.DataFrame(
                {
                    "query": near["query"],
                    "layer": audit.layer_names.index(name),
                    "name": name,
                    "rank": near["rank"],
                    "sequence": near["sequence"],
                    "text": [audit.texts[s] for s in near["sequence"]],
                    "distance": near["distance"],
                    "distance_over_r_hat": ratio.astype(np.float64),
                    "inside_ball": near["inside_ball"],
                }
            )
        )
    nearest = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return nearest.reindex(columns=NEAREST_COLUMNS), found


def _stored_rows(audit: Audit, name: str) -> np.ndarray:
    rows_of = getattr(audit.capture, "rows_of", None)
    seq = rows_of(name)[0] if callable(rows_of) else audit.capture.row_sequence
    return np.asarray(seq, dtype=np.int64)


def _place(audit: Audit, cap: Any, names: list[str], found: dict) -> tuple[pd.DataFrame, list]:
    """The query rows' places on each searched layer's UMAP layout."""
    from hopaudit.layer.embedding import place

    rows, notes = [], []
    for name in names:
        emb = audit.embeddings.get(name)
        if emb is None:
            continue
        try:
            ids, dists = _layout_neighbours(audit, name, emb, found[name]["x"])
            n_neighbors, n_epochs = _layout_params(audit, name, emb)
            xy = place(emb.xy, ids[:, :n_neighbors], dists[:, :n_neighbors], n_epochs=n_epochs)
        except (ImportError, HopauditError, OSError) as exc:
            notes.append(f"cannot place the texts on the UMAP of {name}: {exc}")
            continue
        layer = audit.layer_names.index(name)
        for q, (x, y) in zip(found[name]["row_query"], xy, strict=True):
            rows.append({"query": int(q), "layer": layer, "name": name, "x": x, "y": y})
    return pd.DataFrame(rows, columns=PLACEMENT_COLUMNS), notes


def _layout_params(audit: Audit, name: str, emb: Any) -> tuple[int, int]:
    k = audit.reports[name].knn_ids.shape[1] - 1
    derived = layout_parameters(len(emb.xy), k)
    n_neighbors = emb.n_neighbors if getattr(emb, "n_neighbors", None) else derived[0]
    n_epochs = emb.n_epochs if getattr(emb, "n_epochs", None) else derived[1]
    return int(n_neighbors), int(n_epochs)


def _layout_neighbours(audit: Audit, name: str, emb: Any, x: np.ndarray) -> tuple[Any, Any]:
    """Each query row's nearest laid-out patterns (ids into ``emb.xy``): the layer's index
    when every pattern is laid out, an exact search of the laid-out subsample otherwise."""
    from hopaudit.layer.patterns import layer_patterns

    rep = audit.reports[name]
    n_neighbors, _ = _layout_params(audit, name, emb)
    if not emb.subsampled:
        index, was_open = _open_index(audit, name, rep)
        try:
            return index.query(x, n_neighbors)
        finally:
            if not was_open and hasattr(index, "release"):
                index.release()
    sub = layer_patterns(audit.capture.store, name, np.asarray(emb.rows), rep.normalize)
    d2 = (x * x).sum(1)[:, None] - 2.0 * x @ sub.T + (sub * sub).sum(1)[None, :]
    ids = np.argsort(d2, axis=1, kind="stable")[:, :n_neighbors]
    d = np.sqrt(np.maximum(np.take_along_axis(d2, ids, 1), 0.0))
    return ids, d.astype(np.float32)
