"""One hooked forward pass: hooks on every block, the positions kept, the per-layer store."""

from hopaudit.capture.forward import (
    ASYNC_COPY,
    CPU_TOKENS_PER_BATCH,
    FINAL,
    LOGITS_BUDGET_BYTES,
    CaptureResult,
    TraceBlocks,
    block_output_tensor,
    capture,
    check_positions_fit,
    choose_batch_size,
    model_device,
    parse_positions,
    release_freed_memory,
    select_positions,
    sequence_scores,
)

__all__ = [
    "ASYNC_COPY",
    "CPU_TOKENS_PER_BATCH",
    "FINAL",
    "LOGITS_BUDGET_BYTES",
    "CaptureResult",
    "TraceBlocks",
    "block_output_tensor",
    "capture",
    "check_positions_fit",
    "choose_batch_size",
    "model_device",
    "parse_positions",
    "release_freed_memory",
    "select_positions",
    "sequence_scores",
]
