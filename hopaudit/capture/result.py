"""What one capture pass produced (:class:`CaptureResult`): plain arrays and numbers, no torch,
so that a saved audit loads (``hopaudit show``) without importing torch. The definitions are in
capture/forward.py's docstring."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hopaudit.capture.store import ActivationStore

__all__ = ["CaptureResult"]


@dataclass
class CaptureResult:
    """Everything one capture pass produced; see the module docstring for the definitions."""

    store: ActivationStore
    layer_names: list[str]
    row_sequence: np.ndarray
    row_position: np.ndarray
    nonfinite: dict[str, int]
    seq_nll: np.ndarray | None
    seq_min_k: np.ndarray | None
    seq_top1: np.ndarray | None
    cross_entropy: float | None
    n_tokens: int
    seconds: float
    tokens_per_second: float
    loss_note: str | None
    # additions to the contract (defaults keep it backward compatible)
    n_predicted: int = 0  # next-token predictions behind cross_entropy
    batch_size: int = 0
    positions: Any = "last"
    min_k: float = 0.2
    overflow: dict[str, int] = field(default_factory=dict)  # rows finite before the cast only
    compute_dtype: str | None = None  # "bfloat16 autocast[, weights cast once]" or the dtype
    # Encoder-decoders: layer name -> its stack ("encoder"/"decoder"; one stack otherwise),
    # and each stack's own rows (row_sequence/row_position are those of the last stack).
    layer_stacks: dict[str, str] = field(default_factory=dict)
    stack_sequence: dict[str, np.ndarray] = field(default_factory=dict)
    stack_position: dict[str, np.ndarray] = field(default_factory=dict)

    def stack_of(self, layer: str) -> str | None:
        """The stack a layer belongs to (None for captures saved before stacks existed)."""
        return (self.layer_stacks or {}).get(layer)

    def rows_of(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(row_sequence, row_position) of one layer's stored rows: its stack's."""
        stack = self.stack_of(layer)
        if stack is not None and stack in (self.stack_sequence or {}):
            return self.stack_sequence[stack], self.stack_position[stack]
        return self.row_sequence, self.row_position

    # membership scores (hopaudit/evidence/scores.py; docs/theory.md §6)
    seq_min_k_pp: np.ndarray | None = None  # Min-K%++ per sequence (higher = member)
    seq_n_predicted: np.ndarray | None = None  # next-token predictions per sequence
    seq_ref_nll: np.ndarray | None = None  # mean NLL under a reference model (audit(reference=))
    seq_extracted_tokens: np.ndarray | None = None  # leading suffix tokens greedy decoding matched
    compiled: str | None = None  # compile=True: what torch.compile took, or why the pass ran eager
