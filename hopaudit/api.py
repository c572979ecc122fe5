"""``audit()``: the whole flow, top to bottom.

options checked -> model, blocks -> data -> one hooked forward pass (the engine) -> evidence ->
every layer measured (the engine) -> UMAP of a few layers (the engine) -> :class:`Audit`.
"""

from __future__ import annotations

import contextvars
import functools
import time
import types
import warnings
from typing import Any

import torch

from hopaudit.capture.batching import model_device
from hopaudit.capture.dtype import STORE_BUDGET_BYTES, resolve_store_dtype
from hopaudit.data.prepare import prepare_data
from hopaudit.engines import protocol as engines
from hopaudit.engines.memory import PeakTracker
from hopaudit.engines.options import AuditOptions, umap_layer_names
from hopaudit.engines.threads import capped_threads
from hopaudit.errors import DataError, HopauditError
from hopaudit.evidence.extract import (
    check_extraction,
    decoded_tokens,
    extract,
    extraction_unsupported,
)
from hopaudit.evidence.membership import MIN_PER_CLASS, check_reference, reference_nll
from hopaudit.layer.embedding import MIN_POINTS
from hopaudit.layer.files import LayerFiles, layer_files_path
from hopaudit.model.blocks import architecture_note, count_parameters, find_stacks, strip_compiled
from hopaudit.model.identity import config_dict, model_name, weights_digest
from hopaudit.model.loading import load_model
from hopaudit.results.audit import Audit
from hopaudit.results.metadata import check_metadata

__all__ = ["STORE_BUDGET_BYTES", "audit"]

# the stores the running audit() created, removed if it fails (see _removes_its_stores)
_created_stores: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "hopaudit_created_stores", default=None
)


