"""Patterns in, checked and chunked: what every search backend does with its input.

Rows arrive as numpy arrays, float16 memmaps or torch tensors; they are read in float32 chunks
of ``_CHUNK_BYTES`` (never a float32 copy of a whole float16 layer), and a row with NaN or inf
is refused with its index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from hopaudit.errors import SearchError

__all__ = [
    "Progress",
    "as_2d",
    "centred_in_place",
    "centred_rows",
    "check_query",
    "chunk_rows",
    "column_mean",
    "float32_chunks",
    "refuse_nonfinite",
    "squared_norms",
]

#: Bytes of float32 handed to hnswlib or torch per chunk: bounds the temporary copies (a float64
#: one twice this size), small beside one layer at 1e5 x 576 (230 MB), thousands of rows per call.
_CHUNK_BYTES = 16 << 20

#: Called with the number of rows just added or queried, chunk by chunk (a progress bar's update).
Progress = Callable[[int], object] | None


def as_2d(data: object, what: str) -> np.ndarray:
    """The input as a 2-D numpy array (memmaps and float16 kept as they are, torch converted)."""
    if hasattr(data, "detach") and hasattr(data, "cpu"):  # a torch tensor
        data = data.detach().cpu().numpy()
    arr = data if isinstance(data, np.ndarray) else np.asarray(data)
    if arr.ndim != 2:
        raise SearchError(
            f"{what} must be a 2-D array (rows, dim); got shape {tuple(arr.shape)}. "
            "Reshape to one pattern per row."
        )
    if arr.dtype.kind not in "fiu":
        raise SearchError(f"{what} must hold numbers; got dtype {arr.dtype}.")
    return arr


def chunk_rows(dim: int, minimum: int = 1) -> int:
    return max(minimum, _CHUNK_BYTES // (4 * max(dim, 1)))


def refuse_nonfinite(chunk: np.ndarray, start: int, what: str) -> None:
    finite = np.isfinite(chunk).all(axis=1)
    if not finite.all():
        bad = start + np.flatnonzero(~finite)
        raise SearchError(
            f"{what} has rows with NaN or inf (first at row {int(bad[0])}; {bad.size} in rows "
            f"{start}..{start + chunk.shape[0] - 1}). Remove non-finite rows before searching "
            "(hopaudit.measure drops and counts them)."
        )


def float32_chunks(
    arr: np.ndarray, rows: int, what: str, center: np.ndarray | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """(start, float32 C-contiguous chunk) pairs, optionally minus ``center`` (subtracted in
    float64 from the original values, :func:`centred_rows`); refuses non-finite rows with their
    index."""
    for start in range(0, arr.shape[0], rows):
        if center is None:
            chunk = np.ascontiguousarray(arr[start : start + rows], dtype=np.float32)
            refuse_nonfinite(chunk, start, what)
        else:
            chunk = centred_rows(arr, start, start + rows, center, what)
        yield start, chunk


def centred_rows(
    arr: np.ndarray,
    start: int,
    stop: int,
    center: np.ndarray,
    what: str | None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Rows ``start:stop`` of ``arr`` minus ``center``, subtracted in float64 from the original
    values, as float32: into ``out`` (``stop - start`` float32 rows; ``arr`` itself centres it
    in place), else a new array. The float64 work goes in blocks of a quarter of a float32
    chunk's bytes (a whole chunk in float64 was twice the chunk, twice over). Refuses rows that
    are not finite in float32 with their index, as ``what`` ("queries"); None: rows already
    checked (:func:`column_mean`), not read again."""
    stop = min(stop, arr.shape[0])
    if out is None:
        out = np.empty((max(0, stop - start), arr.shape[1]), dtype=np.float32)
    step = max(1, chunk_rows(arr.shape[1]) // 8)  # float64: a quarter of a chunk's bytes
    for s in range(start, stop, step):
        e = min(stop, s + step)
        block = np.array(arr[s:e], dtype=np.float64)  # a copy: ours to edit
        block -= center
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below, given `what`
            out[s - start : e - start] = block
        if what is not None:  # also what overflowed float32
            refuse_nonfinite(out[s - start : e - start], s, what)
    return out


def squared_norms(data, dtype, rows: int):
    """Squared norms of the rows of a float32 tensor, summed in ``dtype`` and returned in
    float32, ``rows`` rows at a time: never a ``dtype`` copy of the whole tensor (in float64 on
    the CPU two such copies, the cast and its square, were four times the data)."""
    import torch

    out = torch.empty(data.shape[0], dtype=torch.float32, device=data.device)
    rows = max(1, rows // 4)  # a float64 chunk of a quarter of a float32 chunk's bytes
    for start in range(0, data.shape[0], rows):
        part = data[start : start + rows].to(dtype, copy=True)  # squared in place: ours
        out[start : start + rows] = part.square_().sum(dim=1).to(torch.float32)
        del part  # before the next chunk's cast: one chunk's copy at a time
    return out


def column_mean(arr: np.ndarray, rows: int, what: str) -> np.ndarray:
    """Float64 mean of the rows, read chunk by chunk (summed in float64 as they are read, no
    float64 copy of a chunk); refuses non-finite rows."""
    total = np.zeros(arr.shape[1], dtype=np.float64)
    for start in range(0, arr.shape[0], rows):
        chunk = np.asarray(arr[start : start + rows])
        refuse_nonfinite(chunk, start, what)
        total += chunk.sum(axis=0, dtype=np.float64)
    return total / max(arr.shape[0], 1)


def centred_in_place(
    arr: np.ndarray, center: np.ndarray, device: object, adopt: bool
) -> np.ndarray | None:
    """``arr`` itself with ``center`` subtracted (:func:`centred_rows`: what an index's own
    centred copy holds), when its caller lends it (``adopt``) and it can be: a writable,
    C-contiguous float32 array for an index on the CPU. None otherwise, ``arr`` untouched: the
    index copies it."""
    lendable = (
        adopt
        and getattr(device, "type", "cpu") == "cpu"
        and arr.dtype == np.float32
        and arr.flags.c_contiguous
        and arr.flags.writeable
    )
    if not lendable:
        return None
    return centred_rows(arr, 0, arr.shape[0], center, None, out=arr)  # column_mean checked


def check_query(index: object, x: object, k: int) -> np.ndarray:
    arr = as_2d(x, "queries")
    if arr.shape[1] != index.dim:
        raise SearchError(
            f"queries have dimension {arr.shape[1]} but the index holds patterns of dimension "
            f"{index.dim}; query with vectors from the same layer."
        )
    n = len(index)
    if int(k) != k or k < 1:
        raise SearchError(f"k must be a positive integer; got {k!r}.")
    if k > n:
        raise SearchError(
            f"k={k} neighbours requested but the index holds only {n} patterns; use k <= {n}."
        )
    return arr
