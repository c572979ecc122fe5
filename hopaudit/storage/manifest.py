"""The saved-audit format: audit.json, its own digest and the manifest of every other file.

The on-disk format (version 4), one directory per audit::

    audit.json            its own SHA-256 (first key, over the file with the digest zeroed),
                          format name and version, hopaudit version, model name and config,
                          every option, scalars of the capture and of each layer report, and a
                          manifest of every other file: relative path -> size and BLAKE3
                          (format 4; SHA-256 in formats 2 and 3)
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
                          that name the audit (hopaudit/storage/tables.py), for DuckDB and polars
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
kept the graph inside ``reports/layer_NNN.npz``, and still loads; formats 2 and 3 list SHA-256
digests, which are still verified as such. Format 4 lists BLAKE3 digests (the ``blake3``
package), hashed on every CPU the process may use: a verified load then costs little more than
an unverified one (benchmarks/persist.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hopaudit._version import __version__
from hopaudit.errors import FormatError, SearchError
from hopaudit.storage.atomic import lstat_regular
from hopaudit.storage.schema import check_meta

FORMAT = "hopaudit-audit"
FORMAT_VERSION = 4
#: The digest the manifest of the current format lists; formats 2 and 3 list ``"sha256"``.
DIGEST = "blake3"
GRAPH_FIELDS = ("knn_ids", "knn_dists")
META = "audit.json"
MAX_META_BYTES = 256 << 20
_HASH_CHUNK = 8 << 20  # bytes hashed per read: hashlib releases the GIL on big buffers
_DIGEST_KEY = b'{\n "sha256": "'
_ZERO_DIGEST = b"0" * 64


_O_READ = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def open_regular(path: Path) -> int:
    """A read-only descriptor of a regular file, never through a symlink nor blocking on a
    FIFO; the caller checked the path with :func:`lstat_regular` (this closes the race)."""
    fd = os.open(path, _O_READ)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FormatError(f"{path}: not a regular file (refused)")
    return fd


def digest_key(format_version: int) -> str:
    """The manifest key of a format's file digests: ``"blake3"`` from 4, ``"sha256"`` before."""
    return "blake3" if format_version >= 4 else "sha256"