def _removes_its_stores(fn: Any) -> Any:
    """A failed or interrupted ``audit(store=PATH)`` removes the stores it created; every
    thread pool runs at most the CPUs the process may use (:mod:`hopaudit.engines.threads`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        created: list = []
        token = _created_stores.set(created)
        try:
            with capped_threads():
                return fn(*args, **kwargs)
        except BaseException:
            for cap in reversed(created):  # the held-out store sits inside the main one
                if cap.store.path is not None:
                    cap.store.discard()
            raise
        finally:
            _created_stores.reset(token)

    return wrapper


def _track(cap: Any) -> Any:
    created = _created_stores.get()
    if created is not None and cap is not None:
        created.append(cap)
    return cap


@_removes_its_stores
def audit(
    model: Any,
    data: Any,
    *,
    tokenizer: Any = None,
    max_length: int | None = None,
    chunking: str = "stream",
    positions: str | int | list[int] = "last",
    blocks: str | None = None,
    normalize: str = "rms",
    index: str = "auto",
    heldout: Any = None,
    store: str | None = None,
    store_dtype: Any = "auto",
    batch_size: int | None = None,
    max_sequences: int | None = None,
    k: int = 15,
    umap_layers: list[int | str] | None = None,
    umap_max_points: int = 20_000,
    progress: bool = True,
    seed: int = 0,
    autocast: str = "auto",
    compile: bool = False,
    processor: Any = None,
    extraction: bool | dict[str, int] = False,
    reference: Any = None,
    bootstrap: int = 200,
    metadata: Any = None,
    graph_dtype: str = "float32",
    saturation_max: int | None = 50_000,
    engine: str = "local",
    ray_options: dict[str, Any] | None = None,
) -> Audit:
    """Audit what ``model`` has memorized of ``data``.

    Runs ``data`` through ``model`` once with a hook on every transformer block (and on the
    final norm, layer ``final``), stores the activations at ``positions``, then measures
    every layer as docs/theory.md defines: nearest-pattern distances, ball radii against
    sqrt(n / 2 pi e), separation, basins, the partition function and the loss floor. A
    2-D UMAP is made for ``umap_layers`` (default: first, middle and last block, ``final``).

    ``model`` is a torch model, a local model directory, a ``.gguf`` file, or ``"smollm2"``.
    ``data`` is a list of strings, a text file, a directory of ``.txt`` files, a
    ``datasets.Dataset``, a LongTensor of token ids, or a DataLoader of ``input_ids`` dicts.
    ``heldout`` (same forms) adds the containment fraction and held-out basins.
    ``store=PATH`` keeps activations in memory-mapped files there (captures bigger than RAM);
    a failed or interrupted audit removes the store it created.
    ``store_dtype`` ("auto", "float16", "bfloat16", "float32" or a torch dtype): ``"auto"`` keeps
    float32 while the activations fit ``STORE_BUDGET_BYTES`` (2 GiB), float16 beyond;
    ``summary()["store_dtype"]`` names the one used.
    ``index`` is the nearest-neighbour search (docs/theory.md, "Search"): ``"auto"`` searches
    exactly up to ``search.AUTO_EXACT_MAX`` patterns a layer (and on a GPU), with k-means
    lists above (``"clustered"``: each layer's recall measured on a sample of it, in
    ``audit.layers``); ``"exact"``, ``"clustered"`` or ``"hnsw"`` choose one.
    ``autocast="auto"`` runs a float32 model's forward in bfloat16 autocast where the hardware
    multiplies bfloat16 natively (faster; :mod:`hopaudit.model.precision` says what it changes);
    ``"off"`` runs the model as it is. ``compile=True`` runs each block through
    ``torch.compile`` (:mod:`hopaudit.model.compiled`): a faster forward after a first batch
    that waits for the compiler, worth it on long audits; ``summary()["compiled"]`` says what
    it took.

    An encoder-decoder (T5, BART, Whisper, ...) is audited as two stacks, ``encoder`` then
    ``decoder`` (``audit.layers["stack"]``): plain texts go to the encoder and are also the
    decoder's labels (teacher forcing); ``(source, target)`` pairs and rows with ``labels``
    are taken as given. Image and audio encoders take tensors, or images / clips with
    ``processor=`` (see :mod:`hopaudit.data.inputs`).

    Evidence of memorization (docs/theory.md §6, §7): ``extraction=True`` (or
    ``{"prefix": p, "suffix": s}``, default 32 and 32) decodes every sequence greedily from its
    first p tokens and marks it ``extracted`` when the next s come out exactly (causal LMs;
    an encoder gets a note instead). ``reference=`` another causal LM with the same tokenizer
    adds the ``ref_loss_diff`` score. With ``heldout=``, ``Audit.membership`` says how well
    each score tells the stored sequences from the held-out ones. ``bootstrap`` resamples
    (0: off) give 95 % intervals to the per-layer estimates and the AUROCs.
    ``metadata`` (a DataFrame or a dict of column -> values, one per sequence) adds columns to
    ``samples`` and colours of the basins view (hopaudit/results/metadata.py).

    Layers are measured one at a time; with a ``store`` each layer's index and kNN graph then
    go to ``<store>.layers/`` and are opened on demand (docs/scale.md), so memory holds one
    layer's work. ``graph_dtype`` ("float32" or "float16") is the graph's distance type;
    ``saturation_max`` caps the saturation curve's queries per layer (None: no cap).
    ``engine="ray"`` captures with a Ray Data actor pool of model replicas and measures each
    layer in its own Ray task (``ray_options``: concurrency, num_cpus, num_gpus, max_retries;
    docs/scale.md); the Audit is the same as ``engine="local"``'s.
    """
    t = {"start": time.perf_counter()}
    peak = PeakTracker()
    opts = AuditOptions.check(
        max_length=max_length, chunking=chunking, positions=positions, blocks=blocks,
        normalize=normalize, index=index, store=store, store_dtype=store_dtype,
        batch_size=batch_size, max_sequences=max_sequences, k=k, umap_layers=umap_layers,
        umap_max_points=umap_max_points, progress=progress, seed=seed, autocast=autocast,
        compile=compile, extraction=extraction, bootstrap=bootstrap, graph_dtype=graph_dtype,
        saturation_max=saturation_max, engine=engine, ray_options=ray_options, metadata=metadata,
    )  # fmt: skip
    runner = engines.choose(opts)

    # The model, its blocks and both datasets, all checked before the (long) forward passes.
    model, tokenizer = load_model(model, tokenizer=tokenizer)
    if reference is not None:
        reference = load_model(reference)[0]
        check_reference(model, reference)
    stacks = find_stacks(model, opts.blocks)
    block_list = [b for st in stacks for b in st.blocks]
    umap_layer_names([n for st in stacks for n in st.layer_names], opts.umap_layers)
    runner.check(stacks)
    tokens = _tokens(data, tokenizer, model, processor, opts)
    held_tokens = None if heldout is None else _tokens(heldout, tokenizer, model, processor, opts)
    _check_heldout(held_tokens)
    extraction_info, lengths = _extraction_plan(model, opts.extraction, tokens, held_tokens)
    runner.check(stacks, tokens)
    meta = check_metadata(metadata, tokens.num_sequences)
    dtype_name, dtype_note = resolve_store_dtype(
        opts.store_dtype, model, block_list, stacks[-1].final, opts.positions, [tokens, held_tokens]
    )
    n_params = count_parameters(model, block_list)
    device = model_device(model)

    # One forward pass per dataset, then the evidence that needs the model again.
    where, scratch = runner.store_root(opts.store)
    _track(None if scratch is None else types.SimpleNamespace(store=scratch))
    dtype = getattr(torch, dtype_name)
    stored = _track(
        runner.capture(
            model, tokens, stacks, where=where, store_dtype=dtype, peak=peak, extraction=lengths
        )
    )
    held = None
    if held_tokens is not None:
        held_where = None if where is None else f"{where}/heldout"
        held = runner.capture(
            model,
            held_tokens,
            stacks,
            where=held_where,
            store_dtype=dtype,
            peak=peak,
            extraction=lengths,
        )
        _track(held)
    t["capture"] = time.perf_counter()
    peak.mark("capture")
    pairs = ((tokens, stored), (held_tokens, held))
    _gather_evidence(model, reference, pairs, lengths, extraction_info, opts.progress)
    t["evidence"] = time.perf_counter()
    peak.mark("evidence (extraction, reference)")

    # Every layer measured, one at a time; with a store, each layer's files go to disk.
    layer_files = None
    if where is not None:
        layer_files = LayerFiles(layer_files_path(where))
        _track(types.SimpleNamespace(store=layer_files))  # removed if the audit fails
    measure_kwargs = dict(
        normalize=opts.normalize, index=opts.index, k=opts.k, n_blocks=len(block_list),
        seed=opts.seed, device=device, saturation_max=opts.saturation_max,
        bootstrap=int(opts.bootstrap),
    )  # fmt: skip
    reports, skipped = runner.measure(stored, held, layer_files, measure_kwargs, peak)
    if layer_files is not None:
        layer_files.finish()
    if not reports:
        reasons = "; ".join(f"{n}: {r}" for n, r in skipped.items())
        raise HopauditError(f"no layer could be measured: {reasons}")
    t["measure"] = time.perf_counter()

    # A UMAP of a few layers, then the engine hands everything over to the audit.
    names = stored.layer_names
    chosen = umap_layer_names(names, opts.umap_layers, reports)
    embeddings = runner.embed(stored, reports, _enough_points(chosen, reports), device, peak)
    runner.finish(stored, held, reports, scratch)
    layer_files = None if scratch is not None else layer_files  # in memory now
    t["umap"] = time.perf_counter()

    result = Audit(
        metadata=meta,
        model_name=model_name(model),
        model_config=config_dict(model),
        options={
            **_recorded_options(
                opts, stacks, reference, heldout, (dtype_name, dtype_note), chosen, layer_files
            ),
            "weights_digest": weights_digest(model),  # Audit.query checks a model against it
        },
        layer_names=list(names),
        hidden_size=int(stored.store.get(names[0]).shape[1]),
        n_blocks=len(block_list),
        n_params_total=n_params[0],
        n_params_blocks=n_params[1],
        texts=tokens.texts,
        n_tokens=stored.n_tokens,
        capture=stored,
        reports=reports,
        skipped=skipped,
        embeddings=embeddings,
        heldout_capture=held,
        heldout_texts=None if held_tokens is None else held_tokens.texts,
        extraction=extraction_info,
        timings=_timings(t),
        memory=peak.result(),
    )
    result.attach_model(model, tokenizer=tokenizer, reference=reference)  # for Audit.query
    return result


# ---------------------------------------------------------------------------- the steps
def _tokens(data: Any, tokenizer: Any, model: Any, processor: Any, opts: AuditOptions) -> Any:
    return prepare_data(
        data,
        tokenizer,
        max_length=opts.max_length,
        chunking=opts.chunking,
        max_sequences=opts.max_sequences,
        model=model,
        processor=processor,
    )


def _check_heldout(held_tokens: Any) -> None:
    if held_tokens is not None and held_tokens.num_sequences < MIN_PER_CLASS:
        raise DataError(
            f"heldout has {held_tokens.num_sequences} sequence: membership (the AUROC of the "
            f"held-out against the stored sequences, and its interval) is undefined with fewer "
            f"than {MIN_PER_CLASS} non-members; give at least {MIN_PER_CLASS} held-out sequences"
        )


def _extraction_plan(
    model: Any, lengths: tuple[int, int] | None, tokens: Any, held_tokens: Any
) -> tuple[dict | None, tuple[int, int] | None]:
    """(the audit's extraction record, the (prefix, suffix) to decode or None): a model that
    cannot be decoded from gets a note; too-short sequences are refused before any pass."""
    if lengths is None:
        return None, None
    note = extraction_unsupported(model)
    if note is not None:
        return {"note": f"no extraction: {note}"}, None
    for what, toks in (("data", tokens), ("heldout data", held_tokens)):
        if toks is not None:
            check_extraction(toks.attention_mask.sum(1).numpy(), *lengths, what)
            if not bool((toks.attention_mask[:, : sum(lengths)] != 0).all()):
                raise DataError(f"extraction needs right-padded {what} (real tokens first)")
    return {"prefix": lengths[0], "suffix": lengths[1]}, lengths


def _gather_evidence(
    model: Any, reference: Any, pairs: Any, lengths: Any, info: dict | None, progress: bool
) -> None:
    """The reference model's NLL and the extraction of every sequence, onto each capture
    (stored and held-out); how the extraction was computed, and its cost, into ``info``.

    The capture's own pass gives the extraction (its top-1 hits: docs/theory.md §6); a
    capture that scored no next token (no logits) is decoded greedily instead."""
    for tok, cap in pairs:
        if tok is None:
            continue
        if reference is not None:
            cap.seq_ref_nll = reference_nll(
                reference, tok.input_ids, tok.attention_mask, progress=progress
            )
        if lengths is None:
            continue
        info["compute_dtype"] = cap.compute_dtype
        if cap.seq_extracted_tokens is not None:
            info["method"] = "teacher-forced"  # read off the capture: no forward of its own
            continue
        # greedy decoding in the numerics of the capture: bfloat16 where it ran so
        amp = str(cap.compute_dtype or "").startswith("bfloat16 autocast")
        ex = extract(
            model,
            tok.input_ids,
            tok.attention_mask,
            prefix=lengths[0],
            suffix=lengths[1],
            progress=progress,
            autocast=torch.bfloat16 if amp else None,
        )
        cap.seq_extracted_tokens = ex.extracted_tokens
        info["method"] = "greedy decoding"
        info["seconds"] = info.get("seconds", 0.0) + ex.seconds
        info["tokens"] = info.get("tokens", 0) + decoded_tokens(ex.generated)
        info["cached"] = ex.cached
    if info and info.get("seconds"):
        info["tokens_per_second"] = info["tokens"] / info["seconds"]


def _enough_points(chosen: list[str], reports: dict) -> list[str]:
    """The chosen layers UMAP can lay out; a warning names each one it cannot."""
    out = []
    for name in chosen:
        n = reports[name].n_patterns
        if n < MIN_POINTS:
            warnings.warn(
                f"no UMAP of {name}: {n} patterns, UMAP needs at least {MIN_POINTS}",
                stacklevel=3,
            )
        else:
            out.append(name)
    return out


def _recorded_options(
    opts: AuditOptions,
    stacks: list,
    reference: Any,
    heldout: Any,
    dtype: tuple[str, str | None],
    chosen: list[str],
    layer_files: Any,
) -> dict[str, Any]:
    """The options as the Audit records them (and a saved audit keeps): what was asked and
    what it resolved to."""
    block_list = [b for st in stacks for b in st.blocks]
    final = stacks[-1].final
    return {
        "max_length": opts.max_length,
        "chunking": opts.chunking,
        "positions": opts.positions,
        "blocks": [strip_compiled(p) for p, _ in block_list],
        "final": None if final is None else strip_compiled(final[0]),
        "encoder_final": next(
            (strip_compiled(s.final[0]) for s in stacks[:-1] if s.final is not None), None
        ),
        "stacks": [s.name for s in stacks],
        "architecture_note": architecture_note(block_list),
        "normalize": opts.normalize,
        "index": opts.index,
        "store": opts.store,
        "store_dtype": dtype[0],
        "store_dtype_note": dtype[1],
        "k": opts.k,
        "umap_layers": chosen,
        "umap_max_points": opts.umap_max_points,
        "max_sequences": opts.max_sequences,
        "heldout": heldout is not None,
        "seed": opts.seed,
        "autocast": opts.autocast,
        "compile": opts.compile,
        "extraction": None if opts.extraction is None else list(opts.extraction),
        "reference": None if reference is None else model_name(reference),
        "bootstrap": int(opts.bootstrap),
        "graph_dtype": opts.graph_dtype,
        "saturation_max": opts.saturation_max,
        "layer_files": None if layer_files is None else str(layer_files.path),
        "engine": opts.engine,
    }


def _timings(t: dict[str, float]) -> dict[str, float]:
    """Seconds of each stage, from the marks taken after each."""
    stages = ["capture", "evidence", "measure", "umap"]
    marks = [t["start"], *(t[s] for s in stages)]
    out = {s: marks[i + 1] - marks[i] for i, s in enumerate(stages)}
    out["total"] = marks[-1] - marks[0]
    return out
