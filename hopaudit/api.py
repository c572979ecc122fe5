"""``audit()``: the whole flow, top to bottom.

data -> blocks -> one hooked forward pass -> per-layer store -> per-layer search and geometry
-> UMAP of a few layers -> :class:`~hopaudit.audit.Audit`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import time
import types
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .blocks import architecture_note, count_parameters, find_stacks, strip_compiled
from .capture import capture, model_device
from .data import TokenData, prepare_data
from .errors import DataError, HopauditError, SearchError
from .extraction import check_extraction, extract, extraction_unsupported, parse_extraction
from .layerfiles import GRAPH_DIST_DTYPES, LayerFiles, compact_graph, layer_files_path
from .loading import load_model
from .measure import measure
from .membership import MIN_PER_CLASS, check_reference, reference_nll
from .memory import PeakTracker
from .metadata import check_metadata
from .precision import check_autocast
from .progress import tqdm
from .result import Audit, Embedding

NORMALIZE_MODES = ("rms", "none")
MIN_UMAP_POINTS = 4  # below it umap's spectral start fails
INDEX_KINDS = ("auto", "hnsw", "exact")
ENGINES = ("local", "ray")
#: ``store_dtype="auto"`` keeps float32 up to this many bytes of activations (float16 moves the
#: volume floor by n times its relative error, docs/theory.md), float16 beyond it.
STORE_BUDGET_BYTES = 2 << 30
STORE_DTYPES = ("auto", "float16", "bfloat16", "float32")
#: Patterns from which a layer gets a bar of its own (index, then search): smaller layers take
#: seconds, while 10^6 patterns take minutes per layer (benchmarks/README.md).
LAYER_BAR_ROWS = 50_000
_DTYPE_ALIASES = {"half": "float16", "float": "float32", "single": "float32"}
# the stores the running audit() created, removed if it fails (see _removes_its_stores)
_created_stores: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "hopaudit_created_stores", default=None
)


def _removes_its_stores(fn: Any) -> Any:
    """A failed or interrupted ``audit(store=PATH)`` removes the stores it created."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        created: list = []
        token = _created_stores.set(created)
        try:
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
    ``autocast="auto"`` runs a float32 model's forward in bfloat16 autocast where the hardware
    multiplies bfloat16 natively (faster; :mod:`hopaudit.precision` says what it changes);
    ``"off"`` runs the model as it is.

    An encoder-decoder (T5, BART, Whisper, ...) is audited as two stacks, ``encoder`` then
    ``decoder`` (``audit.layers["stack"]``): plain texts go to the encoder and are also the
    decoder's labels (teacher forcing); ``(source, target)`` pairs and rows with ``labels``
    are taken as given. Image and audio encoders take tensors, or images / clips with
    ``processor=`` (see :mod:`hopaudit.inputs`).

    Evidence of memorization (docs/theory.md §6, §7): ``extraction=True`` (or
    ``{"prefix": p, "suffix": s}``, default 32 and 32) decodes every sequence greedily from its
    first p tokens and marks it ``extracted`` when the next s come out exactly (causal LMs;
    an encoder gets a note instead). ``reference=`` another causal LM with the same tokenizer
    adds the ``ref_loss_diff`` score. With ``heldout=``, ``Audit.membership`` says how well
    each score tells the stored sequences from the held-out ones. ``bootstrap`` resamples
    (0: off) give 95 % intervals to the per-layer estimates and the AUROCs.
    ``metadata`` (a DataFrame or a dict of column -> values, one per sequence) adds columns to
    ``samples`` and colours of the basins view (hopaudit/metadata.py).

    Layers are measured one at a time; with a ``store`` each layer's index and kNN graph then
    go to ``<store>.layers/`` and are opened on demand (docs/scale.md), so memory holds one
    layer's work. ``graph_dtype`` ("float32" or "float16") is the graph's distance type;
    ``saturation_max`` caps the saturation curve's queries per layer (None: no cap).
    ``engine="ray"`` captures with a Ray Data actor pool of model replicas and measures each
    layer in its own Ray task (``ray_options``: concurrency, num_cpus, num_gpus, max_retries;
    docs/scale.md); the Audit is the same as ``engine="local"``'s.
    """
    t_start = time.perf_counter()
    peak = PeakTracker()
    if graph_dtype not in GRAPH_DIST_DTYPES:
        raise DataError(f"graph_dtype must be one of {GRAPH_DIST_DTYPES}, got {graph_dtype!r}")
    _positive_int("saturation_max", saturation_max)
    if engine not in ENGINES:
        raise DataError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "ray":
        from . import ray_engine

        ray_engine.check_ray(ray_options)
    elif ray_options is not None:
        raise DataError("ray_options is for engine='ray'; pass engine='ray' or drop ray_options")
    _check_options(normalize, index, store_dtype, umap_max_points, k, autocast)
    _check_more_options(
        max_length=max_length,
        chunking=chunking,
        positions=positions,
        batch_size=batch_size,
        max_sequences=max_sequences,
        seed=seed,
        store=store,
    )
    if not isinstance(bootstrap, (int, np.integer)) or isinstance(bootstrap, bool) or bootstrap < 0:
        raise DataError(f"bootstrap is a number of resamples >= 0 (0: off), got {bootstrap!r}")
    extraction_lengths = parse_extraction(extraction)

    check_metadata(metadata, None)
    model, tokenizer = load_model(model, tokenizer=tokenizer)
    if reference is not None:
        reference = load_model(reference)[0]
        check_reference(model, reference)
    stacks = find_stacks(model, blocks)
    block_list = [b for st in stacks for b in st.blocks]
    final = stacks[-1].final
    _check_layer_options([n for st in stacks for n in st.layer_names], umap_layers)
    if engine == "ray" and len(stacks) > 1:
        raise DataError(
            "engine='ray' audits models of one stack of blocks (decoders, encoders); this "
            "encoder-decoder's two stacks are audited with engine='local'"
        )
    n_total, n_blocks_params = count_parameters(model, block_list)
    device = model_device(model)

    def tokens_of(d: Any):
        return prepare_data(
            d,
            tokenizer,
            max_length=max_length,
            chunking=chunking,
            max_sequences=max_sequences,
            model=model,
            processor=processor,
        )

    def capture_of(tokens: Any, where: str | None):
        common = dict(
            positions=positions,
            store_dtype=getattr(torch, dtype_name),
            store=where,
            batch_size=batch_size,
            progress=progress,
            autocast=autocast,
        )
        if engine == "ray":  # one stack only (checked above): its blocks and final norm
            return ray_engine.capture_ray(
                model,
                tokens,
                block_list,
                final=final,
                ray_options=ray_options,
                peak=peak,
                **common,
            )
        return capture(model, tokens, stacks, **common)

    # Both datasets are checked before the (long) forward passes: bad input loses no work.
    tokens = tokens_of(data)
    held_tokens = None if heldout is None else tokens_of(heldout)
    if held_tokens is not None and held_tokens.num_sequences < MIN_PER_CLASS:
        raise DataError(
            f"heldout has {held_tokens.num_sequences} sequence: membership (the AUROC of the "
            f"held-out against the stored sequences, and its interval) is undefined with fewer "
            f"than {MIN_PER_CLASS} non-members; give at least {MIN_PER_CLASS} held-out sequences"
        )
    extraction_info = None
    if extraction_lengths is not None:
        note = extraction_unsupported(model)
        extraction_info = {"prefix": extraction_lengths[0], "suffix": extraction_lengths[1]}
        if note is not None:
            extraction_info = {"note": f"no extraction: {note}"}
            extraction_lengths = None
        else:
            for what, toks in (("data", tokens), ("heldout data", held_tokens)):
                if toks is not None:
                    check_extraction(toks.attention_mask.sum(1).numpy(), *extraction_lengths, what)
    if engine == "ray" and not isinstance(tokens, TokenData):
        raise DataError(
            "engine='ray' takes token data (texts or token ids); images and audio are audited "
            "with engine='local'"
        )
    meta = check_metadata(metadata, tokens.num_sequences)
    dtype_name, dtype_note = resolve_store_dtype(
        store_dtype, model, block_list, final, positions, [tokens, held_tokens]
    )
    where, scratch = store, None
    if engine == "ray" and store is None:  # Ray's workers read the store from disk
        scratch = _track(types.SimpleNamespace(store=ray_engine.TemporaryRoot())).store
        where = scratch.store
    stored = _track(capture_of(tokens, where))
    held = None
    if held_tokens is not None:
        held = _track(capture_of(held_tokens, None if where is None else f"{where}/heldout"))
    t_captured = time.perf_counter()
    peak.mark("capture")
    for tok, cap in ((tokens, stored), (held_tokens, held)):
        if tok is None:
            continue
        if reference is not None:
            cap.seq_ref_nll = reference_nll(
                reference, tok.input_ids, tok.attention_mask, progress=progress
            )
        if extraction_lengths is not None:
            ex = extract(
                model,
                tok.input_ids,
                tok.attention_mask,
                prefix=extraction_lengths[0],
                suffix=extraction_lengths[1],
                progress=progress,
            )
            cap.seq_extracted_tokens = ex.extracted_tokens
            extraction_info["seconds"] = extraction_info.get("seconds", 0.0) + ex.seconds
            extraction_info["tokens"] = extraction_info.get("tokens", 0) + ex.generated.size
            extraction_info["cached"] = ex.cached
    if extraction_info and extraction_info.get("seconds"):
        extraction_info["tokens_per_second"] = (
            extraction_info["tokens"] / extraction_info["seconds"]
        )
    t_evidence = time.perf_counter()
    peak.mark("evidence (extraction, reference)")

    layer_files = None
    if where is not None:
        layer_files = LayerFiles(layer_files_path(where))
        _track(types.SimpleNamespace(store=layer_files))  # removed if the audit fails

    measure_kwargs = dict(
        normalize=normalize,
        index=index,
        k=k,
        n_blocks=len(block_list),
        seed=seed,
        device=None if engine == "ray" else device,
        saturation_max=saturation_max,
        bootstrap=int(bootstrap),
    )
    reports, skipped = {}, {}
    names = stored.layer_names
    if engine == "ray":
        reports, skipped = ray_engine.measure_layers(
            stored,
            held,
            layer_files,
            measure_kwargs,
            graph_dtype,
            progress=progress,
            ray_options=ray_options,
            peak=peak,
        )
        peak.mark("measuring (ray)")
    local_names = names if engine == "local" else []
    for i, name in enumerate(tqdm(local_names, desc="measuring layers", disable=not progress)):
        rows = stored.store.shape(name)[0]
        try:
            with _layer_bar(name, rows, progress and rows >= LAYER_BAR_ROWS) as step:
                rep = measure(
                    stored.store.get(name),
                    None if held is None else held.store.get(name),
                    progress=step,
                    **measure_kwargs,
                )
        except SearchError as exc:
            skipped[name] = str(exc)
        else:
            reports[name] = _settle(rep, i, name, stored, layer_files, graph_dtype)
            del rep
        # one layer at a time: its mapped pages leave the resident set before the next
        stored.store.release(name)
        if held is not None:
            held.store.release(name)
        peak.mark(f"measuring {name}")
    if layer_files is not None:
        layer_files.finish()
    if not reports:
        raise HopauditError(
            "no layer could be measured: " + "; ".join(f"{n}: {r}" for n, r in skipped.items())
        )
    t_measured = time.perf_counter()

    embeddings = {}
    chosen = _umap_layers(names, umap_layers, reports)
    too_few = [n for n in chosen if reports[n].n_patterns < MIN_UMAP_POINTS]
    if engine == "ray":
        fit = [n for n in chosen if n not in too_few]
        embeddings = ray_engine.embed_layers(stored, reports, fit, umap_max_points, seed, peak)
        peak.mark("UMAP (ray)")
    for name in tqdm(
        chosen if engine == "local" else too_few, desc="UMAP", disable=not progress or not chosen
    ):
        if reports[name].n_patterns < MIN_UMAP_POINTS:
            warnings.warn(
                f"no UMAP of {name}: {reports[name].n_patterns} patterns, "
                f"UMAP needs at least {MIN_UMAP_POINTS}",
                stacklevel=2,
            )
            continue
        embeddings[name] = _embed(
            reports[name],
            stored.store.get(name),
            stored.rows_of(name)[0],
            umap_max_points,
            seed,
            device,
        )
        stored.store.release(name)
        peak.mark(f"UMAP {name}")
    if scratch is not None:  # store=None: in memory, as engine="local" keeps it
        ray_engine.to_memory(stored, reports)
        if held is not None:
            ray_engine.to_memory(held, {})
        scratch.discard()
        layer_files = None
    t_done = time.perf_counter()

    return Audit(
        metadata=meta,
        model_name=_model_name(model),
        model_config=_config_dict(model),
        options={
            "max_length": max_length,
            "chunking": chunking,
            "positions": positions,
            "blocks": [strip_compiled(p) for p, _ in block_list],
            "final": None if final is None else strip_compiled(final[0]),
            "encoder_final": next(
                (strip_compiled(s.final[0]) for s in stacks[:-1] if s.final is not None), None
            ),
            "stacks": [s.name for s in stacks],
            "architecture_note": architecture_note(block_list),
            "normalize": normalize,
            "index": index,
            "store": store,
            "store_dtype": dtype_name,
            "store_dtype_note": dtype_note,
            "k": k,
            "umap_layers": chosen,
            "umap_max_points": umap_max_points,
            "max_sequences": max_sequences,
            "heldout": heldout is not None,
            "seed": seed,
            "autocast": autocast,
            "extraction": None if extraction_lengths is None else list(extraction_lengths),
            "reference": None if reference is None else _model_name(reference),
            "bootstrap": int(bootstrap),
            "graph_dtype": graph_dtype,
            "saturation_max": saturation_max,
            "layer_files": None if layer_files is None else str(layer_files.path),
            "engine": engine,
        },
        layer_names=list(names),
        hidden_size=int(stored.store.get(names[0]).shape[1]),
        n_blocks=len(block_list),
        n_params_total=n_total,
        n_params_blocks=n_blocks_params,
        texts=tokens.texts,
        n_tokens=stored.n_tokens,
        capture=stored,
        reports=reports,
        skipped=skipped,
        embeddings=embeddings,
        heldout_capture=held,
        heldout_texts=None if held_tokens is None else held_tokens.texts,
        extraction=extraction_info,
        timings={
            "capture": t_captured - t_start,
            "evidence": t_evidence - t_captured,
            "measure": t_measured - t_evidence,
            "umap": t_done - t_measured,
            "total": t_done - t_start,
        },
        memory=peak.result(),
    )


@contextlib.contextmanager
def _layer_bar(name: str, rows: int, show: bool) -> Iterator[Any]:
    """A bar over one layer's index build and search (each row counted once in each), or None."""
    if not show:
        yield None
        return
    bar = tqdm(total=2 * rows, desc=f"{name}: index", unit="pattern", leave=False)

    def step(stage: str, done: int) -> None:
        if bar.desc != f"{name}: {stage}":
            bar.set_description_str(f"{name}: {stage}")
        bar.update(done)

    try:
        yield step
    finally:
        bar.close()


