"""The dtype activations are stored in: ``store_dtype="auto"`` keeps float32 while every
layer's rows fit a budget, float16 beyond (docs/theory.md: float16 moves the volume floor by n
times its relative error, so it is used only where memory asks for it)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hopaudit.capture.positions import parse_positions
from hopaudit.errors import DataError

__all__ = ["STORE_BUDGET_BYTES", "STORE_DTYPES", "resolve_store_dtype", "store_dtype_name"]

#: ``store_dtype="auto"`` keeps float32 up to this many bytes of activations, float16 beyond.
STORE_BUDGET_BYTES = 2 << 30
STORE_DTYPES = ("auto", "float16", "bfloat16", "float32")
_DTYPE_ALIASES = {"half": "float16", "float": "float32", "single": "float32"}


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
