"""An HNSW index file checked in Python before hnswlib reads it: hnswlib trusts its input, so a
file whose digest matches a crafted manifest could otherwise crash the process (a link past
the end of the graph is a read out of bounds).

The layout is hnswlib's ``HierarchicalNSW::saveIndex`` (hnswlib/hnswalg.h, 0.8), little-endian,
``size_t`` 8 bytes: a header of ``offsetLevel0, max_elements, cur_element_count,
size_data_per_element, label_offset, offsetData`` (size_t), ``maxlevel`` (int),
``enterpoint_node`` (uint32), ``maxM, maxM0, M`` (size_t), ``mult`` (double),
``ef_construction`` (size_t); then ``count`` records of level 0 (a uint32 whose low 16 bits
count the links and whose third byte is the deleted mark, ``maxM0`` uint32 links, the vector
of ``dim`` float32, the uint64 label); then per element a uint32 byte size and its upper
levels' link lists (``maxM + 1`` uint32 each: the count, then the links).

Checked: every header field against what the index was saved with (dim, M, count), the file's
size against the element count and the upper-level sizes, every link count and link id, the
levels (each link at level L points at an element that has level L, the entry point at the
top), labels (the row numbers 0..count-1, once each), finite vectors, no deleted mark.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hopaudit.errors import SearchError

__all__ = ["check_hnsw_file"]

_HEADER = np.dtype(
    [
        ("offset_level0", "<u8"),
        ("max_elements", "<u8"),
        ("count", "<u8"),
        ("size_per_element", "<u8"),
        ("label_offset", "<u8"),
        ("offset_data", "<u8"),
        ("max_level", "<i4"),
        ("enter_point", "<u4"),
        ("max_m", "<u8"),
        ("max_m0", "<u8"),
        ("m", "<u8"),
        ("mult", "<f8"),
        ("ef_construction", "<u8"),
    ]
)
_MAX_LEVEL = 64  # levels are ~ -ln(U) / ln(M): 64 is unreachable for any M >= 2


def _bad(path: Path, what: str) -> SearchError:
    return SearchError(f"{path}: not a sound HNSW index ({what})")


def _check_header(h: np.void, path: Path, dim: int, m: int, count: int, size: int) -> None:
    links0 = 2 * m * 4 + 4
    want = {
        "offset_level0": 0,
        "count": count,
        "size_per_element": links0 + 4 * dim + 8,
        "label_offset": links0 + 4 * dim,
        "offset_data": links0,
        "max_m": m,
        "max_m0": 2 * m,
        "m": m,
    }
    for field, value in want.items():
        if int(h[field]) != value:
            raise _bad(path, f"header {field} is {int(h[field])}, expected {value}")
    if int(h["max_elements"]) < count or not 0 <= int(h["max_level"]) <= _MAX_LEVEL:
        raise _bad(path, "header max_elements or maxlevel out of range")
    if count and int(h["enter_point"]) >= count:
        raise _bad(path, f"entry point {int(h['enter_point'])} of {count} elements")
    if not math.isclose(float(h["mult"]), 1 / math.log(m), rel_tol=1e-6):
        raise _bad(path, f"header mult {float(h['mult'])!r}")
    if size < _HEADER.itemsize + count * want["size_per_element"] + 4 * count:
        raise _bad(path, f"{size} bytes cannot hold {count} elements")


def _check_level0(words: np.ndarray, raw: np.ndarray, path: Path, m: int, dim: int) -> None:
    """``words``: (count, per-element) uint32 view of level 0; ``raw`` the same as bytes."""
    count = len(words)
    head = words[:, 0]
    n_links = head & 0xFFFF
    if np.any(head >> 16):
        raise _bad(path, "a deleted mark or a link count above 65535 at level 0")
    if np.any(n_links > 2 * m):
        raise _bad(path, "a level-0 link count above 2M")
    links = words[:, 1 : 1 + 2 * m]
    used = np.arange(2 * m)[None, :] < n_links[:, None]
    if np.any(links[used] >= count):
        raise _bad(path, "a level-0 link past the last element")
    vectors = words[:, 1 + 2 * m : 1 + 2 * m + dim].view(np.float32)
    if not np.all(np.isfinite(vectors)):
        raise _bad(path, "a stored vector is not finite")
    labels = np.ascontiguousarray(raw[:, -8:]).view("<u8").ravel()
    if np.any(labels >= count) or len(np.unique(labels)) != count:
        raise _bad(path, "labels are not the row numbers 0..count-1, once each")


def _upper_levels(tail: np.ndarray, path: Path, count: int, m: int) -> tuple[np.ndarray, list]:
    """Each element's level and its upper link blocks, parsed from the uint32 words after level
    0 (a record: its byte size, then ``levels * (M + 1)`` words); jumps over the runs of
    level-0-only elements (size 0), so the loop runs once per element with upper levels."""
    per_level = m + 1
    levels = np.zeros(count, dtype=np.int64)
    blocks: list[tuple[int, int, int]] = []  # (element, first word, levels)
    nonzero = np.flatnonzero(tail)
    pos, element = 0, 0
    while element < count:
        if pos >= len(tail):
            raise _bad(path, "the file ends before its last element's levels")
        k = np.searchsorted(nonzero, pos)
        nxt = int(nonzero[k]) if k < len(nonzero) else len(tail)
        skip = min(nxt - pos, count - element)
        pos, element = pos + skip, element + skip
        if element == count:
            break
        nbytes = int(tail[pos])
        if nbytes % (4 * per_level) or nbytes // (4 * per_level) > _MAX_LEVEL:
            raise _bad(path, f"element {element}'s upper levels take {nbytes} bytes")
        n = nbytes // (4 * per_level)
        if pos + 1 + n * per_level > len(tail):
            raise _bad(path, "the file ends inside an element's levels")
        levels[element] = n
        blocks.append((element, pos + 1, n))
        pos, element = pos + 1 + n * per_level, element + 1
    if pos != len(tail):
        raise _bad(path, f"{4 * (len(tail) - pos)} bytes after the last element")
    return levels, blocks


def _check_upper(tail: np.ndarray, levels: np.ndarray, blocks: list, path: Path, m: int) -> None:
    per_level = m + 1
    if not blocks:
        return
    starts = np.concatenate(
        [start + per_level * np.arange(n) for _, start, n in blocks]
    )  # one row per (element, level >= 1)
    level_of = np.concatenate([np.arange(1, n + 1) for _, _, n in blocks])
    lists = tail[starts[:, None] + np.arange(per_level)[None, :]]
    n_links = lists[:, 0]
    if np.any(n_links > m):
        raise _bad(path, "an upper-level link count above M")
    links = lists[:, 1:]
    used = np.arange(m)[None, :] < n_links[:, None]
    targets = links[used].astype(np.int64)
    if np.any(targets >= len(levels)):
        raise _bad(path, "an upper-level link past the last element")
    need = np.broadcast_to(level_of[:, None], links.shape)[used]
    if np.any(levels[targets] < need):
        raise _bad(path, "an upper-level link to an element without that level")


def check_hnsw_file(path: Path, *, dim: int, m: int, count: int) -> None:
    """Raise :class:`SearchError` naming ``path`` unless it is an hnswlib L2 index of ``count``
    ``dim``-float32 vectors built with ``M = m`` that hnswlib can read and search without
    reading outside what it allocates (see the module docstring for what is checked)."""
    data = np.fromfile(path, dtype=np.uint8)
    if len(data) < _HEADER.itemsize:
        raise _bad(path, f"{len(data)} bytes, shorter than the header")
    header = data[: _HEADER.itemsize].view(_HEADER)[0]
    _check_header(header, path, dim, m, count, len(data))
    per = int(header["size_per_element"])
    end0 = _HEADER.itemsize + count * per
    if (len(data) - end0) % 4:
        raise _bad(path, "the upper levels are not whole 32-bit words")
    raw = data[_HEADER.itemsize : end0].reshape(count, per)
    _check_level0(raw[:, : per - 8].view("<u4"), raw, path, m, dim)
    tail = data[end0:].view("<u4")
    levels, blocks = _upper_levels(tail, path, count, m)
    if count and int(levels.max(initial=0)) != int(header["max_level"]):
        raise _bad(path, f"maxlevel {int(header['max_level'])}, the elements reach {levels.max()}")
    if count and levels[int(header["enter_point"])] != int(header["max_level"]):
        raise _bad(path, "the entry point is not on the top level")
    _check_upper(tail, levels, blocks, path, m)
