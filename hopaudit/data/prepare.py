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
import itertools
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hopaudit.data.types import InputData, TokenData
from hopaudit.errors import DataError

_TEXT_BATCH = 1000  # texts per tokenizer call: big enough for the Rust batch path
_BATCH_CHARS = 2_000_000  # characters per tokenizer call at most (one huge text goes alone)
_MIN_BATCH_CHARS = 20_000
_CHARS_PER_TOKEN = 16  # a prefix of want * 16 characters holds more than `want` tokens
_MARGIN = 16  # tokens past the needed ones that a prefix must give to be trusted
_ACCEPTED = (
    "a list of strings, a path to a text file or to a directory of .txt files, a "
    "datasets.Dataset with a text column, a LongTensor of token ids (batch, seq), a DataLoader "
    "(or iterable) of dicts with input_ids, or a TokenData"
)


# ---------------------------------------------------------------------------------------------
# The entry point


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
        out = _check_token_data(data)
        if max_sequences is not None and out.num_sequences > max_sequences:
            out = out.head(max_sequences)
        _check_vocab(out.input_ids[out.attention_mask.bool()], model)
        _check_context(out.seq_len, model)
        return _with_labels(out, model)

    kind, payload, source = _classify(data)
    if kind in ("pairs", "labelled"):
        return _labelled_data(kind, payload, source, tokenizer, model, max_length, max_sequences)
    if kind == "texts":
        tok = _resolve_tokenizer(tokenizer, model)
        if tok is None:
            where = _model_path(model)
            beside = f" beside the model ({where})" if where else ""
            raise DataError(
                f"the data are texts but no tokenizer was given and none was found{beside}; "
                "pass tokenizer=AutoTokenizer.from_pretrained(...) or token ids instead"
            )
        if chunking == "stream":
            rows, dropped, specials = _stream_rows(payload, tok, max_length, max_sequences)
        else:
            rows, dropped, specials = _document_rows(payload, tok, max_length, max_sequences)
        pad = _pad_id(tok, model)
    else:
        rows, dropped = _fit_rows(payload, max_length, chunking, max_sequences)
        specials = []
        tok = _resolve_tokenizer(tokenizer, model, quiet=True)
        pad = _pad_id(tok, model)

    real = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
    _check_vocab(real, model)
    pad = _pad_in_vocab(pad, model)
    input_ids, mask = _pad_rows(rows, pad)
    texts = _decode(rows, tok)
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
        tok = _resolve_tokenizer(tokenizer, model)
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
        tok = _resolve_tokenizer(tokenizer, model, quiet=True)
    pad = _pad_in_vocab(_pad_id(tok, model), model)
    _check_vocab(torch.cat(sources), model)
    _check_vocab(torch.cat(targets), model)
    input_ids, mask = _pad_rows(sources, pad)
    labels, label_mask = _pad_rows(targets, 0)
    labels = labels.masked_fill(label_mask == 0, -100)
    texts = _decode(sources, tok)
    return TokenData(input_ids, mask, texts, pad, source, "document", 0, [], labels=labels)


def _encode_with_template(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=True)["input_ids"])


#: Tokens per sequence when neither the user nor a short model context says otherwise.
DEFAULT_MAX_LENGTH = 256


def context_length(model: Any) -> int | None:
    """The most positions the model can take (None when it does not say, e.g. ALiBi models)."""
    if model is None:
        return None
    config = _text_config(model)
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = _first_int(getattr(config, name, None))
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


# ---------------------------------------------------------------------------------------------
# What did the user give us?


