"""``hopaudit.load(dir)``: a saved audit read back, every file checked against its manifest
before any parser sees it (docs/saved-audits.md)."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hopaudit.errors import DataError, FormatError, SearchError
from hopaudit.jsonable import from_json
from hopaudit.storage.folder import Folder, held_path, hold_file, read_whole
from hopaudit.storage.manifest import (
    GRAPH_FIELDS,
    META,
    check_files,
    damaged,
    is_index,
    open_regular,
    read_listed,
    read_manifest,
    read_meta,
)
from hopaudit.storage.schema import check_arrays, check_store, check_texts
from hopaudit.storage.tables import read_parquet


def _join_fields(scalars: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in scalars.items():
        if isinstance(value, dict) and "dict_of_arrays" in value:
            keys = [from_json(k) for k in value["dict_of_arrays"]]
            out[name] = {k: arrays[f"{name}.{i}"] for i, k in enumerate(keys)}
        else:
            out[name] = from_json(value)
    for name, value in arrays.items():
        if "." not in name:
            out[name] = value
    return out


def _fix_dict_keys(fields: dict[str, Any]) -> dict[str, Any]:
    """JSON turns float keys (saturation fractions) into strings; turn them back."""
    for name in ("saturation",):
        if isinstance(fields.get(name), dict):
            fields[name] = {float(k): tuple(v) for k, v in fields[name].items()}
    return fields


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with damaged(path), np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _read_graph(root: Path, i: int, listed: Any) -> dict[str, np.ndarray]:
    """Layer ``i``'s kNN graph as read-only memory maps (its files were checked against the
    manifest already): ids and distances of one shape, ids integers, distances floats."""
    out = {}
    for field, kinds in zip(GRAPH_FIELDS, ("iu", "f"), strict=True):
        path = listed(f"graphs/layer_{i:03d}.{field.removeprefix('knn_')}.npy")
        with damaged(path):
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if arr.ndim != 2 or arr.dtype.kind not in kinds:
            raise FormatError(f"{path}: damaged (a {arr.dtype} array of shape {arr.shape})")
        out[field] = arr
    if out["knn_ids"].shape != out["knn_dists"].shape:
        raise FormatError(f"{root / 'graphs'}: damaged (layer {i}'s ids and distances differ)")
    return out


def _n_sequences(capture: dict[str, np.ndarray], default: int) -> int:
    """The sequences a capture holds: its per-sequence arrays' length (else ``default``)."""
    for name, arr in capture.items():
        if name.startswith("seq_"):
            return len(arr)
    return default


def _check_capture(arrays: dict[str, np.ndarray], file: Path, n_seq: int | None) -> int:
    """capture.npz's members (schema.check_arrays); returns its number of rows."""
    rows = arrays.get("row_sequence")
    n_rows = len(rows) if isinstance(rows, np.ndarray) else 0
    lengths = {"row_*": n_rows} | ({} if n_seq is None else {"seq_*": n_seq})
    bounds = {} if n_seq is None else {"row_sequence": n_seq}
    check_arrays(arrays, file, lengths=lengths, bounds=bounds)
    return n_rows


def _check_report(
    arrays: dict[str, np.ndarray], scalars: Any, file: Path, n_rows: int, held_rows: int | None
) -> None:
    """A report's members: one value per pattern, per query, per saturation step."""
    n = scalars.get("n_patterns") if isinstance(scalars, dict) else None
    n = n if isinstance(n, int) else None
    per_pattern = ("nn", "nn2", "basin", "basin_sizes", "valid_rows", "basin_sizes_queries")
    lengths = {} if n is None else dict.fromkeys(per_pattern, n)
    if isinstance(arrays.get("saturation_queries"), np.ndarray):
        lengths["saturation_nn.*"] = len(arrays["saturation_queries"])
    if isinstance(arrays.get("query_rows"), np.ndarray):
        lengths |= dict.fromkeys(("nn_queries", "basin_queries"), len(arrays["query_rows"]))
    bounds = {"valid_rows": n_rows}
    if n is not None:
        bounds |= dict.fromkeys(("basin", "basin_queries", "saturation_queries"), n)
    if held_rows is not None:
        bounds["query_rows"] = held_rows
    own = {k: v for k, v in arrays.items() if k not in GRAPH_FIELDS}
    check_arrays(own, file, lengths=lengths, bounds=bounds)


def _check_embedding(
    arrays: dict[str, np.ndarray], file: Path, n_rows: int, n_seq: int, n_patterns: int | None
) -> None:
    """A UMAP layout's members: one value (or x, y) per point, ids inside what they name."""
    rows = arrays.get("rows")
    lengths = {} if rows is None else dict.fromkeys(arrays, len(rows))
    bounds = {"rows": n_rows, "sequence": n_seq}
    if n_patterns is not None:
        bounds["basin"] = n_patterns
    check_arrays(arrays, file, lengths=lengths, bounds=bounds, two_d=("xy",))


