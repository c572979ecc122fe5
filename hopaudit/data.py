"""Any dataset form a user has -> fixed-length token sequences, with their text kept for display."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenData:
    """Token sequences ready for the forward pass.

    ``input_ids`` and ``attention_mask`` are (num_sequences, seq_len), right-padded with
    ``pad_token_id``; ``texts`` holds the decoded text of every sequence for display.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    texts: list[str]
    pad_token_id: int = 0

    @property
    def num_sequences(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())