def _classify(data: Any) -> tuple[str, Any, str]:
    """Return ("texts", iterable of str, source) or ("rows", iterator of 1-D id tensors, source)."""
    if isinstance(data, str) and _is_text_not_path(data):
        return "texts", [data], "1 text (a string that is not a path)"
    if isinstance(data, (str, Path)):
        return _classify_path(Path(data).expanduser())
    if isinstance(data, np.ndarray) and (
        data.dtype.kind in "US" or (data.dtype == object and data.size and isinstance(
            data.flat[0], str))
    ):  # fmt: skip
        return "texts", [str(t) for t in data.reshape(-1)], f"{data.size} texts (numpy array)"
    if type(data).__name__ == "Series" and hasattr(data, "tolist"):
        values = data.tolist()
        if values and all(isinstance(v, str) for v in values):
            return "texts", values, f"{len(values)} texts (Series {getattr(data, 'name', '')!r})"
        if values and all(isinstance(v, (list, tuple, np.ndarray)) for v in values):
            return "rows", _sequence_rows(values), f"{len(values)} rows of token ids (Series)"
        raise DataError("a pandas Series must hold strings (texts) or lists of token ids")
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return "rows", iter(_tensor_rows(data, "the token id tensor")), _shape_source(data)
    module = type(data).__module__ or ""
    if module.startswith("datasets"):
        return _classify_hf_dataset(data)
    if type(data).__name__ == "DataFrame" and hasattr(data, "columns"):
        col = _text_column(list(data.columns), lambda c: data[c].head(1).map(type).tolist())
        return "texts", data[col].tolist(), f"DataFrame column {col!r}"
    if isinstance(data, Mapping):
        if "input_ids" in data and "labels" in data:
            return "labelled", _labelled_rows([data]), "a batch of input_ids and labels"
        if "input_ids" in data:
            return "rows", _batch_rows(data, 0), "a batch of input_ids"
        if isinstance(data.get("text"), (list, tuple)):
            return "texts", data["text"], f"{len(data['text'])} texts"
        raise DataError(
            f"a dict needs an 'input_ids' or a 'text' key, got keys {sorted(map(str, data))[:8]}"
        )
    if isinstance(data, (bytes, bytearray)) or not isinstance(data, Iterable):
        raise DataError(f"cannot read data of type {type(data).__name__}; pass {_ACCEPTED}")
    return _classify_iterable(data)


def _classify_iterable(data: Iterable) -> tuple[str, Any, str]:
    items = iter(data)
    try:
        first = next(items)
    except StopIteration:
        raise DataError(f"the dataset is empty (an empty {type(data).__name__})") from None
    rest = itertools.chain([first], items)
    n = f"{len(data)} " if isinstance(data, Sequence) else ""
    if isinstance(first, str):
        return "texts", rest, f"{n}texts"
    if (
        isinstance(first, (tuple, list))
        and len(first) == 2
        and all(isinstance(x, str) for x in first)
    ):
        return "pairs", rest, f"{n}(source, target) text pairs"
    if isinstance(first, Mapping):
        if "input_ids" in first and "labels" in first:
            return "labelled", _labelled_rows(rest), f"{n}batches of input_ids and labels"
        if "input_ids" in first:
            return "rows", _mapping_rows(rest), f"{n}batches of input_ids"
        if isinstance(first.get("text"), str):
            return "texts", (_text_of(item) for item in rest), f"{n}records with text"
        raise DataError(
            "the data yields dicts without 'input_ids' or 'text' "
            f"(keys: {sorted(map(str, first))[:8]}); tokenize them or pick the text field"
        )
    if isinstance(first, (torch.Tensor, np.ndarray, list, tuple)):
        return "rows", _sequence_rows(rest), f"{n}rows of token ids"
    raise DataError(f"cannot read data whose items are {type(first).__name__}; pass {_ACCEPTED}")


#: A string this long (or with a line break) that names no file is a text, not a path.
TEXT_NOT_PATH_CHARS = 200


def _is_text_not_path(data: str) -> bool:
    """A long string, or one with a line break, that is not an existing path: a text.

    Asking the OS about a very long name raises OSError (name too long), so it is not asked.
    """
    if "\n" not in data and len(data) <= TEXT_NOT_PATH_CHARS:
        return False
    if len(data) > 4096 or "\x00" in data:
        return True
    try:
        return not Path(data).expanduser().exists()
    except (OSError, ValueError):
        return True


