"""The data in the capture's terms: checked once (token ids, masks, labels, the inputs the
model's forward takes), then each batch's forward inputs and each stack's mask."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from hopaudit.errors import DataError
from hopaudit.model.blocks import decoder_start_ids, is_encoder_decoder, main_input_name

__all__ = ["Feed", "forward_kwargs"]


def _check_data(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ids = getattr(data, "input_ids", None)
    mask = getattr(data, "attention_mask", None)
    if ids is None:
        raise DataError(
            f"capture() takes a TokenData (from hopaudit.data.prepare_data), got "
            f"{type(data).__name__}"
        )
    ids = torch.as_tensor(ids)
    mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise DataError(
            f"input_ids must be (sequences, seq_len) with an attention_mask of the same shape; "
            f"got {tuple(ids.shape)} and {tuple(mask.shape)}"
        )
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise DataError("there are no tokens to capture: the data is empty")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise DataError(f"input_ids must be integer token ids, got dtype {ids.dtype}")
    lengths = (mask != 0).sum(1)
    if bool((lengths == 0).any()):
        i = int((lengths == 0).nonzero()[0])
        raise DataError(
            f"sequence {i} has no real tokens (its attention mask is all zero); drop it"
        )
    return ids.long(), (mask != 0).long()


class Feed:
    """The data in capture's terms: each batch's forward inputs and each stack's mask.

    Token data (a ``TokenData``) feed ``input_ids`` and ``attention_mask``; an encoder-decoder
    also gets ``decoder_input_ids`` = its labels shifted right (the model's own shift) and
    its decoder stack selects rows where there is a label. Non-text data (an ``InputData``)
    feed their tensors as given, floats cast to the model's dtype.
    """

    def __init__(self, data: Any, model: nn.Module, stacks: list[str]) -> None:
        from hopaudit.data.prepare import InputData

        self.model = model
        self.stacks = stacks
        self.seq2seq = is_encoder_decoder(model)
        self.main = main_input_name(model)
        if isinstance(data, InputData):
            self.ids = self.mask = None
            self.inputs = {k: torch.as_tensor(v) for k, v in data.inputs.items()}
            if not self.inputs:
                raise DataError("the InputData holds no inputs")
            self.n = int(next(iter(self.inputs.values())).shape[0])
            if self.n == 0:
                raise DataError("there are no samples to capture: the data is empty")
        else:
            self.ids, self.mask = _check_data(data)
            self.inputs = {}
            self.n = int(self.ids.shape[0])
        self.labels = _check_labels(getattr(data, "labels", None), self.n)
        if self.seq2seq and self.labels is None:
            raise DataError(
                f"{type(model).__name__} is an encoder-decoder: its decoder runs on labels, "
                "and the data give none; pass texts (each is its own label), (source, target) "
                "text pairs, or rows with input_ids (or input_features) and labels"
            )
        if not self.seq2seq and self.labels is not None:
            self.labels = None  # a decoder-only or encoder model has one stack: no targets
        given = set(self.inputs) if self.ids is None else {"input_ids", "attention_mask"}
        if self.seq2seq:
            given.add("decoder_input_ids")
        _check_forward_inputs(model, given, self.main)
        self.float_dtype = next(
            (p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32
        )

    def batch(self, start: int, stop: int, device: torch.device) -> tuple[dict, dict, Any]:
        """(forward kwargs on ``device``, stack -> CPU mask or None, (targets, mask, shift)
        for the scores on ``device`` or None)."""
        kwargs: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor | None] = {}
        score = None
        if self.ids is not None:
            mask = self.mask[start:stop]
            width = int(mask.any(0).nonzero().max()) + 1  # drop all-pad trailing columns
            mask = mask[:, :width]
            ids = self.ids[start:stop, :width]
            kwargs["input_ids"] = ids.to(device, non_blocking=True)
            kwargs["attention_mask"] = mask.to(device, non_blocking=True)
            masks[self.stacks[0]] = mask
            score = (kwargs["input_ids"], kwargs["attention_mask"], True)
        else:
            for k, v in self.inputs.items():
                v = v[start:stop]
                if v.is_floating_point():
                    v = v.to(self.float_dtype)
                kwargs[k] = v.to(device, non_blocking=True)
            masks[self.stacks[0]] = None
            score = None
        if self.labels is not None:
            labels = self.labels[start:stop]
            has = (labels != -100).any(0).nonzero()
            labels = labels[:, : int(has.max()) + 1]
            kwargs["decoder_input_ids"] = decoder_start_ids(self.model, labels).to(device)
            label_mask = (labels != -100).long()
            masks[self.stacks[-1]] = label_mask
            targets = labels.clamp_min(0).to(device)
            score = (targets, label_mask.to(device), False)
        return kwargs, masks, score

    def frame_mask(self, kwargs: dict[str, torch.Tensor], start: int, stop: int):
        """The mask of real positions of a non-text encoder's output of ``seq`` positions:
        all of them, or, for raw audio with an attention mask, the frames its samples fill."""
        am = self.inputs.get("attention_mask")
        lengths_of = getattr(self.model, "_get_feat_extract_output_lengths", None)

        def mask_of(seq: int) -> torch.Tensor:
            n = stop - start
            if am is None or not callable(lengths_of) or self.main != "input_values":
                return torch.ones(n, seq, dtype=torch.long)
            frames = torch.as_tensor(lengths_of(am[start:stop].sum(-1))).long().clamp(1, seq)
            return (torch.arange(seq)[None] < frames[:, None]).long()

        return mask_of


def _check_labels(labels: Any, n: int) -> torch.Tensor | None:
    if labels is None:
        return None
    labels = torch.as_tensor(labels)
    if labels.ndim != 2 or labels.shape[0] != n or labels.is_floating_point():
        raise DataError(
            f"labels must be integer ids (sequences, target_len) for {n} sequences, got "
            f"{labels.dtype} {tuple(labels.shape)}"
        )
    empty = ~(labels != -100).any(1)
    if bool(empty.any()):
        raise DataError(f"sequence {int(empty.nonzero()[0])} has no label (all -100); drop it")
    return labels.long()


def _check_forward_inputs(model: nn.Module, given: set[str], main: str) -> None:
    """The forward must take every input given, and get the one it needs (named)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return
    # transformers' forwards end in **kwargs (attention flags) and ignore what they do not
    # name: an input they do not name would be dropped silently
    is_hf = hasattr(model, "config") and hasattr(model, "main_input_name")
    takes_any = not is_hf and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = set(params)
    unknown = sorted(k for k in given if k not in names and k != "attention_mask")
    if unknown and not takes_any:
        raise DataError(
            f"{type(model).__name__}.forward takes no {', '.join(unknown)}; it takes "
            f"{', '.join(n for n in params if n not in ('kwargs', 'args'))[:300]}: pass the "
            "inputs this model reads"
        )
    required = [
        n
        for n, p in params.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and n not in given
    ]
    if main in names and main not in given and main != "input_ids":
        required = [main, *[r for r in required if r != main]]
    if required:
        raise DataError(
            f"{type(model).__name__}.forward needs {', '.join(required)}, which the data do "
            f"not give (they give {', '.join(sorted(given))}); pass data with "
            f"{required[0]}"
        )


def forward_kwargs(model: nn.Module) -> dict[str, Any]:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in params else {}
