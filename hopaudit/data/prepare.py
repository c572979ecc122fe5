"""Any dataset form a user has -> fixed-length token sequences, with their text kept for display.

``prepare_data`` accepts texts (a list, a file, a directory, a ``datasets.Dataset``, any
iterable of strings or of ``{"text": ...}`` dicts) and pre-tokenized ids (a tensor, a numpy
array, lists of ints, a DataLoader or iterable of ``{"input_ids", "attention_mask"}`` dicts,
a ``TokenData``), and returns one right-padded ``TokenData``.

Decisions, so results are reproducible and unsurprising:

- **Special tokens follow the tokenizer.** Each text is tokenized without special tokens; every
  sequence then gets exactly what the tokenizer itself adds to one text (found by encoding a
  probe with and without ``add_special_tokens``): a BOS first for Llama/Gemma-style tokenizers,
  CLS ... SEP for BERT-style ones, nothing for GPT-2-style ones. ``max_length`` counts them.
- **Stream chunking** joins the documents' tokens with the tokenizer's EOS (else SEP, else
  nothing) *between* documents and cuts the stream into full sequences; the short rest is
  dropped, unless the whole stream is shorter than one sequence: then it is kept as one shorter
  sequence and a warning says so.
- **Document chunking**: one sequence per non-empty text, truncated (a warning counts the
  truncated texts), right-padded with the tokenizer's pad id (else EOS, else 0).
- **Files**: a text file is one document (UTF-8, undecodable bytes replaced); a ``.jsonl``
  file holds one document per line in its ``"text"`` field. A directory is searched
  recursively for ``*.txt`` files (hidden files and folders skipped), in sorted path order, one
  document per file. For one document per line pass ``path.read_text().splitlines()``.
  A short ``str`` is a path; one longer than 200 characters (or with a line break) that names
  no file is a text. A short text itself goes in a list: ``[text]``.
- **Encoder-decoders**: texts are their own labels; ``(source, target)`` pairs and rows with
  ``labels`` are taken as given (see :func:`prepare_data`). Images and audio: ``inputs.py``.
- **Pre-tokenized rows are kept as rows** (no special tokens added): a row longer than
  ``max_length`` is cut into full ``max_length`` pieces (stream; its short rest dropped) or
  truncated (document). Masks select the real tokens, so left padding becomes right padding.
- **``max_sequences`` keeps the first N sequences** (in order); texts are tokenized in batches
  and reading stops once N sequences are complete, so a cap on a big corpus is cheap. When only
  a text's first tokens can be used (document truncation, a capped stream), a very long text is
  encoded by a prefix long enough to give exactly those tokens.
- A ``TokenData`` passes through unchanged (no re-chunking); only ``max_sequences`` and the
  vocabulary check apply.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from hopaudit.data.rows import fit_rows
from hopaudit.data.sources import TEXT_NOT_PATH_CHARS, classify
from hopaudit.data.texts import document_rows, stream_rows
from hopaudit.data.tokenizer import (
    check_token_data,
    check_vocab,
    decode_rows,
    find_tokenizer,
    first_int,
    model_path,
    pad_id,
    pad_in_vocab,
    pad_rows,
    resolve_tokenizer,
    text_config,
)
from hopaudit.data.types import InputData, TokenData
from hopaudit.errors import DataError

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "TEXT_NOT_PATH_CHARS",
    "context_length",
    "find_tokenizer",
    "prepare_data",
]


def prepare_data(
    data: Any,
    tokenizer: Any = None,
    *,
    max_length: int | None = None,
    chunking: str = "stream",
    max_sequences: int | None = None,
    model: Any = None,
    processor: Any = None,
) -> TokenData | InputData:
    """Turn ``data`` in any accepted form into a right-padded :class:`TokenData`, or an
    :class:`InputData` for a model that takes images or audio.

    ``max_length=None`` means ``DEFAULT_MAX_LENGTH`` tokens, or the model's context when that
    is shorter; an explicit ``max_length`` beyond the model's context is an error.

    Texts are tokenized with ``tokenizer``, or the one found beside ``model``
    (:func:`find_tokenizer`). ``chunking`` is ``"stream"`` or ``"document"`` (see the module
    docstring). With ``model`` given, token ids are checked against its vocabulary.
    Raises :class:`DataError` with one line saying what to do for any bad input.

    For an encoder-decoder model (``config.is_encoder_decoder``), texts go to the encoder and
    each sequence is also the decoder's labels (teacher forcing); ``(source, target)`` text
    pairs and rows of ``{"input_ids", "labels"}`` are taken as given (one sequence each,
    truncated to ``max_length``). Images and audio (see :mod:`hopaudit.inputs`) give an
    :class:`InputData`; ``processor`` turns PIL images or arrays into model inputs.
    """
    if isinstance(data, InputData):
        return data if max_sequences is None else data.head(max_sequences)
    from hopaudit.data.inputs import prepare_inputs

    inputs, data = prepare_inputs(
        data, model=model, processor=processor, max_sequences=max_sequences
    )
    if inputs is not None:
        return inputs
    max_length = _resolve_max_length(max_length, model)
    _check_options(max_length, chunking, max_sequences)
    _check_size(data, max_length, max_sequences)
    if isinstance(data, TokenData):
        out = check_token_data(data)
        if max_sequences is not None and out.num_sequences > max_sequences:
            out = out.head(max_sequences)
        check_vocab(out.input_ids[out.attention_mask.bool()], model)
        _check_context(out.seq_len, model)
        return _with_labels(out, model)

    kind, payload, source = classify(data)
    if kind in ("pairs", "labelled"):
        return _labelled_data(kind, payload, source, tokenizer, model, max_length, max_sequences)
    if kind == "texts":
        tok = resolve_tokenizer(tokenizer, model)
        if tok is None:
            where = model_path(model)
            beside = f" beside the model ({where})" if where else ""
            raise DataError(
                f"the data are texts but no tokenizer was given and none was found{beside}; "
                "pass tokenizer=AutoTokenizer.from_pretrained(...) or token ids instead"
            )
        if chunking == "stream":
            rows, dropped, specials = stream_rows(payload, tok, max_length, max_sequences)
        else:
            rows, dropped, specials = document_rows(payload, tok, max_length, max_sequences)
        pad = pad_id(tok, model)
    else:
        rows, dropped = fit_rows(payload, max_length, chunking, max_sequences)
        specials = []
        tok = resolve_tokenizer(tokenizer, model, quiet=True)
        pad = pad_id(tok, model)

    real = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
    check_vocab(real, model)
    pad = pad_in_vocab(pad, model)
    input_ids, mask = pad_rows(rows, pad)
    texts = decode_rows(rows, tok)
    out = TokenData(input_ids, mask, texts, pad, source, chunking, dropped, specials)
    return _with_labels(out, model)


def _is_seq2seq(model: Any) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def _with_labels(data: TokenData, model: Any) -> TokenData:
    """An encoder-decoder's plain texts are also its decoder's labels (teacher forcing)."""
    if data.labels is not None or not _is_seq2seq(model):
        return data
    labels = data.input_ids.masked_fill(data.attention_mask == 0, -100)
    return dataclasses.replace(data, labels=labels)  # the caller's TokenData is left as given


def _labelled_data(
    kind: str,
    payload: Iterable,
    source: str,
    tokenizer: Any,
    model: Any,
    max_length: int,
    max_sequences: int | None,
) -> TokenData:
    """(source, target) text pairs or (input_ids, labels) rows, one sequence each, as given."""
    if model is not None and not _is_seq2seq(model):
        raise DataError(
            f"the data are {source}, targets for an encoder-decoder, but "
            f"{type(model).__name__} is not one; pass plain texts or token ids"
        )
    tok = None
    if kind == "pairs":
        tok = resolve_tokenizer(tokenizer, model)
        if tok is None:
            raise DataError(
                "the data are (source, target) text pairs but no tokenizer was given and none "
                "was found beside the model; pass tokenizer=AutoTokenizer.from_pretrained(...)"
            )
    sources: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    cut = 0
    for i, (src, tgt) in enumerate(payload):
        if kind == "pairs":
            if not (isinstance(src, str) and isinstance(tgt, str)):
                raise DataError(f"pair {i} is not two strings (source, target)")
            src_ids = torch.tensor(_encode_with_template(tok, src), dtype=torch.long)
            tgt_ids = torch.tensor(_encode_with_template(tok, tgt), dtype=torch.long)
        else:
            src_ids, tgt_ids = src, tgt[tgt != -100]
        if src_ids.numel() == 0 or tgt_ids.numel() == 0:
            raise DataError(f"sequence {i} has an empty source or target; drop it")
        cut += int(src_ids.numel() > max_length or tgt_ids.numel() > max_length)
        sources.append(src_ids[:max_length])
        targets.append(tgt_ids[:max_length])
        if max_sequences is not None and len(sources) >= max_sequences:
            break
    if not sources:
        raise DataError(f"the dataset is empty: {source} has no rows")
    if cut:
        warnings.warn(
            f"{cut} of {len(sources)} sources or targets were longer than max_length="
            f"{max_length} tokens and were truncated",
            UserWarning,
            stacklevel=3,
        )
    if tok is None:
        tok = resolve_tokenizer(tokenizer, model, quiet=True)
    pad = pad_in_vocab(pad_id(tok, model), model)
    check_vocab(torch.cat(sources), model)
    check_vocab(torch.cat(targets), model)
    input_ids, mask = pad_rows(sources, pad)
    labels, label_mask = pad_rows(targets, 0)
    labels = labels.masked_fill(label_mask == 0, -100)
    texts = decode_rows(sources, tok)
    return TokenData(input_ids, mask, texts, pad, source, "document", 0, [], labels=labels)


def _encode_with_template(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=True)["input_ids"])


#: Tokens per sequence when neither the user nor a short model context says otherwise.
DEFAULT_MAX_LENGTH = 256


def context_length(model: Any) -> int | None:
    """The most positions the model can take (None when it does not say, e.g. ALiBi models)."""
    if model is None:
        return None
    config = text_config(model)
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = first_int(getattr(config, name, None))
        if value is not None and value > 0:
            return value
    return None


def _resolve_max_length(max_length: Any, model: Any) -> Any:
    ctx = context_length(model)
    if max_length is None:
        return DEFAULT_MAX_LENGTH if ctx is None else min(DEFAULT_MAX_LENGTH, ctx)
    if ctx is not None and _is_int(max_length) and max_length > ctx:
        raise DataError(
            f"max_length={max_length} is longer than the model's context of {ctx} positions; "
            f"use max_length <= {ctx}"
        )
    return max_length


def _check_context(seq_len: int, model: Any) -> None:
    ctx = context_length(model)
    if ctx is not None and seq_len > ctx:
        raise DataError(
            f"sequences of {seq_len} tokens are longer than the model's context of {ctx} "
            f"positions; pass max_length <= {ctx}"
        )


def _check_size(data: Any, max_length: int, max_sequences: int | None) -> None:
    """The request against memory before anything is read: ``max_sequences`` sequences of
    data of unknown size (a generator, a stream), or a tensor's rows, of ``max_length``
    tokens (hopaudit/data/bounds.py). Data of known size (a list, a dataset) are as big as
    they are: a generous ``max_sequences`` cap is then no request."""
    from hopaudit.data.bounds import check_tokens

    sized = hasattr(data, "__len__") or isinstance(data, (str, os.PathLike))
    if max_sequences is not None and not sized:
        check_tokens(max_sequences, max_length, f"max_sequences={max_sequences}")
    if isinstance(data, torch.Tensor) and data.dim() == 2:
        n = data.shape[0] if max_sequences is None else min(data.shape[0], max_sequences)
        check_tokens(n, min(data.shape[1], max_length), f"a tensor of shape {tuple(data.shape)}")


def _check_options(max_length: Any, chunking: Any, max_sequences: Any) -> None:
    if not _is_int(max_length) or max_length < 2:
        raise DataError(
            f"max_length must be an integer >= 2 (tokens per sequence), got {max_length!r}"
        )
    if chunking not in ("stream", "document"):
        raise DataError(f"chunking must be 'stream' or 'document', got {chunking!r}")
    if max_sequences is not None and (not _is_int(max_sequences) or max_sequences < 1):
        raise DataError(f"max_sequences must be None or an integer >= 1, got {max_sequences!r}")


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)
