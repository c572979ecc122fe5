"""The data the capture takes: token sequences (:class:`TokenData`) and non-text inputs
(:class:`InputData`), shared by the text path (prepare.py) and the images and audio path
(inputs.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(repr=False)
class TokenData:
    """Token sequences ready for the forward pass.

    ``input_ids`` and ``attention_mask`` are (num_sequences, seq_len), right-padded with
    ``pad_token_id``; ``texts`` holds the decoded text of every sequence for display.
    ``source`` describes where the data came from, ``chunking`` how it was cut, and
    ``dropped_tokens`` how many real tokens chunking left out (the stream's short rest, or
    what document truncation cut; None when a very long text was only read in part; tokens
    past ``max_sequences`` are not counted).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    texts: list[str]
    pad_token_id: int = 0
    source: str = ""
    chunking: str | None = None
    dropped_tokens: int | None = 0
    special_tokens: list[int] = field(default_factory=list)  # ids the template added per row
    # Encoder-decoder targets: (num_sequences, target_len), -100 where there is no label.
    labels: torch.Tensor | None = None

    @property
    def num_sequences(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def __len__(self) -> int:
        return self.num_sequences

    def __repr__(self) -> str:
        return (
            f"TokenData(num_sequences={self.num_sequences}, seq_len={self.seq_len}, "
            f"num_tokens={self.num_tokens}, chunking={self.chunking!r}, source={self.source!r})"
        )

    def head(self, n: int) -> TokenData:
        """The first ``n`` sequences (padding columns that only padding used are dropped)."""
        mask = self.attention_mask[:n]
        width = int(mask.sum(dim=1).max()) if mask.shape[0] else 0
        width = max(width, 1)
        return TokenData(
            self.input_ids[:n, :width],
            mask[:, :width],
            self.texts[:n],
            self.pad_token_id,
            self.source,
            self.chunking,
            self.dropped_tokens,
            list(self.special_tokens),
            None if self.labels is None else trim_labels(self.labels[:n]),
        )


def trim_labels(labels: torch.Tensor) -> torch.Tensor:
    """Drop the trailing columns where no row has a label."""
    has = (labels != -100).any(0).nonzero()
    width = int(has.max()) + 1 if has.numel() else 1
    return labels[:, :width]


@dataclass(repr=False)
class InputData:
    """Non-text model inputs (images, audio, any tensors the forward takes), ready for capture.

    ``inputs`` maps forward keywords (``pixel_values``, ``input_features``, ``input_values``,
    their ``attention_mask``) to tensors whose first dimension is the sample; ``texts`` names
    each sample for display; ``labels`` are decoder targets (Whisper), -100 where none.
    """

    inputs: dict[str, torch.Tensor]
    texts: list[str]
    source: str = ""
    labels: torch.Tensor | None = None

    @property
    def num_sequences(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def __len__(self) -> int:
        return self.num_sequences

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.inputs.items())
        return f"InputData({shapes}, source={self.source!r})"

    def head(self, n: int) -> InputData:
        return InputData(
            {k: v[:n] for k, v in self.inputs.items()},
            self.texts[:n],
            self.source,
            None if self.labels is None else trim_labels(self.labels[:n]),
        )