def blake3_file(path: Path, threads: int = 1) -> str:
    """BLAKE3 of a file, mapped and hashed on ``threads`` threads (the GIL released)."""
    import mmap

    import blake3

    hasher = blake3.blake3(max_threads=max(1, int(threads)))
    with os.fdopen(open_regular(path), "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size:
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                hasher.update(view)
    return hasher.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb", buffering=0) as handle:
        # no bigger than the file: a zeroed 8 MB buffer per small file costs more than its hash
        buffer = bytearray(min(_HASH_CHUNK, max(os.fstat(handle.fileno()).st_size, 1)))
        view = memoryview(buffer)
        while n := handle.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


#: Files at least this big are hashed by BLAKE3 on every usable CPU, one after another;
#: smaller ones one thread each, several at once.
_BLAKE3_SPLIT_BYTES = 1 << 20


def hash_all(paths: list[Path], algorithm: str = "sha256") -> list[str]:
    """The digests (``"sha256"`` or ``"blake3"``, hex) of several files, on every CPU the
    process may use: SHA-256 a file per thread; BLAKE3 splits each big file across threads."""
    from hopaudit.cpus import usable_cpus

    cpus = usable_cpus()
    if algorithm == "sha256":
        if len(paths) < 2:
            return [sha256_file(p) for p in paths]
        with ThreadPoolExecutor(max_workers=min(4, cpus, len(paths))) as pool:
            return list(pool.map(sha256_file, paths))
    if algorithm != "blake3":
        raise ValueError(f"unknown digest {algorithm!r}")
    sizes = [p.stat().st_size if p.exists() else 0 for p in paths]
    out: list[str | None] = [None] * len(paths)
    small = [i for i, n in enumerate(sizes) if n < _BLAKE3_SPLIT_BYTES]
    for i, n in enumerate(sizes):
        if n >= _BLAKE3_SPLIT_BYTES:
            out[i] = blake3_file(paths[i], cpus)
    if small:
        with ThreadPoolExecutor(max_workers=min(cpus, len(small))) as pool:
            for i, d in zip(small, pool.map(blake3_file, [paths[i] for i in small]), strict=True):
                out[i] = d
    return [d for d in out if d is not None]


def _file_digest(data: bytes, algorithm: str) -> str:
    if algorithm == "blake3":
        import blake3

        return blake3.blake3(data).hexdigest()
    return hashlib.sha256(data).hexdigest()


def _split(digest: str) -> tuple[str, str]:
    """(algorithm, hex) of a manifest digest as :func:`read_manifest` returns it."""
    algorithm, _, hexdigest = digest.rpartition(":")
    return algorithm or "sha256", hexdigest


def bad_rel(rel: Any) -> str | None:
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


def encode_meta(meta: dict[str, Any]) -> bytes:
    """audit.json's bytes: its own SHA-256 first, computed with the digest's place zeroed."""
    body = json.dumps({"sha256": _ZERO_DIGEST.decode(), **meta}, indent=1).encode("utf-8")
    n = len(_DIGEST_KEY)
    assert body[:n] == _DIGEST_KEY and body[n : n + 64] == _ZERO_DIGEST
    return body[:n] + hashlib.sha256(body).hexdigest().encode() + body[n + 64 :]


def decode_meta(data: bytes, file: Path) -> dict[str, Any]:
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


def read_meta(root: Path) -> dict[str, Any]:
    """The verified, parsed audit.json of ``root`` (FormatError naming it otherwise)."""
    file = root / META
    st = lstat_regular(root, META)
    if isinstance(st, str):
        if st == "missing":
            raise FormatError(f"{file}: missing; this is not a saved audit (or not a complete one)")
        raise FormatError(f"{file}: {st}")
    if st.st_size > MAX_META_BYTES:
        raise FormatError(f"{file}: {st.st_size} bytes, too big for an audit's metadata (refused)")
    try:
        with os.fdopen(open_regular(file), "rb") as handle:
            data = handle.read(MAX_META_BYTES + 1)
    except OSError as exc:  # gone since the lstat: a concurrent save (the caller may retry)
        raise FormatError(f"{file}: cannot be read ({exc.strerror})") from None
    meta = decode_meta(data, file)
    check_meta(meta, file)
    return meta


def read_manifest(meta: dict[str, Any], file: Path) -> dict[str, tuple[int, str | None]]:
    """Relative path -> (size, digest or None for format 1), every path checked. A digest is
    the SHA-256's hex (formats 2, 3) or ``"blake3:"`` and the BLAKE3's hex (format 4)."""
    version = meta.get("format_version", 1)
    key = digest_key(version if isinstance(version, int) else 1)
    files = meta.get("files")
    if not isinstance(files, dict):
        raise FormatError(f"{file}: damaged (no manifest of files)")
    out: dict[str, tuple[int, str | None]] = {}
    for rel, entry in files.items():
        problem = bad_rel(rel)
        if problem:
            raise FormatError(f"{file}: the manifest names {rel!r}, {problem} (refused)")
        if isinstance(entry, int) and not isinstance(entry, bool):
            size, digest = entry, None
        elif isinstance(entry, dict):
            size, digest = entry.get("size"), entry.get(key)
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
            raise FormatError(f"{file}: damaged (no {key.upper()} for {rel!r})")
        if digest is not None and key != "sha256":
            digest = f"{key}:{digest}"
        out[rel] = (size, digest)
    return out


def is_index(rel: str) -> bool:
    return rel.startswith("indexes/") and rel.endswith(".bin")


def check_files(
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
            if is_index(rel):
                problems[rel] = "saved without a SHA-256 (format 1), so it is not trusted"
        elif verify or is_index(rel):
            to_hash.append(rel)
    by_algorithm: dict[str, list[str]] = {}
    for rel in to_hash:
        by_algorithm.setdefault(_split(str(manifest[rel][1]))[0], []).append(rel)
    for algorithm, rels in by_algorithm.items():
        try:
            digests = hash_all([root / rel for rel in rels], algorithm)
        except OSError as exc:
            raise FormatError(f"{root}: cannot read the saved audit ({exc})") from None
        for rel, got in zip(rels, digests, strict=True):
            if got != _split(str(manifest[rel][1]))[1]:
                name = "BLAKE3" if algorithm == "blake3" else "SHA-256"
                problems[rel] = f"damaged (its {name} does not match the manifest)"
    return problems


@contextmanager
def damaged(file: Path) -> Iterator[None]:
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


def read_listed(root: Path, rel: str, manifest: dict[str, tuple[int, str | None]]) -> bytes:
    """The bytes of a manifest file, checked (regular, size, SHA-256) before any parser."""
    size, digest = manifest[rel]
    st = lstat_regular(root, rel)
    if isinstance(st, str):
        raise FormatError(f"{root / rel}: {st}")
    try:
        with os.fdopen(open_regular(root / rel), "rb") as handle:
            data = handle.read(size + 1)
    except OSError as exc:  # gone since the lstat: a concurrent save (the caller may retry)
        raise FormatError(f"{root / rel}: cannot be read ({exc.strerror})") from None
    if len(data) != size:
        raise FormatError(f"{root / rel}: {len(data)} bytes, expected {size}: the file is damaged")
    if digest is not None:
        algorithm, want = _split(digest)
        if _file_digest(data, algorithm) != want:
            name = "BLAKE3" if algorithm == "blake3" else "SHA-256"
            raise FormatError(f"{root / rel}: damaged (its {name} does not match the manifest)")
    return data