def _labelled_rows(batches: Iterable) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids row of real tokens, labels row) from batches of {input_ids, labels}."""
    for i, batch in enumerate(batches):
        if not isinstance(batch, Mapping) or "labels" not in batch or "input_ids" not in batch:
            raise DataError(f"batch {i} has no 'input_ids' and 'labels'; every batch needs both")
        ids = list(_batch_rows(batch, i))
        labels = list(_batch_rows({"input_ids": batch["labels"]}, i))
        if len(ids) != len(labels):
            raise DataError(f"batch {i} has {len(ids)} input_ids rows but {len(labels)} labels")
        yield from zip(ids, labels, strict=True)


def _text_of(item: Any) -> str:
    text = item.get("text") if isinstance(item, Mapping) else None
    if not isinstance(text, str):
        raise DataError("every record must have a string 'text' field")
    return text


def _classify_path(path: Path) -> tuple[str, Any, str]:
    if not path.exists():
        raise DataError(
            f"no such file or directory: {str(path)!r}; to audit a text itself, pass it in a "
            "list: [text]"
        )
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*.txt")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise DataError(f"no .txt files in the directory {str(path)!r} (searched recursively)")
        return "texts", (_read_text(p) for p in files), f"{len(files)} .txt files in {path}"
    if path.suffix == ".jsonl":
        return "texts", _read_jsonl(path), f"{path.name}"
    return "texts", [_read_text(path)], f"{path.name}"


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise DataError(f"{str(path)!r} looks binary (NUL bytes), not a text file")
    return raw.decode("utf-8", errors="replace")


def _read_jsonl(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path.name} line {i} is not JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataError(f"{path.name} line {i} has no string 'text' field")
            yield record["text"]


def _classify_hf_dataset(ds: Any) -> tuple[str, Any, str]:
    name = type(ds).__name__
    if name in ("DatasetDict", "IterableDatasetDict"):
        raise DataError(
            f"a {name} holds several splits ({', '.join(map(str, ds.keys()))}); pass one, "
            f"e.g. ds[{next(iter(ds.keys()))!r}]"
        )
    columns = list(getattr(ds, "column_names", None) or [])
    features = getattr(ds, "features", None) or {}
    if not columns:  # a streaming dataset whose features are unknown: read the first row
        return _classify_records(ds, name)
    if "input_ids" in columns:
        batches = ds.iter(batch_size=_TEXT_BATCH)
        return "rows", _mapping_rows(batches), f"{name} input_ids"

    def dtype_of(c: str) -> list:
        return [getattr(features.get(c), "dtype", None)]

    col = _text_column(columns, dtype_of)
    texts = (t for batch in ds.iter(batch_size=_TEXT_BATCH) for t in batch[col])
    size = f"{len(ds)} rows, " if hasattr(ds, "__len__") else ""
    return "texts", _none_as_empty(texts), f"{name} ({size}column {col!r})"


def _classify_records(ds: Any, name: str) -> tuple[str, Any, str]:
    """An iterable of dict rows whose columns are only known from the rows themselves."""
    rows = iter(ds)
    try:
        first = next(rows)
    except StopIteration:
        raise DataError(f"the dataset is empty (an empty {name})") from None
    if not isinstance(first, Mapping):
        return _classify_iterable(itertools.chain([first], rows))
    rest = itertools.chain([first], rows)
    if "input_ids" in first:
        return "rows", _mapping_rows(rest), f"{name} input_ids (columns read from its rows)"
    col = _text_column(list(first), lambda c: [type(first[c])])
    texts = (row.get(col) if isinstance(row, Mapping) else None for row in rest)
    return "texts", _none_as_empty(texts), f"{name} (column {col!r}, read from its rows)"


def _none_as_empty(texts: Iterable) -> Iterator[str]:
    for t in texts:
        yield "" if t is None else t


def _text_column(columns: list[str], kinds: Any) -> str:
    """The column named "text", else the only string column."""
    if "text" in columns:
        return "text"
    stringy = [c for c in columns if any(k in ("string", "large_string", str) for k in kinds(c))]
    if len(stringy) == 1:
        return stringy[0]
    what = f"string columns {stringy}" if stringy else "no string column"
    raise DataError(
        f"cannot tell which column holds the text: no 'text' column and {what} among "
        f"{columns}; pick it, e.g. ds.rename_column('your_column', 'text')"
    )


# ---------------------------------------------------------------------------------------------
# Pre-tokenized input -> rows of real tokens


def _shape_source(t: Any) -> str:
    return f"token ids {tuple(t.shape)}"


def _as_ids(x: Any, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.integer):
            raise DataError(f"{what} must hold integer token ids, got numpy {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, (list, tuple)):
        try:
            x = torch.tensor(x)
        except (TypeError, ValueError, RuntimeError):
            raise DataError(f"{what} must be integer token ids of one length per row") from None
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{what} must be a tensor of token ids, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise DataError(
            f"{what} must hold integer token ids (torch.long), got {x.dtype}; "
            "convert with .long() only if these really are ids"
        )
    return x.detach().to("cpu", torch.long)


def _tensor_rows(data: Any, what: str, mask: Any = None) -> list[torch.Tensor]:
    ids = _as_ids(data, what)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2:
        raise DataError(
            f"{what} must be 1-D (one sequence) or 2-D (batch, seq), got shape {tuple(ids.shape)}"
        )
    if mask is None:
        return list(ids)
    m = _as_ids(mask, "attention_mask")
    if m.ndim == 1:
        m = m[None]
    if m.shape != ids.shape:
        raise DataError(
            f"attention_mask shape {tuple(m.shape)} differs from input_ids {tuple(ids.shape)}"
        )
    keep = m.bool()
    return [row[k] for row, k in zip(ids, keep, strict=True)]


def _batch_rows(batch: Mapping, i: int) -> Iterator[torch.Tensor]:
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    what = f"input_ids of batch {i}"
    ragged = isinstance(ids, (list, tuple)) and ids and isinstance(ids[0], (list, tuple))
    if ragged and len({len(r) for r in ids}) > 1:  # e.g. a datasets batch of unpadded rows
        masks = mask if mask is not None else [None] * len(ids)
        for row, m in zip(ids, masks, strict=True):
            yield from _tensor_rows(row, what, m)
        return
    yield from _tensor_rows(ids, what, mask)


def _mapping_rows(batches: Iterable) -> Iterator[torch.Tensor]:
    for i, batch in enumerate(batches):
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise DataError(f"batch {i} has no 'input_ids'; every batch must be a dict with them")
        yield from _batch_rows(batch, i)


def _sequence_rows(items: Iterable) -> Iterator[torch.Tensor]:
    for i, item in enumerate(items):
        if (
            isinstance(item, (list, tuple))
            and item
            and isinstance(item[0], torch.Tensor)
            and item[0].ndim >= 1
        ):
            item = item[0]  # a DataLoader over a TensorDataset yields [ids, ...]
        if isinstance(item, (torch.Tensor, np.ndarray)) and item.ndim == 2:
            yield from _tensor_rows(item, f"batch {i} of token ids")
        elif isinstance(item, (torch.Tensor, np.ndarray, list, tuple)):
            yield from _tensor_rows(item, f"row {i} of token ids")
        else:
            raise DataError(f"row {i} is a {type(item).__name__}, not token ids")


def _fit_rows(
    rows: Iterable[torch.Tensor], max_length: int, chunking: str, max_sequences: int | None
) -> tuple[list[torch.Tensor], int]:
    """Keep rows that fit; cut (stream) or truncate (document) longer ones; cap the count."""
    out: list[torch.Tensor] = []
    dropped = 0
    seen = 0
    for row in rows:
        seen += 1
        if row.numel() == 0:
            continue
        if row.numel() <= max_length:
            pieces = [row]
        elif chunking == "stream":
            n = row.numel() // max_length
            pieces = list(row[: n * max_length].view(n, max_length))
        else:
            pieces = [row[:max_length]]
        dropped += row.numel() - sum(p.numel() for p in pieces)
        out.extend(pieces)
        if max_sequences is not None and len(out) >= max_sequences:
            return out[:max_sequences], dropped
    if not out:
        detail = "it has no rows" if seen == 0 else f"all {seen} rows have no real tokens"
        raise DataError(f"the dataset is empty: {detail}")
    return out, dropped


# ---------------------------------------------------------------------------------------------
# Texts -> rows


def _special_template(tok: Any) -> tuple[list[int], list[int]]:
    """What the tokenizer adds around one text: (prefix ids, suffix ids)."""
    probe = "hello world"
    try:
        plain = list(tok(probe, add_special_tokens=False)["input_ids"])
        full = list(tok(probe, add_special_tokens=True)["input_ids"])
    except Exception:
        return [], []
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    return [], []


def _encode(tok: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    try:
        enc = tok(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
    except TypeError:  # tokenizers that do not take every keyword
        enc = tok(texts, add_special_tokens=False)
    return [list(ids) for ids in enc["input_ids"]]


def _text_batches(
    texts: Iterable[Any], char_cap: Callable[[], int]
) -> Iterator[tuple[list[str], int]]:
    """Non-empty texts in batches, with how many texts (empty ones too) each batch consumed.

    A batch holds at most ``_TEXT_BATCH`` texts and about ``char_cap()`` characters (asked
    anew for every batch, so a reader that needs few more tokens reads few more texts).
    """
    batch: list[str] = []
    consumed = chars = 0
    cap = char_cap()
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"text {i} is a {type(text).__name__}, not a str")
        consumed += 1
        if text.strip():
            batch.append(text)
            chars += len(text)
        if len(batch) >= _TEXT_BATCH or chars >= cap:
            yield batch, consumed
            batch, consumed, chars = [], 0, 0
            cap = char_cap()
    yield batch, consumed


def _encode_prefixes(tok: Any, texts: list[str], want: int | None) -> tuple[list[list[int]], int]:
    """Encode texts; when only the first ``want`` tokens matter, encode a prefix of each.

    A prefix of ``want * 16`` characters gives far more than ``want`` tokens for real text;
    tokenization is local (pre-tokenizers split at spaces and punctuation), so its first
    ``want`` tokens equal the full text's when the prefix yields ``_MARGIN`` tokens more.
    Texts whose prefix yields fewer are encoded in full. Returns the ids and how many texts
    were cut (their token counts past the prefix are unknown).
    """
    if want is None:
        return _encode(tok, texts), 0
    limit = want * _CHARS_PER_TOKEN + 256
    ids = _encode(tok, [t[:limit] for t in texts])
    redo = [i for i, t in enumerate(texts) if len(t) > limit and len(ids[i]) < want + _MARGIN]
    for i, full in zip(redo, _encode(tok, [texts[i] for i in redo]), strict=True):
        ids[i] = full
    cut = sum(1 for t in texts if len(t) > limit) - len(redo)
    return ids, cut


def _content_room(max_length: int, prefix: list[int], suffix: list[int]) -> int:
    room = max_length - len(prefix) - len(suffix)
    if room < 1:
        raise DataError(
            f"max_length={max_length} leaves no room for text after the tokenizer's "
            f"{len(prefix) + len(suffix)} special tokens; use a larger max_length"
        )
    return room


def _empty_error(n_texts: int) -> DataError:
    if n_texts == 0:
        return DataError("the dataset is empty: it has no texts")
    return DataError(f"all {n_texts} texts are empty or whitespace; there is nothing to tokenize")


def _stream_rows(
    texts: Iterable[Any], tok: Any, max_length: int, max_sequences: int | None
) -> tuple[list[torch.Tensor], int | None, list[int]]:
    prefix, suffix = _special_template(tok)
    room = _content_room(max_length, prefix, suffix)
    sep = getattr(tok, "eos_token_id", None)
    if sep is None:
        sep = getattr(tok, "sep_token_id", None)
    need = None if max_sequences is None else max_sequences * room
    parts: list[np.ndarray] = []
    total = n_texts = n_docs = 0

    def char_cap() -> int:
        if need is None:
            return _BATCH_CHARS
        return min(_BATCH_CHARS, max(_MIN_BATCH_CHARS, (need - total) * 8))

    for batch, consumed in _text_batches(texts, char_cap):
        n_texts += consumed
        encoded, _ = _encode_prefixes(tok, batch, None if need is None else need - total)
        for ids in encoded:
            if n_docs and sep is not None:
                parts.append(np.array([sep], dtype=np.int64))
                total += 1
            parts.append(np.asarray(ids, dtype=np.int64))
            total += len(ids)
            n_docs += 1
        if need is not None and total >= need:
            break
    if n_docs == 0:
        raise _empty_error(n_texts)
    stream = torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0, dtype=torch.long)
    n_full = stream.numel() // room
    capped = False
    if n_full == 0:
        warnings.warn(
            f"the whole token stream ({stream.numel()} tokens) is shorter than max_length="
            f"{max_length}: it is kept as one sequence of "
            f"{stream.numel() + len(prefix) + len(suffix)} tokens; give more text or a smaller "
            "max_length",
            UserWarning,
            stacklevel=3,
        )
        body = [stream]
    else:
        capped = max_sequences is not None and n_full >= max_sequences
        n_full = min(n_full, max_sequences) if capped else n_full
        body = list(stream[: n_full * room].view(n_full, room))
    # The rest of a capped stream was excluded by max_sequences, not dropped by chunking.
    dropped = 0 if capped else stream.numel() - sum(b.numel() for b in body)
    pre = torch.tensor(prefix, dtype=torch.long)
    post = torch.tensor(suffix, dtype=torch.long)
    rows = [torch.cat([pre, b, post]) if prefix or suffix else b for b in body]
    return rows, dropped, prefix + suffix


def _document_rows(
    texts: Iterable[Any], tok: Any, max_length: int, max_sequences: int | None
) -> tuple[list[torch.Tensor], int | None, list[int]]:
    prefix, suffix = _special_template(tok)
    room = _content_room(max_length, prefix, suffix)
    pre = torch.tensor(prefix, dtype=torch.long)
    post = torch.tensor(suffix, dtype=torch.long)
    rows: list[torch.Tensor] = []
    n_texts = truncated = dropped = n_cut = 0

    def char_cap() -> int:
        left = _TEXT_BATCH if max_sequences is None else max_sequences - len(rows)
        return max(_MIN_BATCH_CHARS, left * room * 8)

    for batch, consumed in _text_batches(texts, char_cap):
        n_texts += consumed
        if max_sequences is not None:
            batch = batch[: max_sequences - len(rows)]
        # Only the first `room` tokens are kept: very long texts are encoded by prefix.
        encoded, cut = _encode_prefixes(tok, batch, room)
        n_cut += cut
        for ids in encoded:
            if len(ids) > room:
                truncated += 1
                dropped += len(ids) - room
            body = torch.tensor(ids[:room], dtype=torch.long)
            rows.append(torch.cat([pre, body, post]) if prefix or suffix else body)
        if max_sequences is not None and len(rows) >= max_sequences:
            break
    if not rows:
        raise _empty_error(n_texts)
    if truncated:
        how_many = f"{dropped} tokens cut" if not n_cut else "their rest left out"
        warnings.warn(
            f"{truncated} of {len(rows)} texts were longer than max_length={max_length} tokens "
            f"and were truncated ({how_many}); use chunking='stream' to keep all their tokens",
            UserWarning,
            stacklevel=3,
        )
    return rows, (None if n_cut else dropped), prefix + suffix


# ---------------------------------------------------------------------------------------------
# Tokenizer, pad id, vocabulary, output


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


def _model_path(model: Any) -> str:
    paths = _model_paths(model)
    return paths[0] if paths else ""


def _resolve_tokenizer(tokenizer: Any, model: Any, quiet: bool = False) -> Any | None:
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


def _first_int(x: Any) -> int | None:
    if isinstance(x, (list, tuple)):
        x = x[0] if x else None
    return int(x) if _is_int(x) else None


def _pad_id(tok: Any, model: Any) -> int:
    for source in (tok, _text_config(model)):
        if source is None:
            continue
        for name in ("pad_token_id", "eos_token_id"):
            value = _first_int(getattr(source, name, None))
            if value is not None and value >= 0:
                return value
    return 0


def _text_config(model: Any) -> Any:
    config = getattr(model, "config", None)
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        try:
            return get_text()
        except Exception:
            return config
    return config


def _check_vocab(real_ids: torch.Tensor, model: Any) -> None:
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


def _pad_in_vocab(pad: int, model: Any) -> int:
    vocab = _model_vocab(model)
    return 0 if vocab is not None and not 0 <= pad < vocab else pad


def _pad_rows(rows: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(r.numel() for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : r.numel()] = r
        mask[i, : r.numel()] = 1
    return ids, mask


def _decode(rows: list[torch.Tensor], tok: Any) -> list[str]:
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


def _check_token_data(data: TokenData) -> TokenData:
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
