"""Saved audits: ``audit.save(dir)`` and ``hopaudit.load(dir)`` (docs/saved-audits.md).

The on-disk format (version 3), one directory per audit::

    audit.json            its own SHA-256 (first key, over the file with the digest zeroed),
                          format name and version, hopaudit version, model name and config,
                          every option, scalars of the capture and of each layer report, and a
                          manifest of every other file: relative path -> size and SHA-256
    texts.json            the decoded text of every sequence
    capture.npz           per-row sequence and position; per-sequence NLL, Min-K%, top-1
    activations/          the activation store (hopaudit.store format: meta.json + raw files)
    heldout/              the held-out activation store, when the audit had one
    heldout.npz           the held-out capture's per-row and per-sequence arrays (as capture.npz)
    reports/layer_NNN.npz the arrays of each measured layer's report but its kNN graph
    graphs/layer_NNN.ids.npy, graphs/layer_NNN.dists.npy  the kNN graph, memory-mapped on
                          load so that a loaded audit does not hold every layer's graph
    indexes/layer_NNN.bin the layer's HNSW index in hnswlib's own format (exact indexes are
                          rebuilt from the activations on load: they are the data itself)
    embeddings/layer_NNN.npz  the UMAP layouts
    layers.parquet, samples.parquet (membership.parquet)  the tidy tables, with the columns
                          that name the audit (hopaudit/catalog.py), for DuckDB and polars
    metadata.parquet      the per-sequence columns given to audit(metadata=...), when any

``NNN`` is the layer's stable id (its row in ``audit.layers``).

Saving is atomic: everything is written into a fresh temporary folder beside the target, flushed,
and renamed into place; an audit it replaces is moved aside only then, and only the files its
manifest lists are deleted. Loading checks every file against the manifest (regular file, size,
SHA-256) before any parser reads it; a file that is missing, damaged or refused gives a
:class:`~hopaudit.errors.FormatError` naming it. An HNSW index is derived data: when its file
fails the check it is rebuilt from the activations with a warning, so an unverified file never
reaches hnswlib. Nothing in a saved audit is ever executed (JSON, ``.npz`` without pickles, raw
arrays). Version 1 folders (sizes only, no digests) still load, their indexes rebuilt; version 2
kept the graph inside ``reports/layer_NNN.npz``, and still loads.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import os
import stat
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .atomic import exchange, fsync_dir, fsync_file, lstat_regular, temporary_dir
from .errors import FormatError, SearchError

FORMAT = "hopaudit-audit"
FORMAT_VERSION = 3
#: The kNN graph of each layer, saved as plain ``.npy`` files so that load can map them.
GRAPH_FIELDS = ("knn_ids", "knn_dists")
META = "audit.json"
#: audit.json holds scalars only (a few MB for hundreds of layers); anything bigger is not one.
MAX_META_BYTES = 256 << 20
_HASH_CHUNK = 8 << 20  # bytes hashed per read: hashlib releases the GIL on big buffers
_DIGEST_KEY = b'{\n "sha256": "'
_ZERO_DIGEST = b"0" * 64


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


# ------------------------------------------------------------------------------ files
_O_READ = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def _open_regular(path: Path) -> int:
    """A read-only descriptor of a regular file, never through a symlink nor blocking on a
    FIFO; the caller checked the path with :func:`lstat_regular` (this closes the race)."""
    fd = os.open(path, _O_READ)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FormatError(f"{path}: not a regular file (refused)")
    return fd


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with os.fdopen(_open_regular(path), "rb", buffering=0) as handle:
        # no bigger than the file: a zeroed 8 MB buffer per small file costs more than its hash
        buffer = bytearray(min(_HASH_CHUNK, max(os.fstat(handle.fileno()).st_size, 1)))
        view = memoryview(buffer)
        while n := handle.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _hash_all(paths: list[Path]) -> list[str]:
    """SHA-256 of several files, in threads (hashlib and reads release the GIL)."""
    from .search import default_threads

    if len(paths) < 2:
        return [_sha256_file(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(4, default_threads(), len(paths))) as pool:
        return list(pool.map(_sha256_file, paths))


def _bad_rel(rel: Any) -> str | None:
    """Why a manifest path is refused: it must be relative, inside the folder, plain names."""
    if not isinstance(rel, str) or not rel:
        return "not a path"
    if rel.startswith("/") or "\\" in rel or "\x00" in rel or ":" in rel:
        return "not a relative path inside the folder"
    if any(part in ("", ".", "..") for part in rel.split("/")):
        return "not a plain path inside the folder"
    if rel == META:
        return "the metadata file itself"
    return None


def _encode_meta(meta: dict[str, Any]) -> bytes:
    """audit.json's bytes: its own SHA-256 first, computed with the digest's place zeroed."""
    body = json.dumps({"sha256": _ZERO_DIGEST.decode(), **meta}, indent=1).encode("utf-8")
    n = len(_DIGEST_KEY)
    assert body[:n] == _DIGEST_KEY and body[n : n + 64] == _ZERO_DIGEST
    return body[:n] + hashlib.sha256(body).hexdigest().encode() + body[n + 64 :]


def _decode_meta(data: bytes, file: Path) -> dict[str, Any]:
    """Check audit.json's own digest (when it has one) before JSON sees it, then parse it."""
    n = len(_DIGEST_KEY)
    checked = data[:n] == _DIGEST_KEY
    if checked:
        stored = data[n : n + 64]
        if hashlib.sha256(data[:n] + _ZERO_DIGEST + data[n + 64 :]).hexdigest().encode() != stored:
            raise FormatError(f"{file}: damaged (its SHA-256 does not match its content)")
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{file}: damaged ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FormatError(f"{file}: not a hopaudit audit (format {FORMAT!r})")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise FormatError(f"{file}: damaged (format_version {version!r})")
    if version > FORMAT_VERSION:
        raise FormatError(
            f"{file}: format version {version} was written by hopaudit "
            f"{meta.get('hopaudit_version')}; this hopaudit {__version__} reads up to "
            f"{FORMAT_VERSION}: upgrade hopaudit"
        )
    if version >= 2 and not checked:
        raise FormatError(f"{file}: damaged (its SHA-256 is missing)")
    return meta


