"""Pre-tokenized input (tensors, arrays, lists of ints, batches of dicts) -> one 1-D tensor of
real token ids per row, then rows of at most ``max_length`` tokens (cut or truncated)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from hopaudit.errors import DataError

__all__ = ["batch_rows", "fit_rows", "mapping_rows", "sequence_rows", "shape_source", "tensor_rows"]


def shape_source(t: Any) -> str:
    return f"token ids {tuple(t.shape)}"


def _as_ids(x: Any, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.integer):
            raise DataError(f"{what} must hold integer token ids, got numpy {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, (list, tuple)):
        try:
            x = torch.tensor(x)
        except (TypeError, ValueError, RuntimeError):
            raise DataError(f"{what} must be integer token ids of one length per row") from None
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{what} must be a tensor of token ids, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise DataError(
            f"{what} must hold integer token ids (torch.long), got {x.dtype}; "
            "convert with .long() only if these really are ids"
        )
    return x.detach().to("cpu", torch.long)


def tensor_rows(data: Any, what: str, mask: Any = None) -> list[torch.Tensor]:
    ids = _as_ids(data, what)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2:
        raise DataError(
            f"{what} must be 1-D (one sequence) or 2-D (batch, seq), got shape {tuple(ids.shape)}"
        )
    if mask is None:
        return list(ids)
    m = _as_ids(mask, "attention_mask")
    if m.ndim == 1:
        m = m[None]
    if m.shape != ids.shape:
        raise DataError(
            f"attention_mask shape {tuple(m.shape)} differs from input_ids {tuple(ids.shape)}"
        )
    keep = m.bool()
    return [row[k] for row, k in zip(ids, keep, strict=True)]


def batch_rows(batch: Mapping, i: int) -> Iterator[torch.Tensor]:
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    what = f"input_ids of batch {i}"
    ragged = isinstance(ids, (list, tuple)) and ids and isinstance(ids[0], (list, tuple))
    if ragged and len({len(r) for r in ids}) > 1:  # e.g. a datasets batch of unpadded rows
        masks = mask if mask is not None else [None] * len(ids)
        for row, m in zip(ids, masks, strict=True):
            yield from tensor_rows(row, what, m)
        return
    yield from tensor_rows(ids, what, mask)


def mapping_rows(batches: Iterable) -> Iterator[torch.Tensor]:
    for i, batch in enumerate(batches):
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise DataError(f"batch {i} has no 'input_ids'; every batch must be a dict with them")
        yield from batch_rows(batch, i)


def sequence_rows(items: Iterable) -> Iterator[torch.Tensor]:
    for i, item in enumerate(items):
        if (
            isinstance(item, (list, tuple))
            and item
            and isinstance(item[0], torch.Tensor)
            and item[0].ndim >= 1
        ):
            item = item[0]  # a DataLoader over a TensorDataset yields [ids, ...]
        if isinstance(item, (torch.Tensor, np.ndarray)) and item.ndim == 2:
            yield from tensor_rows(item, f"batch {i} of token ids")
        elif isinstance(item, (torch.Tensor, np.ndarray, list, tuple)):
            yield from tensor_rows(item, f"row {i} of token ids")
        else:
            raise DataError(f"row {i} is a {type(item).__name__}, not token ids")


def fit_rows(
    rows: Iterable[torch.Tensor], max_length: int, chunking: str, max_sequences: int | None
) -> tuple[list[torch.Tensor], int]:
    """Keep rows that fit; cut (stream) or truncate (document) longer ones; cap the count."""
    out: list[torch.Tensor] = []
    dropped = 0
    seen = 0
    for row in rows:
        seen += 1
        if row.numel() == 0:
            continue
        if row.numel() <= max_length:
            pieces = [row]
        elif chunking == "stream":
            n = row.numel() // max_length
            pieces = list(row[: n * max_length].view(n, max_length))
        else:
            pieces = [row[:max_length]]
        dropped += row.numel() - sum(p.numel() for p in pieces)
        out.extend(pieces)
        if max_sequences is not None and len(out) >= max_sequences:
            return out[:max_sequences], dropped
    if not out:
        detail = "it has no rows" if seen == 0 else f"all {seen} rows have no real tokens"
        raise DataError(f"the dataset is empty: {detail}")
    return out, dropped
