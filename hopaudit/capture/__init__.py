"""One hooked forward pass: hooks on every block, the positions kept, the per-layer store.

The names below are capture/forward.py's, resolved on first use: ``hopaudit.capture.store`` and
``hopaudit.capture.result`` (what loading a saved audit needs) import without torch."""

from typing import Any

__all__ = [
    "ASYNC_COPY",
    "CPU_TOKENS_PER_BATCH",
    "FINAL",
    "LOGITS_BUDGET_BYTES",
    "LOGITS_FLOOR_BYTES",
    "CaptureResult",
    "TraceBlocks",
    "block_output_tensor",
    "capture",
    "check_positions_fit",
    "choose_batch_size",
    "layer_bytes",
    "layer_rows",
    "logits_budget",
    "model_device",
    "parse_positions",
    "release_freed_memory",
    "select_positions",
    "sequence_scores",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from hopaudit.capture import forward

        return getattr(forward, name)
    raise AttributeError(f"module 'hopaudit.capture' has no attribute {name!r}")