def _read_meta(root: Path) -> dict[str, Any]:
    """The verified, parsed audit.json of ``root`` (FormatError naming it otherwise)."""
    file = root / META
    st = lstat_regular(root, META)
    if isinstance(st, str):
        if st == "missing":
            raise FormatError(f"{file}: missing; this is not a saved audit (or not a complete one)")
        raise FormatError(f"{file}: {st}")
    if st.st_size > MAX_META_BYTES:
        raise FormatError(f"{file}: {st.st_size} bytes, too big for an audit's metadata (refused)")
    fd = _open_regular(file)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_META_BYTES + 1)
    return _decode_meta(data, file)


def _manifest(meta: dict[str, Any], file: Path) -> dict[str, tuple[int, str | None]]:
    """Relative path -> (size, SHA-256 or None for format 1), every path checked."""
    files = meta.get("files")
    if not isinstance(files, dict):
        raise FormatError(f"{file}: damaged (no manifest of files)")
    out: dict[str, tuple[int, str | None]] = {}
    for rel, entry in files.items():
        problem = _bad_rel(rel)
        if problem:
            raise FormatError(f"{file}: the manifest names {rel!r}, {problem} (refused)")
        if isinstance(entry, int) and not isinstance(entry, bool):
            size, digest = entry, None
        elif isinstance(entry, dict):
            size, digest = entry.get("size"), entry.get("sha256")
        else:
            size = digest = None
        ok_digest = digest is None or (
            isinstance(digest, str)
            and len(digest) == 64
            and all(c in "0123456789abcdef" for c in digest)
        )
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or not ok_digest:
            raise FormatError(f"{file}: damaged (bad manifest entry for {rel!r})")
        if digest is None and meta.get("format_version", 1) >= 2:
            raise FormatError(f"{file}: damaged (no SHA-256 for {rel!r})")
        out[rel] = (size, digest)
    return out


