"""The tokenizer and the model's vocabulary: the tokenizer found offline, the pad id, token ids
checked against the vocabulary, rows padded into a ``TokenData`` and decoded for display."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hopaudit.data.types import TokenData
from hopaudit.errors import DataError

__all__ = [
    "check_token_data",
    "check_vocab",
    "decode_rows",
    "find_tokenizer",
    "first_int",
    "model_path",
    "pad_id",
    "pad_in_vocab",
    "pad_rows",
    "resolve_tokenizer",
    "text_config",
]


def find_tokenizer(model: Any) -> Any | None:
    """The tokenizer that belongs to ``model``, found offline, or None.

    Looks at ``model.hopaudit_tokenizer`` first (set by hopaudit's loaders, e.g. for GGUF
    models), then loads ``AutoTokenizer.from_pretrained(dir, local_files_only=True)`` from the
    model's ``name_or_path`` / ``config._name_or_path`` when that is a local directory (or a
    ``.gguf`` file, or a directory holding exactly one). Never touches the network.
    """
    if model is None:
        return None
    attached = getattr(model, "hopaudit_tokenizer", None)
    if attached is not None:
        return attached
    for where in _model_paths(model):
        path = Path(where).expanduser()
        try:
            from transformers import AutoTokenizer

            if path.is_file() and path.suffix == ".gguf":
                return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            if path.is_dir():
                try:
                    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
                except Exception:
                    ggufs = sorted(path.glob("*.gguf"))
                    if len(ggufs) == 1:
                        return AutoTokenizer.from_pretrained(str(path), gguf_file=ggufs[0].name)
        except Exception:
            continue
    return None


def _model_paths(model: Any) -> list[str]:
    config = getattr(model, "config", None)
    paths = [
        getattr(model, "name_or_path", None),
        getattr(config, "_name_or_path", None),
        getattr(config, "name_or_path", None),
    ]
    out: list[str] = []
    for p in paths:
        if isinstance(p, (str, Path)) and str(p) and str(p) not in out:
            out.append(str(p))
    return out


def model_path(model: Any) -> str:
    paths = _model_paths(model)
    return paths[0] if paths else ""


def resolve_tokenizer(tokenizer: Any, model: Any, quiet: bool = False) -> Any | None:
    if tokenizer is None:
        return find_tokenizer(model)
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(tokenizer))
        except Exception as e:
            if quiet:
                return None
            raise DataError(f"cannot load the tokenizer {str(tokenizer)!r}: {e}") from None
    if type(tokenizer).__module__.startswith("tokenizers") and hasattr(tokenizer, "encode_batch"):
        # A raw tokenizers.Tokenizer knows no EOS/pad roles: no separator, pad id 0.
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    if not callable(tokenizer):
        raise DataError(
            f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}"
        )
    return tokenizer


def first_int(x: Any) -> int | None:
    """An int config value (the first of a list, as some configs give ``eos_token_id``), or None."""
    if isinstance(x, (list, tuple)):
        x = x[0] if x else None
    return int(x) if isinstance(x, (int, np.integer)) and not isinstance(x, bool) else None


def pad_id(tok: Any, model: Any) -> int:
    for source in (tok, text_config(model)):
        if source is None:
            continue
        for name in ("pad_token_id", "eos_token_id"):
            value = first_int(getattr(source, name, None))
            if value is not None and value >= 0:
                return value
    return 0


def text_config(model: Any) -> Any:
    config = getattr(model, "config", None)
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        try:
            return get_text()
        except Exception:
            return config
    return config


def check_vocab(real_ids: torch.Tensor, model: Any) -> None:
    vocab = _model_vocab(model)
    if vocab is None or real_ids.numel() == 0:
        return
    lo, hi = int(real_ids.min()), int(real_ids.max())
    if lo < 0:
        raise DataError(
            f"token id {lo} is negative; input_ids must be vocabulary ids (not -100 labels)"
        )
    if hi >= vocab:
        raise DataError(
            f"token id {hi} is out of range for the model's vocabulary of {vocab}; were the "
            "data tokenized with another model's tokenizer?"
        )


def pad_in_vocab(pad: int, model: Any) -> int:
    vocab = _model_vocab(model)
    return 0 if vocab is not None and not 0 <= pad < vocab else pad


def pad_rows(rows: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(r.numel() for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : r.numel()] = r
        mask[i, : r.numel()] = 1
    return ids, mask


def decode_rows(rows: list[torch.Tensor], tok: Any) -> list[str]:
    """The texts of token rows, for display; token-id labels when there is no tokenizer, or
    when it cannot decode them (ids outside its vocabulary, say), with a warning saying why."""
    if tok is not None and hasattr(tok, "batch_decode"):
        try:
            return list(
                tok.batch_decode(
                    [r.tolist() for r in rows],
                    skip_special_tokens=False,
                    clean_up_tokenization_spaces=False,
                )
            )
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            warnings.warn(
                f"the tokenizer could not decode the sequences ({type(exc).__name__}: {exc}); "
                "they are shown as token ids",
                stacklevel=3,
            )
    return [_ids_label(r) for r in rows]


def _ids_label(row: torch.Tensor, show: int = 8) -> str:
    head = " ".join(str(int(i)) for i in row[:show])
    more = " ..." if row.numel() > show else ""
    return f"<{row.numel()} token ids: {head}{more}>"


def check_token_data(data: TokenData) -> TokenData:
    ids, mask = data.input_ids, data.attention_mask
    if not isinstance(ids, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise DataError("TokenData.input_ids and attention_mask must be torch tensors")
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise DataError(
            f"TokenData.input_ids {tuple(ids.shape)} and attention_mask {tuple(mask.shape)} "
            "must be the same (num_sequences, seq_len) shape"
        )
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise DataError(f"TokenData.input_ids must be torch.long, got {ids.dtype}")
    if ids.shape[0] == 0 or int(mask.sum()) == 0:
        raise DataError("the dataset is empty: the TokenData has no real tokens")
    if len(data.texts) != ids.shape[0]:
        raise DataError(
            f"TokenData has {len(data.texts)} texts for {ids.shape[0]} sequences; give one each"
        )
    return data


def _model_vocab(model: Any) -> int | None:
    if model is None:
        return None
    from hopaudit.model.blocks import vocab_size

    return vocab_size(model)