def _check_metadata(df: Any, file: Path, n_seq: int) -> Any:
    """metadata.parquet as audit(metadata=) would take it: the user's columns, one row per
    sequence, no hopaudit column name, plain values."""
    from hopaudit.results.metadata import check_metadata

    try:
        return check_metadata(df, n_seq)
    except DataError as exc:
        raise FormatError(f"{file}: damaged ({exc})") from None


def _read_json(path: Path) -> Any:
    with damaged(path):
        fd = open_regular(path)
        with os.fdopen(fd, "rb") as handle:
            return json.loads(handle.read().decode("utf-8"))


def load(path: str | Path, *, verify: bool = True, rebuild_index: bool = False) -> Any:
    """Read an audit written by :func:`save_audit`; errors name the file and the problem.

    With ``verify=True`` (default) every file is checked against the SHA-256 its manifest
    holds before any parser reads it (``verify=False`` checks types and sizes only). HNSW
    index files are always checked, and one that fails (or is missing) is rebuilt from the
    activations with a warning; ``rebuild_index=True`` rebuilds every HNSW index without
    reading the saved ones (for audits from someone else: no third-party binary reaches
    hnswlib). Nothing in a saved audit is executed.

    Every file is read through one descriptor of the folder taken at the start
    (:class:`~hopaudit.storage.folder.Folder`), so a save replacing the folder meanwhile
    gives the old audit whole or, when it deleted files under this load, a new start on the
    new audit: never a mix of two. A loaded audit keeps its activations mapped and its index
    files open: it answers from the bytes it verified whatever happens to the folder later.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FormatError(f"{root}: no such directory (expected a saved audit)")
    root = root.resolve()  # the folder named (a link to it is fine); nothing inside may be one
    return read_whole(root, lambda folder: _load(folder, verify, rebuild_index))


def _keep_mapped(layer: str) -> None:
    """A loaded store's ``release``: its layers stay mapped from the files it verified (a
    mapping of a clean file costs address space; the kernel reclaims its pages)."""


def _load(folder: Folder, verify: bool, rebuild_index: bool) -> Any:
    from hopaudit.capture.result import CaptureResult
    from hopaudit.capture.store import ActivationStore
    from hopaudit.layer.measuring import LayerReport
    from hopaudit.results.audit import Audit, Embedding
    from hopaudit.search.backends import load_index

    root = folder.io  # every read goes through the held folder
    meta_file = root / META
    meta = read_meta(root)
    manifest = read_manifest(meta, meta_file)
    problems = check_files(root, manifest, verify)
    for rel, problem in problems.items():
        if not is_index(rel):
            raise FormatError(f"{root / rel}: {problem}")

    def listed(rel: str) -> Path:
        if rel not in manifest:
            raise FormatError(f"{root / rel}: missing from the manifest in {meta_file}: damaged")
        return root / rel

    def open_store(sub: str) -> Any:
        dest = root / sub
        listed(f"{sub}/meta.json")
        with damaged(dest / "meta.json"):
            store = ActivationStore.open(dest)
            for name in store.layer_names:
                if store.shape(name)[0]:
                    listed(f"{sub}/{store._filename(name)}")
                store.get(name)  # mapped now: a later save over this folder reads these
        store.path = folder.root / sub  # its name; the maps stay those of the held folder
        store.release = _keep_mapped  # never mapped again by path
        return store

    def capture_of(scalars: Any, arrays: dict, store: Any) -> Any:
        fields = _join_fields(scalars, arrays)
        for f in dataclasses.fields(CaptureResult):
            if f.name not in fields and f.name != "store":
                fields[f.name] = None
        return CaptureResult(store=store, **fields)

    texts = _read_json(listed("texts.json"))
    with damaged(meta_file):
        fields = from_json(meta["audit"])
        layer_names = fields["layer_names"]
        if not isinstance(layer_names, list) or not all(isinstance(n, str) for n in layer_names):
            raise FormatError(f"{meta_file}: damaged (layer_names)")
        reports_meta = meta["reports"]
        embeddings_meta = meta["embeddings"]
        cap_arrays = _read_npz(listed("capture.npz"))
    hidden = fields.get("hidden_size")
    check_texts(texts, root / "texts.json", _n_sequences(cap_arrays, len(texts)))
    n_rows = _check_capture(cap_arrays, root / "capture.npz", len(texts))
    held_rows = None
    with damaged(meta_file):
        cap = capture_of(meta["capture"], cap_arrays, open_store("activations"))
        stacks = bool(meta["capture"].get("stack_sequence"))  # encoder-decoder: rows per stack
        check_store(cap.store, root / "activations/meta.json", None if stacks else n_rows, hidden)
        held = None
        if meta.get("heldout") is not None:
            held_arrays = _read_npz(listed("heldout.npz"))
            held_texts = fields.get("heldout_texts")
            n_held = len(held_texts) if isinstance(held_texts, list) else None
            held_rows = _check_capture(held_arrays, root / "heldout.npz", n_held)
            held = capture_of(meta["heldout"], held_arrays, open_store("heldout"))
            held_check = None if stacks else held_rows
            check_store(held.store, root / "heldout/meta.json", held_check, hidden)
    reports = {}
    for name, scalars in reports_meta.items():
        with damaged(meta_file):
            i = layer_names.index(name)
            rel = f"reports/layer_{i:03d}.npz"
            arrays = _read_npz(listed(rel))
            _check_report(arrays, scalars, root / rel, n_rows, held_rows)
            if "knn_ids" not in arrays:  # format 3: the graph in its own files, mapped
                arrays.update(_read_graph(root, i, listed))
        with damaged(root / rel):
            scalars = dict(scalars)
            index_meta = scalars.pop("index", None)
            rep_fields = _fix_dict_keys(_join_fields(scalars, arrays))
            rep_fields.setdefault("index", None)
            rep = LayerReport(**rep_fields)
        if index_meta is not None:
            with damaged(meta_file):
                rep.index = _load_layer_index(
                    index_meta,
                    folder,
                    f"indexes/layer_{i:03d}.bin",
                    manifest,
                    problems,
                    rebuild_index,
                    lambda name=name, rep=rep: _normalized_patterns(cap, name, rep),
                    load_index,
                )
        reports[name] = rep

    embeddings = {}
    for name, scalars in embeddings_meta.items():
        with damaged(meta_file):
            i = layer_names.index(name)
            rel = f"embeddings/layer_{i:03d}.npz"
            arrays = _read_npz(listed(rel))
            rep = reports.get(name)
            n_patterns = None if rep is None else len(rep.valid_rows)
            _check_embedding(arrays, root / rel, n_rows, len(texts), n_patterns)
        with damaged(root / rel):
            embeddings[name] = Embedding(**_join_fields(scalars, arrays))

    if "metadata.parquet" in manifest:  # its bytes are checked against the manifest, then read
        data = read_listed(root, "metadata.parquet", manifest)
        fields["metadata"] = _check_metadata(
            read_parquet(data, root / "metadata.parquet"), root / "metadata.parquet", len(texts)
        )
    with damaged(meta_file):
        return Audit(
            **fields,
            texts=texts,
            capture=cap,
            reports=reports,
            embeddings=embeddings,
            heldout_capture=held,
        )


def _load_layer_index(
    index_meta: dict,
    folder: Folder,
    rel: str,
    manifest: dict,
    problems: dict[str, str],
    rebuild: bool,
    patterns: Any,
    load_index: Any,
) -> Any:
    """A layer's saved index; an HNSW file that is not listed, missing or fails its check is
    never opened: the index is rebuilt from the patterns (with a warning unless asked). A
    sound one is held open now (the descriptor the check read through) and read on its first
    query (docs/scale.md: one layer's index at a time), from that descriptor, never by path."""
    from hopaudit.search.backends import LazyIndex

    shown = folder.root / rel
    if index_meta.get("kind") != "hnsw":
        io = folder.io / rel
        return LazyIndex(index_meta, lambda: load_index(index_meta, io, patterns=patterns))
    problem = problems.get(rel) or (None if rel in manifest else "not in the manifest")
    if problem is None and not rebuild:
        fd = hold_file(folder.io / rel)
        source = held_path(fd) or shown

        def opener() -> Any:
            try:
                return load_index(index_meta, source, patterns=patterns)
            except SearchError as exc:  # its digest matched: written so, not damaged on disk
                problem = str(exc).replace(f"{source}: ", "").replace(str(source), "")
                raise FormatError(
                    f"{shown}: {problem}; its SHA-256 matches the manifest, so the audit was "
                    "written so: load it with rebuild_index=True to rebuild its indexes from "
                    "the activations"
                ) from None

        return LazyIndex(index_meta, opener, file=shown, fd=fd)
    return _rebuild_index(index_meta, patterns, None if rebuild else problem, shown)


def _rebuild_index(index_meta: dict, patterns: Any, problem: str | None, shown: Path) -> Any:
    """The HNSW index built again from the saved activations; a warning names the file and
    its ``problem`` unless the rebuild was asked for (``problem`` None)."""
    from hopaudit.search.backends import build_index

    if problem is not None:
        warnings.warn(
            f"{shown}: {problem.lstrip(': ')}; rebuilding the HNSW index from the saved "
            "activations (derived data: nothing is lost)",
            RuntimeWarning,
            stacklevel=4,
        )
    return build_index(
        patterns(),
        "hnsw",
        M=int(index_meta["M"]),
        ef_construction=int(index_meta["ef_construction"]),
        ef=None if index_meta.get("ef") is None else int(index_meta["ef"]),
    )


def _normalized_patterns(cap: Any, name: str, rep: Any) -> np.ndarray:
    """The patterns an index was built on: the finite rows, normalized as the report says."""
    from hopaudit.geometry import normalize_rows

    rows = np.asarray(cap.store.get(name))[np.asarray(rep.valid_rows)]
    return normalize_rows(rows.astype(np.float32), rep.normalize)