def _is_index(rel: str) -> bool:
    return rel.startswith("indexes/") and rel.endswith(".bin")


def _check_files(
    root: Path, manifest: dict[str, tuple[int, str | None]], verify: bool
) -> dict[str, str]:
    """Each listed file's problem, if any: refused type, missing, size, SHA-256. Index files
    are always hashed (they go to hnswlib, which trusts its input); the rest when ``verify``."""
    problems: dict[str, str] = {}
    to_hash: list[str] = []
    for rel, (size, digest) in manifest.items():
        st = lstat_regular(root, rel)
        if isinstance(st, str):
            problems[rel] = st + ("; the saved audit is incomplete" if st == "missing" else "")
        elif st.st_size != size:
            problems[rel] = f"{st.st_size} bytes, expected {size}: the file is damaged"
        elif digest is None:
            if _is_index(rel):
                problems[rel] = "saved without a SHA-256 (format 1), so it is not trusted"
        elif verify or _is_index(rel):
            to_hash.append(rel)
    try:
        digests = _hash_all([root / rel for rel in to_hash])
    except OSError as exc:
        raise FormatError(f"{root}: cannot read the saved audit ({exc})") from None
    for rel, got in zip(to_hash, digests, strict=True):
        if got != manifest[rel][1]:
            problems[rel] = "damaged (its SHA-256 does not match the manifest)"
    return problems


@contextmanager
def _damaged(file: Path) -> Iterator[None]:
    """Whatever a parser raises on a damaged file becomes a FormatError naming the file."""
    try:
        yield
    except FormatError:
        raise
    except (
        KeyError,
        TypeError,
        ValueError,
        IndexError,
        AttributeError,
        RecursionError,
        OverflowError,
        MemoryError,
        EOFError,
        OSError,
        zipfile.BadZipFile,
        SearchError,
    ) as exc:
        raise FormatError(f"{file}: damaged ({type(exc).__name__}: {exc})") from None