def _settle(
    rep: Any, i: int, name: str, stored: Any, layer_files: LayerFiles | None, graph_dtype: str
) -> Any:
    """A measured layer's graph compacted and, with layer files, its index and graph moved to
    disk (opened on demand), so the next layer starts with only this layer's scalars held."""
    ids, dists = compact_graph(rep.knn_ids, rep.knn_dists, graph_dtype)
    if layer_files is None:
        rep.knn_ids, rep.knn_dists = ids, dists
        return rep
    rep.knn_ids, rep.knn_dists = layer_files.put_graph(i, ids, dists, graph_dtype)
    del ids, dists

    def patterns(cap: Any = stored, rows: Any = rep.valid_rows, mode: str = rep.normalize):
        from .geometry import normalize_rows

        store = cap.store  # looked up when asked: a saved audit's store may replace it
        x = normalize_rows(np.asarray(store.get(name)[np.asarray(rows)], np.float32), mode)
        store.release(name)
        return x

    rep.index = layer_files.put_index(i, rep.index, patterns)
    return rep


def _check_options(
    normalize: str, index: str, store_dtype: Any, umap_max: int, k: int, autocast: str
) -> None:
    check_autocast(autocast)
    if normalize not in NORMALIZE_MODES:
        raise DataError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    if index not in INDEX_KINDS:
        raise DataError(f"index must be one of {INDEX_KINDS}, got {index!r}")
    store_dtype_name(store_dtype)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise DataError(
            f"k must be an integer of at least 2 (TwoNN needs two neighbours), got {k!r}"
        )
    if isinstance(umap_max, bool) or not isinstance(umap_max, (int, np.integer)) or umap_max < 0:
        raise DataError(f"umap_max_points must be an integer >= 0 (0: no cap), got {umap_max!r}")
    if 0 < umap_max <= max(k, MIN_UMAP_POINTS):
        raise DataError(
            f"umap_max_points={umap_max} leaves too few points for a UMAP with k={k} "
            f"neighbours; give more than {max(k, MIN_UMAP_POINTS)}, or 0 for no cap"
        )


