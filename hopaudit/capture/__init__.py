"""One hooked forward pass: hooks on every block, the positions kept, the per-layer store.

Laid out by the pass's steps: ``hooks`` (what is hooked, and the hooks), ``positions`` (which
rows a batch keeps), ``batching`` (how many sequences a batch holds), ``feed`` (the data as
each batch's inputs), ``forward`` (the pass itself), ``head`` (the LM head run by the scores),
``store``, ``columns`` and ``result`` (what the pass keeps). The names below resolve on first
use, so that ``hopaudit.capture.store`` and ``hopaudit.capture.result`` (what loading a saved
audit needs) import without torch."""

from typing import Any

#: public name -> the module of this package that defines it
_HOMES = {
    "ASYNC_COPY": "forward",
    "CPU_TOKENS_PER_BATCH": "batching",
    "FINAL": "hooks",
    "LOGITS_BUDGET_BYTES": "batching",
    "LOGITS_FLOOR_BYTES": "batching",
    "CaptureResult": "result",
    "TraceBlocks": "hooks",
    "block_output_tensor": "hooks",
    "capture": "forward",
    "check_positions_fit": "positions",
    "choose_batch_size": "batching",
    "layer_bytes": "batching",
    "layer_rows": "batching",
    "logits_budget": "batching",
    "model_device": "batching",
    "parse_positions": "positions",
    "select_positions": "positions",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'hopaudit.capture' has no attribute {name!r}")
    from hopaudit.capture import batching, forward, hooks, positions, result

    modules = {"batching": batching, "forward": forward, "hooks": hooks}
    modules.update(positions=positions, result=result)
    return getattr(modules[home], name)