# ------------------------------------------------------------------------------ save
def save_audit(audit: Any, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``audit`` to the folder ``path``, atomically.

    Everything goes into a fresh temporary folder beside ``path`` that is renamed into place
    once complete, so ``path`` holds the old audit or the new one, never a partial one. A
    missing or empty folder is fine; a saved audit is replaced only with ``overwrite=True``
    (moved aside once the new one is complete, then only the files its manifest lists are
    deleted); any other folder is refused untouched. ``load(d).save(d, overwrite=True)`` works.
    """
    root = Path(path).expanduser()
    _check_target(root, overwrite)
    root.parent.mkdir(parents=True, exist_ok=True)
    with temporary_dir(root) as tmp:
        _write(audit, tmp, folder=root.name)
        _move_into_place(tmp, root, overwrite)
    return root


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_target(root: Path, overwrite: bool) -> None:
    """Refuse, before anything is written, a target that is not missing, empty, or (with
    ``overwrite``) a saved audit holding nothing but its own files."""
    if os.path.islink(root):
        raise FormatError(
            f"{root} is a symbolic link; save to a real folder path (hopaudit never writes "
            "through a link)"
        )
    if not os.path.lexists(root):
        return
    if not root.is_dir():
        raise FormatError(f"{root} exists and is a file; choose a new folder for the audit")
    entries = sorted(os.listdir(root))
    if not entries:
        return
    try:
        meta = _read_meta(root)
    except FormatError as exc:
        raise FormatError(
            f"{root} exists and is not empty ({_listing(entries)}) and is not a saved audit "
            f"({exc}); choose a new folder: nothing in it was touched"
        ) from None
    if not overwrite:
        raise FormatError(
            f"{root} holds a saved audit; pass overwrite=True to replace it, or choose a new folder"
        )
    foreign = _foreign(root, _manifest(meta, root / META))
    if foreign:
        raise FormatError(
            f"{root} holds a saved audit plus files that are not part of it "
            f"({_listing(foreign)}); move them away or choose another folder: nothing was changed"
        )


def _audit_dirs(manifest: dict[str, Any]) -> set[str]:
    """The folders an audit's files imply (their ancestors) plus the ones it always makes."""
    dirs = {"reports", "indexes", "embeddings"}
    for rel in manifest:
        parts = rel.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return dirs


def _foreign(root: Path, manifest: dict[str, Any]) -> list[str]:
    """Entries under ``root`` that are not the audit's own (links are never followed)."""
    known_dirs = _audit_dirs(manifest)
    foreign: list[str] = []

    def walk(folder: Path, prefix: str) -> None:
        with os.scandir(folder) as it:
            for entry in sorted(it, key=lambda e: e.name):
                rel = prefix + entry.name
                if entry.is_dir(follow_symlinks=False) and rel in known_dirs:
                    walk(Path(entry.path), rel + "/")
                elif not (
                    entry.is_file(follow_symlinks=False) and (rel in manifest or rel == META)
                ):
                    foreign.append(rel)

    walk(root, "")
    return foreign


def remove_audit(path: str | Path) -> list[str]:
    """Delete a saved audit: only when ``path`` is one by its format marker, and then only the
    files its manifest lists and the folders they leave empty. Returns what was left (files
    that were not the audit's); the folder itself goes when nothing is left."""
    root = Path(path)
    if os.path.islink(root) or not root.is_dir():
        raise FormatError(f"{root}: not a saved audit folder; nothing was deleted")
    meta = _read_meta(root)
    manifest = _manifest(meta, root / META)
    for rel in manifest:
        if not isinstance(lstat_regular(root, rel), str):
            (root / rel).unlink()
    (root / META).unlink()
    for rel in sorted(_audit_dirs(manifest), key=lambda r: -r.count("/")):
        folder = root / rel
        if os.path.isdir(folder) and not os.path.islink(folder):
            with suppress(OSError):  # holds something that is not the audit's: left alone
                folder.rmdir()
    left = sorted(os.listdir(root))
    if not left:
        root.rmdir()
    return left


def _move_into_place(tmp: Path, root: Path, overwrite: bool) -> None:
    """Rename the complete ``tmp`` to ``root``. With ``overwrite`` an audit found there is
    swapped out in one atomic step where the system can (else moved aside, then the new one
    renamed in), and then deleted: only the files its manifest lists."""
    asides: list[Path] = []
    for _ in range(8):
        try:
            os.rename(tmp, root)  # replaces a missing or empty folder, atomically
            break
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
            if not overwrite or not root.is_dir() or os.path.islink(root):
                raise FormatError(
                    f"{root} was created by someone else while this audit was being saved; "
                    "nothing of it was touched: save again"
                ) from None
            _read_meta(root)  # only an audit is ever moved aside
            aside = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            try:
                if exchange(tmp, root):  # root: the new audit; tmp: the old one
                    os.rename(tmp, aside)
                    asides.append(aside)
                    break
                os.rename(root, aside)
            except FileNotFoundError:  # another writer moved it first: try again
                aside.rmdir()
                continue
            asides.append(aside)
    else:
        raise FormatError(f"{root}: other processes keep replacing it; save again")
    fsync_dir(root.parent)
    for aside in asides:
        try:
            left = remove_audit(aside)
        except (FormatError, OSError) as exc:
            left = [str(exc)]
        if left:
            warnings.warn(
                f"the audit that {root} held was replaced; {aside} keeps what was not part of "
                f"it ({_listing(left)})",
                RuntimeWarning,
                stacklevel=3,
            )


def _write(audit: Any, root: Path, *, folder: str | None = None) -> None:
    """Every file of a saved audit into the fresh folder ``root``, audit.json last; ``folder``
    is the name it will be renamed to (the ``audit`` column of its parquet tables)."""
    from .atomic import write_bytes
    from .catalog import json_safe, now_utc, parquet_bytes, write_tables
    from .search import save_index
    from .store import ActivationStore

    for sub in ("reports", "graphs", "indexes", "embeddings"):
        (root / sub).mkdir()

    def copy_store(src: Any, dest: Path) -> None:
        store = ActivationStore(src.layer_names, dtype=src.dtype, path=dest)
        try:
            for name in src.layer_names:
                arr = src.get(name)
                for start in range(0, max(arr.shape[0], 1), 65536):
                    store.append(name, np.asarray(arr[start : start + 65536]))
            store.finalize()
        except BaseException:
            store.discard()
            raise

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
        for field in GRAPH_FIELDS:  # as they are: int32 ids already where the audit had a store
            file = root / "graphs" / f"layer_{i:03d}.{field.removeprefix('knn_')}.npy"
            np.save(file, np.ascontiguousarray(arrays.pop(field)), allow_pickle=False)
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
    saved_at = now_utc()
    write_tables(audit, root, name=folder or root.name, saved_at=saved_at)
    metadata = getattr(audit, "metadata", None)
    if metadata is not None:
        write_bytes(root / "metadata.parquet", parquet_bytes(metadata.reset_index(drop=True)))

    files = sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        fsync_file(p)
    digests = _hash_all(files)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hopaudit_version": __version__,
        "saved_at": saved_at,
        "summary": json_safe(audit.summary()),
        "audit": _jsonable(
            {
                f.name: getattr(audit, f.name)
                for f in dataclasses.fields(audit)
                if f.name
                not in ("capture", "reports", "embeddings", "heldout_capture", "texts", "metadata")
            }
        ),
        "capture": cap_scalars,
        "heldout": held_scalars,
        "reports": reports,
        "embeddings": embeddings,
        "files": {
            p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": d}
            for p, d in zip(files, digests, strict=True)
        },
    }
    with open(root / META, "xb") as handle:
        handle.write(_encode_meta(meta))
        handle.flush()
        os.fsync(handle.fileno())
    for folder in {p.parent for p in files} | {root}:
        fsync_dir(folder)