def _positive_int(name: str, value: Any) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
    ):
        raise DataError(f"{name} must be a positive integer or None, got {value!r}")


def _check_more_options(
    *,
    max_length: Any,
    chunking: Any,
    positions: Any,
    batch_size: Any,
    max_sequences: Any,
    seed: Any,
    store: Any,
) -> None:
    """The options checked only deep inside the flow before: all of them before any work."""
    from .capture import parse_positions

    for name, value in (
        ("max_length", max_length),
        ("batch_size", batch_size),
        ("max_sequences", max_sequences),
    ):
        _positive_int(name, value)
    if chunking not in ("stream", "document"):
        raise DataError(f"chunking must be 'stream' or 'document', got {chunking!r}")
    parse_positions(positions)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DataError(f"seed must be an integer, got {seed!r}")
    if store is not None and not isinstance(store, (str, os.PathLike)):
        raise DataError(f"store must be a directory path or None, got {type(store).__name__}")


def _check_layer_options(names: list[str], umap_layers: Any) -> None:
    """umap_layers names and ids against the model's layers, before the forward pass."""
    if umap_layers is not None:
        if isinstance(umap_layers, (str, int)):
            raise DataError(
                f"umap_layers must be a list of layer ids or names, got {umap_layers!r}"
            )
        _umap_layers(names, list(umap_layers), dict.fromkeys(names))


