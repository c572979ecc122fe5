"""How many sequences a batch holds: by tokens on a CPU, within a logits budget of about one
layer's float32 patterns; by free memory on a GPU. Also where the inputs go."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hopaudit.capture.positions import parse_positions
from hopaudit.model.blocks import execution_device, vocab_size

__all__ = [
    "CPU_TOKENS_PER_BATCH",
    "LOGITS_BUDGET_BYTES",
    "LOGITS_FLOOR_BYTES",
    "choose_batch_size",
    "layer_bytes",
    "layer_rows",
    "logits_budget",
    "model_device",
]

# CPU batch sizing: tokens per batch, and the float32 logits a batch may hold: about one
# layer's float32 patterns (the audit's own size, :func:`logits_budget`), never less than the
# floor (small audits still batch) nor more than the cap.
CPU_TOKENS_PER_BATCH = 8192
LOGITS_BUDGET_BYTES = 512 * 2**20
# the floor keeps small audits' batches big enough to run near the cap's speed
# (benchmarks/batch_size.py; benchmarks/README.md, "Constants")
LOGITS_FLOOR_BYTES = 256 * 2**20


def model_device(model: nn.Module) -> torch.device:
    """Where inputs go: the execution device of the first module that runs, as accelerate's
    hooks name it (device maps, ``cpu_offload``, disk offload), else the input embedding's
    device, else the first parameter's, else the CPU (:func:`hopaudit.blocks.execution_device`).
    """
    return execution_device(model)


def _config_int(model: nn.Module, *names: str) -> int | None:
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    for n in names:
        v = getattr(cfg, n, None)
        if isinstance(v, int):
            return v
    return None


def layer_rows(data: Any, positions: Any) -> int:
    """The rows one layer of ``data`` stores at ``positions``: every real token for ``"all"``
    (by the attention mask, or the labels of a seq2seq decoder when more), else one row per
    sequence and position. Sizes budgets (the store's dtype, a CPU batch); not exact for
    image or audio encoders, whose positions are only known after their first block."""
    pos = parse_positions(positions)
    n = int(getattr(data, "num_sequences", 0) or 0)
    if pos != "all":
        return n * (len(pos) if isinstance(pos, list) else 1)
    mask = getattr(data, "attention_mask", None)
    rows = int(mask.sum()) if mask is not None else n
    labels = getattr(data, "labels", None)
    if labels is not None:
        rows = max(rows, int((labels != -100).sum()))
    return rows


def layer_bytes(model: nn.Module, data: Any, positions: Any) -> int | None:
    """One layer's rows of ``data`` in float32 (rows x hidden size x 4), None when the model's
    config names no hidden size: what :func:`logits_budget` scales with."""
    hidden = _config_int(model, "hidden_size", "n_embd", "d_model")
    return None if hidden is None else layer_rows(data, positions) * hidden * 4


def logits_budget(one_layer: int | None = None) -> int:
    """The float32 logits one CPU batch may hold: ``one_layer`` bytes (one layer's float32
    patterns, :func:`layer_bytes`), at least ``LOGITS_FLOOR_BYTES`` (256 MiB: a small audit
    still batches at speed) and at most ``LOGITS_BUDGET_BYTES`` (512 MiB); the cap when unknown.

    With the cap alone a batch's logits were the capture's peak, several layers of a small
    positions="all" audit; a budget of one layer keeps the capture's peak near the measuring's
    (docs/performance.md, benchmarks/many_layers.py)."""
    if one_layer is None:
        return LOGITS_BUDGET_BYTES
    return int(min(LOGITS_BUDGET_BYTES, max(LOGITS_FLOOR_BYTES, int(one_layer))))


def choose_batch_size(
    model: nn.Module, seq_len: int, n_sequences: int, device: Any, one_layer: int | None = None
) -> int:
    """A batch size that keeps memory modest.

    CPU: about 8192 tokens per batch (fewer past 512 tokens per sequence, since attention grows
    with the square of the length), and at most :func:`logits_budget` bytes of float32 logits
    per batch (``one_layer``: one layer's float32 patterns, :func:`layer_bytes`; None: the
    512 MiB cap). CUDA: half the free memory, divided by a rough per-sequence cost (float32
    logits x 3, 32 hidden-size float32 activations per token, and one float32 attention
    matrix per head).
    """
    device = torch.device(device)
    seq_len = max(1, seq_len)
    vocab = vocab_size(model) or 0
    hidden = _config_int(model, "hidden_size", "n_embd", "d_model") or 1024
    heads = _config_int(model, "num_attention_heads", "n_head") or 16
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        per_seq = seq_len * (vocab * 4 * 3 + hidden * 4 * 32) + seq_len * seq_len * heads * 4
        bs = (free // 2) // max(1, per_seq)
    else:
        tokens = CPU_TOKENS_PER_BATCH
        if seq_len > 512:
            tokens = max(seq_len, CPU_TOKENS_PER_BATCH * 512 // seq_len)
        bs = tokens // seq_len
        if vocab:
            bs = min(bs, logits_budget(one_layer) // (seq_len * vocab * 4))
    return int(max(1, min(bs, n_sequences)))
