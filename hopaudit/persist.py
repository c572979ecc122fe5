"""Saved audits: ``audit.save(dir)`` and ``hopaudit.load(dir)``.

The on-disk format (version 1), one directory per audit::

    audit.json            format name and version, hopaudit version, model name and config,
                          every option, scalars of the capture and of each layer report, and a
                          manifest of every other file with its size in bytes
    texts.json            the decoded text of every sequence
    capture.npz           per-row sequence and position; per-sequence NLL, Min-K%, top-1
    activations/          the activation store (hopaudit.store format: meta.json + raw files)
    heldout/              the held-out activation store, when the audit had one
    reports/layer_NNN.npz the arrays of each measured layer's report
    indexes/layer_NNN.bin the layer's HNSW index in hnswlib's own format (exact indexes are
                          rebuilt from the activations on load: they are the data itself)
    embeddings/layer_NNN.npz  the UMAP layouts

``NNN`` is the layer's stable id (its row in ``audit.layers``). A file that is missing, of the
wrong size, or unreadable gives a :class:`~hopaudit.errors.FormatError` naming it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .errors import FormatError, SearchError

FORMAT = "hopaudit-audit"
FORMAT_VERSION = 1


def _jsonable(value: Any) -> Any:
    """Plain JSON for scalars, with non-finite floats spelled as strings (JSON has none)."""
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else {"float": repr(v)}
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _unjson(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"float"}:
            return float(value["float"])
        return {k: _unjson(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unjson(v) for v in value]
    return value


def _split_fields(obj: Any, skip: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A dataclass's fields as (JSON scalars, named arrays); dicts of arrays are flattened."""
    scalars: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray):
            arrays[f.name] = value
        elif (
            isinstance(value, dict)
            and value
            and all(isinstance(v, np.ndarray) for v in value.values())
        ):
            keys = list(value)
            scalars[f.name] = {"dict_of_arrays": [_jsonable(k) for k in keys]}
            for i, key in enumerate(keys):
                arrays[f"{f.name}.{i}"] = value[key]
        else:
            scalars[f.name] = _jsonable(value)
    return scalars, arrays