def store_dtype_name(store_dtype: Any) -> str:
    """The canonical name of a ``store_dtype`` ("auto", "float16", "bfloat16", "float32")
    given as a string, a torch dtype or a numpy dtype; DataError naming the accepted ones."""
    name = store_dtype
    if isinstance(store_dtype, torch.dtype):
        name = str(store_dtype).replace("torch.", "")
    elif not isinstance(store_dtype, str):
        try:
            name = np.dtype(store_dtype).name
        except TypeError:
            name = None
    name = _DTYPE_ALIASES.get(name, name) if isinstance(name, str) else name
    if name not in STORE_DTYPES:
        raise DataError(
            f"store_dtype must be one of {', '.join(map(repr, STORE_DTYPES))} (or the torch "
            f"dtype: torch.float16, torch.bfloat16, torch.float32), got {store_dtype!r}"
        )
    return name


def _hidden_size(model: Any, block_list: list, final: Any) -> int | None:
    """The width of the stored rows: the config's, else the final norm's or a block's norm's."""
    config = getattr(model, "config", None)
    for key in ("hidden_size", "n_embd", "d_model", "dim"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    modules = ([final[1]] if final is not None else []) + [m for _, m in block_list[:1]]
    for module in modules:
        for param in module.parameters():
            if param.ndim == 1:
                return int(param.shape[0])
    return None


def resolve_store_dtype(
    store_dtype: Any, model: Any, block_list: list, final: Any, positions: Any, datasets: list
) -> tuple[str, str | None]:
    """(dtype name, why) for the capture: ``"auto"`` is float32 while every layer's rows fit
    :data:`STORE_BUDGET_BYTES` in float32, else float16; other values pass through."""
    from .capture import parse_positions

    name = store_dtype_name(store_dtype)
    if name != "auto":
        return name, None
    hidden = _hidden_size(model, block_list, final)
    pos = parse_positions(positions)
    rows = 0
    for tok in datasets:
        if tok is None:
            continue
        if pos == "all":
            rows += int(tok.attention_mask.sum())
        else:
            rows += tok.num_sequences * (len(pos) if isinstance(pos, list) else 1)
    layers = len(block_list) + 1  # the blocks and a final layer (at most two, in seq2seq)
    if hidden is None:
        return "float16", "auto: the hidden size is unknown, float16 to bound the store"
    need = rows * hidden * layers * 4
    budget = STORE_BUDGET_BYTES
    gib = f"{need / 2**30:.2f} GiB in float32, budget {budget / 2**30:.0f} GiB"
    if need <= budget:
        return "float32", f"auto: float32 ({gib})"
    return "float16", f"auto: float16 ({gib})"


def _model_name(model: torch.nn.Module) -> str:
    for name in (
        getattr(model, "hopaudit_name", None),
        getattr(model, "name_or_path", None),
        getattr(getattr(model, "config", None), "_name_or_path", None),
    ):
        if name:
            return str(name)
    return type(model).__name__


def _config_dict(model: torch.nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return {"class": type(model).__name__}
    out = {}
    for key, value in config.to_dict().items():
        if isinstance(value, (str, int, float, bool, type(None))):
            out[key] = value
    out["class"] = type(model).__name__
    return out


def _umap_layers(names: list[str], chosen: list[int | str] | None, reports: dict) -> list[str]:
    """Default: the first, middle and last block and ``final``; only measured layers."""
    if chosen is None:
        blocks = names[:-1]
        picks = [blocks[0], blocks[len(blocks) // 2], blocks[-1], names[-1]] if blocks else names
    else:
        picks = []
        for layer in chosen:
            if isinstance(layer, (int, np.integer)):
                if not -len(names) <= layer < len(names):
                    raise DataError(f"umap_layers: layer {layer} out of range 0..{len(names) - 1}")
                picks.append(names[layer])
            elif layer in names:
                picks.append(layer)
            else:
                raise DataError(f"umap_layers: no layer named {layer!r}")
    seen: list[str] = []
    for name in picks:
        if name in reports and name not in seen:
            seen.append(name)
    return seen


def _embed(
    report: Any,
    activations: np.ndarray,
    row_sequence: np.ndarray,
    max_points: int,
    seed: int,
    device: torch.device,
) -> Embedding:
    """UMAP of one layer on the kNN graph its search built (a fresh graph for a subsample)."""
    from .embedding import umap_from_knn
    from .geometry import normalize_rows
    from .search import build_index, knn_self

    valid = np.asarray(report.valid_rows)
    n = len(valid)
    k = report.knn_ids.shape[1] - 1
    if max_points and n > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
        sub = normalize_rows(np.asarray(activations[valid[pick]], np.float32), report.normalize)
        idx = build_index(sub, report.index.kind, device=device)
        ids, dists = knn_self(idx, sub, k)
        ids = np.concatenate([np.arange(len(pick))[:, None], ids], axis=1)
        dists = np.concatenate([np.zeros((len(pick), 1), dists.dtype), dists], axis=1)
    else:
        pick = np.arange(n)
        ids, dists = report.knn_ids, report.knn_dists
        sub = normalize_rows(np.asarray(activations[valid], np.float32), report.normalize)
    # the patterns give the layout its PCA start (see embedding.py for why, measured)
    xy = umap_from_knn(ids, dists, n_neighbors=min(k + 1, 15), seed=seed, data=sub)
    rows = valid[pick]
    ratio = report.nn[pick] / report.r_hat if report.r_hat > 0 else np.full(len(pick), np.nan)
    return Embedding(
        xy=np.asarray(xy, dtype=np.float32),
        rows=rows,
        sequence=row_sequence[rows],
        basin=np.asarray(report.basin)[pick],
        ratio=np.asarray(ratio, dtype=np.float32),
        n_total=n,
    )