# ------------------------------------------------------------------------------ load
def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with _damaged(path), np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _read_graph(root: Path, i: int, listed: Any) -> dict[str, np.ndarray]:
    """Layer ``i``'s kNN graph as read-only memory maps (its files were checked against the
    manifest already): ids and distances of one shape, ids integers, distances floats."""
    out = {}
    for field, kinds in zip(GRAPH_FIELDS, ("iu", "f"), strict=True):
        path = listed(f"graphs/layer_{i:03d}.{field.removeprefix('knn_')}.npy")
        with _damaged(path):
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if arr.ndim != 2 or arr.dtype.kind not in kinds:
            raise FormatError(f"{path}: damaged (a {arr.dtype} array of shape {arr.shape})")
        out[field] = arr
    if out["knn_ids"].shape != out["knn_dists"].shape:
        raise FormatError(f"{root / 'graphs'}: damaged (layer {i}'s ids and distances differ)")
    return out


def _read_json(path: Path) -> Any:
    with _damaged(path):
        fd = _open_regular(path)
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
    """
    from .capture import CaptureResult
    from .measure import LayerReport
    from .result import Audit, Embedding
    from .search import load_index
    from .store import ActivationStore

    root = Path(path).expanduser()
    if not root.is_dir():
        raise FormatError(f"{root}: no such directory (expected a saved audit)")
    root = root.resolve()  # the folder named (a link to it is fine); nothing inside may be one
    meta_file = root / META
    meta = _read_meta(root)
    manifest = _manifest(meta, meta_file)
    problems = _check_files(root, manifest, verify)
    for rel, problem in problems.items():
        if not _is_index(rel):
            raise FormatError(f"{root / rel}: {problem}")

    def listed(rel: str) -> Path:
        if rel not in manifest:
            raise FormatError(f"{root / rel}: missing from the manifest in {meta_file}: damaged")
        return root / rel

    def open_store(sub: str) -> Any:
        dest = root / sub
        listed(f"{sub}/meta.json")
        with _damaged(dest / "meta.json"):
            store = ActivationStore.open(dest)
            for name in store.layer_names:
                if store.shape(name)[0]:
                    listed(f"{sub}/{store._filename(name)}")
                store.get(name)  # mapped now: a later save over this folder reads these
        return store

    def capture_of(scalars: Any, arrays: dict, store: Any) -> Any:
        fields = _join_fields(scalars, arrays)
        for f in dataclasses.fields(CaptureResult):
            if f.name not in fields and f.name != "store":
                fields[f.name] = None
        return CaptureResult(store=store, **fields)

    with _damaged(meta_file):
        cap_arrays = _read_npz(listed("capture.npz"))
    with _damaged(meta_file):
        cap = capture_of(meta["capture"], cap_arrays, open_store("activations"))
        held = None
        if meta.get("heldout") is not None:
            held_arrays = _read_npz(listed("heldout.npz"))
            held = capture_of(meta["heldout"], held_arrays, open_store("heldout"))

        fields = _unjson(meta["audit"])
        layer_names = fields["layer_names"]
        if not isinstance(layer_names, list) or not all(isinstance(n, str) for n in layer_names):
            raise FormatError(f"{meta_file}: damaged (layer_names)")
        reports_meta = meta["reports"]
        embeddings_meta = meta["embeddings"]
    reports = {}
    for name, scalars in reports_meta.items():
        with _damaged(meta_file):
            i = layer_names.index(name)
            rel = f"reports/layer_{i:03d}.npz"
            arrays = _read_npz(listed(rel))
            if "knn_ids" not in arrays:  # format 3: the graph in its own files, mapped
                arrays.update(_read_graph(root, i, listed))
        with _damaged(root / rel):
            scalars = dict(scalars)
            index_meta = scalars.pop("index", None)
            rep_fields = _fix_dict_keys(_join_fields(scalars, arrays))
            rep_fields.setdefault("index", None)
            rep = LayerReport(**rep_fields)
        if index_meta is not None:
            with _damaged(meta_file):
                rep.index = _load_layer_index(
                    index_meta,
                    root,
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
        with _damaged(meta_file):
            i = layer_names.index(name)
            rel = f"embeddings/layer_{i:03d}.npz"
            arrays = _read_npz(listed(rel))
        with _damaged(root / rel):
            embeddings[name] = Embedding(**_join_fields(scalars, arrays))

    if "metadata.parquet" in manifest:  # its bytes are checked against the manifest, then read
        from .catalog import _read_listed, _read_parquet

        data = _read_listed(root, "metadata.parquet", manifest)
        fields["metadata"] = _read_parquet(data, root / "metadata.parquet")
    texts = _read_json(listed("texts.json"))
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise FormatError(f"{root / 'texts.json'}: damaged (not a list of texts)")
    with _damaged(meta_file):
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
    root: Path,
    rel: str,
    manifest: dict,
    problems: dict[str, str],
    rebuild: bool,
    patterns: Any,
    load_index: Any,
    now: bool = False,
) -> Any:
    """A layer's saved index; an HNSW file that is not listed, missing or fails its check is
    never opened: the index is rebuilt from the patterns (with a warning unless asked). A
    sound one is opened on its first query (docs/scale.md: one layer's index at a time)."""
    from .search import LazyIndex, build_index

    if index_meta.get("kind") != "hnsw":
        return LazyIndex(index_meta, lambda: load_index(index_meta, root / rel, patterns=patterns))
    problem = problems.get(rel) or (None if rel in manifest else "not in the manifest")
    if problem is None and not rebuild and not now:
        return LazyIndex(
            index_meta,
            lambda: _load_layer_index(
                index_meta, root, rel, manifest, problems, rebuild, patterns, load_index, True
            ),
            file=root / rel,
        )
    if problem is None and not rebuild:
        try:
            return load_index(index_meta, root / rel, patterns=patterns)
        except SearchError as exc:
            problem = str(exc)
    if problem is not None and not rebuild:
        warnings.warn(
            f"{root / rel}: {problem}; rebuilding the HNSW index from the saved activations "
            "(derived data: nothing is lost)",
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
    from .geometry import normalize_rows

    rows = np.asarray(cap.store.get(name))[np.asarray(rep.valid_rows)]
    return normalize_rows(rows.astype(np.float32), rep.normalize)