def _join_fields(scalars: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in scalars.items():
        if isinstance(value, dict) and "dict_of_arrays" in value:
            keys = [_unjson(k) for k in value["dict_of_arrays"]]
            out[name] = {k: arrays[f"{name}.{i}"] for i, k in enumerate(keys)}
        else:
            out[name] = _unjson(value)
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


# ------------------------------------------------------------------------------------ save
def save_audit(audit: Any, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``audit`` to the directory ``path`` (created; refused if not empty)."""
    from .search import save_index
    from .store import ActivationStore

    root = Path(path).expanduser()
    if root.exists() and any(root.iterdir()):
        if not overwrite or not (root / "audit.json").is_file():
            raise FormatError(
                f"{root} exists and is not empty; choose a new directory"
                + (" or pass overwrite=True" if (root / "audit.json").is_file() else "")
            )
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("reports", "indexes", "embeddings"):
        (root / sub).mkdir()

    def copy_store(src: Any, dest: Path) -> None:
        store = ActivationStore(src.layer_names, dtype=src.dtype, path=dest)
        for name in src.layer_names:
            arr = src.get(name)
            for start in range(0, max(arr.shape[0], 1), 65536):
                store.append(name, np.asarray(arr[start : start + 65536]))
        store.finalize()

    cap = audit.capture
    copy_store(cap.store, root / "activations")
    cap_scalars, cap_arrays = _split_fields(cap, skip=("store",))
    cap_arrays = {k: v for k, v in cap_arrays.items() if v is not None}
    np.savez(root / "capture.npz", **cap_arrays)
    held_scalars = None
    if audit.heldout_capture is not None:
        copy_store(audit.heldout_capture.store, root / "heldout")
        held_scalars, held_arrays = _split_fields(audit.heldout_capture, skip=("store",))
        np.savez(root / "heldout.npz", **held_arrays)

    reports = {}
    for i, name in enumerate(audit.layer_names):
        rep = audit.reports.get(name)
        if rep is None:
            continue
        scalars, arrays = _split_fields(rep, skip=("index",))
        np.savez(root / "reports" / f"layer_{i:03d}.npz", **arrays)
        if rep.index is not None:
            scalars["index"] = save_index(rep.index, root / "indexes" / f"layer_{i:03d}.bin")
        reports[name] = scalars

    embeddings = {}
    for name, emb in audit.embeddings.items():
        i = audit.layer_names.index(name)
        scalars, arrays = _split_fields(emb, skip=())
        np.savez(root / "embeddings" / f"layer_{i:03d}.npz", **arrays)
        embeddings[name] = scalars

    (root / "texts.json").write_text(json.dumps(audit.texts), encoding="utf-8")

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hopaudit_version": __version__,
        "audit": _jsonable(
            {
                f.name: getattr(audit, f.name)
                for f in dataclasses.fields(audit)
                if f.name not in ("capture", "reports", "embeddings", "heldout_capture", "texts")
            }
        ),
        "capture": cap_scalars,
        "heldout": held_scalars,
        "reports": reports,
        "embeddings": embeddings,
    }
    meta["files"] = {
        str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()
    }
    tmp = root / "audit.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    tmp.rename(root / "audit.json")
    return root


# ------------------------------------------------------------------------------------ load
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(f"{path}: missing; this is not a complete saved audit") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: damaged ({exc})") from None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise FormatError(f"{path}: missing; this is not a complete saved audit") from None
    except (OSError, ValueError, EOFError) as exc:
        raise FormatError(f"{path}: damaged ({exc})") from None


def load(path: str | Path) -> Any:
    """Read an audit written by :func:`save_audit`; errors name the file and the problem."""
    from .capture import CaptureResult
    from .measure import LayerReport
    from .result import Audit, Embedding
    from .search import load_index
    from .store import ActivationStore

    root = Path(path).expanduser()
    if not root.is_dir():
        raise FormatError(f"{root}: no such directory (expected a saved audit)")
    meta = _read_json(root / "audit.json")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FormatError(f"{root / 'audit.json'}: not a hopaudit audit (format {FORMAT!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FormatError(
            f"{root / 'audit.json'}: format version {version} was written by hopaudit "
            f"{meta.get('hopaudit_version')}; this hopaudit {__version__} reads up to "
            f"{FORMAT_VERSION}: upgrade hopaudit"
        )
    for rel, size in meta.get("files", {}).items():
        file = root / rel
        if not file.is_file():
            raise FormatError(f"{file}: missing; the saved audit is incomplete")
        if file.stat().st_size != size:
            raise FormatError(
                f"{file}: {file.stat().st_size} bytes, expected {size}: the file is damaged"
            )

    def open_store(dest: Path) -> Any:
        try:
            return ActivationStore.open(dest)
        except FormatError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise FormatError(f"{dest}: damaged activation store ({exc})") from None

    def capture_of(scalars: dict, arrays: dict, store: Any) -> Any:
        fields = _join_fields(scalars, arrays)
        for f in dataclasses.fields(CaptureResult):
            if f.name not in fields and f.name != "store":
                fields[f.name] = None
        return CaptureResult(store=store, **fields)

    cap = capture_of(
        meta["capture"], _read_npz(root / "capture.npz"), open_store(root / "activations")
    )
    held = None
    if meta.get("heldout") is not None:
        held = capture_of(
            meta["heldout"], _read_npz(root / "heldout.npz"), open_store(root / "heldout")
        )

    fields = _unjson(meta["audit"])
    layer_names = fields["layer_names"]
    reports = {}
    for name, scalars in meta["reports"].items():
        i = layer_names.index(name)
        scalars = dict(scalars)
        index_meta = scalars.pop("index", None)
        rep_fields = _fix_dict_keys(
            _join_fields(scalars, _read_npz(root / "reports" / f"layer_{i:03d}.npz"))
        )
        rep_fields.setdefault("index", None)
        rep = LayerReport(**rep_fields)
        if index_meta is not None:
            try:
                rep.index = load_index(
                    index_meta,
                    root / "indexes" / f"layer_{i:03d}.bin",
                    patterns=lambda name=name, rep=rep: _normalized_patterns(cap, name, rep),
                )
            except SearchError as exc:
                raise FormatError(str(exc)) from None
        reports[name] = rep

    embeddings = {}
    for name, scalars in meta["embeddings"].items():
        i = layer_names.index(name)
        emb_fields = _join_fields(scalars, _read_npz(root / "embeddings" / f"layer_{i:03d}.npz"))
        embeddings[name] = Embedding(**emb_fields)

    texts = _read_json(root / "texts.json")
    return Audit(
        **fields,
        texts=texts,
        capture=cap,
        reports=reports,
        embeddings=embeddings,
        heldout_capture=held,
    )


def _normalized_patterns(cap: Any, name: str, rep: Any) -> np.ndarray:
    """The patterns an index was built on: the finite rows, normalized as the report says."""
    from .geometry import normalize_rows

    rows = np.asarray(cap.store.get(name))[np.asarray(rep.valid_rows)]
    return normalize_rows(rows.astype(np.float32), rep.normalize)
