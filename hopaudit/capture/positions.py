"""The token positions a capture keeps: ``positions=`` parsed, checked against the sequences'
lengths, and turned into each batch's (sequence, position) rows (capture/forward.py's docstring
says what each choice keeps)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hopaudit.errors import DataError

__all__ = ["check_positions_fit", "parse_positions", "select_positions"]


def parse_positions(positions: Any) -> str | list[int]:
    """``"last"``, ``"all"``, ``"mean"``, or a sorted list of distinct ints."""
    if isinstance(positions, str):
        if positions in ("last", "all", "mean"):
            return positions
        if positions == "cls":  # the first position: a ViT/BERT's CLS token
            return [0]
        raise DataError(
            f"positions={positions!r} is not understood; use 'last', 'all', 'mean', 'cls', an "
            "int or a list of ints"
        )
    if isinstance(positions, (int, np.integer)) and not isinstance(positions, bool):
        return [int(positions)]
    if isinstance(positions, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(
        positions, (str, bytes)
    ):
        vals = list(positions.tolist() if hasattr(positions, "tolist") else positions)
        if vals and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
            return sorted({int(v) for v in vals})
    raise DataError(
        f"positions={positions!r} is not understood; use 'last', 'all', 'mean', an int or a "
        "non-empty list of ints"
    )


def check_positions_fit(positions: str | list[int], lengths: torch.Tensor) -> None:
    """Every int position must exist in every sequence (relative to its real tokens)."""
    if isinstance(positions, str):
        return
    shortest = int(lengths.min())
    which = int(lengths.argmin())
    bad = [p for p in positions if (p >= shortest if p >= 0 else -p > shortest)]
    if bad:
        raise DataError(
            f"positions {bad} are beyond sequence {which}, which has {shortest} tokens; positions "
            f"count real tokens from the start (0..{shortest - 1}) or from the end "
            f"(-1..-{shortest}); use smaller ones, positions='last', or longer sequences"
        )


def select_positions(
    mask: torch.Tensor, positions: str | list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row_sequence, row_position) index tensors of the rows to keep from one batch.

    ``mask`` is (batch, seq); for ``"mean"`` the positions are -1 (rows are means).
    """
    m = mask.bool()
    batch = mask.shape[0]
    if positions == "all":
        b, t = m.nonzero(as_tuple=True)
        return b, t
    lengths = m.sum(1)
    if positions == "mean":
        return torch.arange(batch), torch.full((batch,), -1, dtype=torch.long)
    cum = m.long().cumsum(1)  # cum[b, t] = number of real tokens in 0..t
    if positions == "last":
        t = ((cum == lengths[:, None]) & m).long().argmax(1)
        return torch.arange(batch), t
    cols = []
    for p in positions:
        k = torch.full_like(lengths, p) if p >= 0 else lengths + p  # k-th real token
        if bool(((k < 0) | (k >= lengths)).any()):
            check_positions_fit(positions, lengths)
        cols.append(((cum == (k + 1)[:, None]) & m).long().argmax(1))
    pos = torch.stack(cols, 1).sort(1).values  # (batch, P), ascending per row
    b = torch.arange(batch)[:, None].expand_as(pos)
    keep = torch.ones_like(pos, dtype=torch.bool)
    keep[:, 1:] = pos[:, 1:] != pos[:, :-1]  # -1 and len-1 may name the same token
    return b[keep], pos[keep]
