"""``audit.save(dir)``: every file of an audit into a fresh folder beside the target, renamed
into place (docs/saved-audits.md); and removing a saved audit, only what its manifest lists."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import tempfile
import warnings
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np

from hopaudit._version import __version__
from hopaudit.errors import FormatError
from hopaudit.jsonable import json_safe, to_json
from hopaudit.storage.atomic import (
    exchange,
    fsync_dir,
    fsync_file,
    lstat_regular,
    temporary_dir,
    write_bytes,
)
from hopaudit.storage.manifest import (
    DIGEST,
    FORMAT,
    FORMAT_VERSION,
    GRAPH_FIELDS,
    META,
    encode_meta,
    hash_all,
    read_manifest,
    read_meta,
)
from hopaudit.storage.tables import now_utc, parquet_bytes, write_tables


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
            scalars[f.name] = {"dict_of_arrays": [to_json(k) for k in keys]}
            for i, key in enumerate(keys):
                arrays[f"{f.name}.{i}"] = value[key]
        else:
            scalars[f.name] = to_json(value)
    return scalars, arrays


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
        meta = read_meta(root)
    except FormatError as exc:
        raise FormatError(
            f"{root} exists and is not empty ({_listing(entries)}) and is not a saved audit "
            f"({exc}); choose a new folder: nothing in it was touched"
        ) from None
    if not overwrite:
        raise FormatError(
            f"{root} holds a saved audit; pass overwrite=True to replace it, or choose a new folder"
        )
    foreign = _foreign(root, read_manifest(meta, root / META))
    if foreign:
        raise FormatError(
            f"{root} holds a saved audit plus files that are not part of it "
            f"({_listing(foreign)}); move them away or choose another folder: nothing was changed"
        )


def audit_dirs(manifest: dict[str, Any]) -> set[str]:
    """The folders an audit's files imply (their ancestors) plus the ones it always makes."""
    dirs = {"reports", "indexes", "embeddings"}
    for rel in manifest:
        parts = rel.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return dirs


def _foreign(root: Path, manifest: dict[str, Any]) -> list[str]:
    """Entries under ``root`` that are not the audit's own (links are never followed)."""
    known_dirs = audit_dirs(manifest)
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
    meta = read_meta(root)
    manifest = read_manifest(meta, root / META)
    for rel in manifest:
        if not isinstance(lstat_regular(root, rel), str):
            (root / rel).unlink()
    (root / META).unlink()
    for rel in sorted(audit_dirs(manifest), key=lambda r: -r.count("/")):
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
            read_meta(root)  # only an audit is ever moved aside
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
    from hopaudit.capture.store import ActivationStore
    from hopaudit.search.backends import save_index

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
    digests = hash_all(files, DIGEST)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hopaudit_version": __version__,
        "saved_at": saved_at,
        "summary": json_safe(audit.summary()),
        "audit": to_json(
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
            p.relative_to(root).as_posix(): {"size": p.stat().st_size, DIGEST: d}
            for p, d in zip(files, digests, strict=True)
        },
    }
    with open(root / META, "xb") as handle:
        handle.write(encode_meta(meta))
        handle.flush()
        os.fsync(handle.fileno())
    for folder in {p.parent for p in files} | {root}:
        fsync_dir(folder)
