"""Texts -> rows of token ids: tokenized in batches with the tokenizer's own special tokens,
then streamed into full sequences or cut one per document (prepare.py says how, and why)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from hopaudit.errors import DataError

__all__ = ["TEXT_BATCH", "document_rows", "stream_rows"]

TEXT_BATCH = 1000  # texts per tokenizer call: big enough for the Rust batch path
_BATCH_CHARS = 2_000_000  # characters per tokenizer call at most (one huge text goes alone)
_MIN_BATCH_CHARS = 20_000
_CHARS_PER_TOKEN = 16  # a prefix of want * 16 characters holds more than `want` tokens
_MARGIN = 16  # tokens past the needed ones that a prefix must give to be trusted


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

    A batch holds at most ``TEXT_BATCH`` texts and about ``char_cap()`` characters (asked
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
        if len(batch) >= TEXT_BATCH or chars >= cap:
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


def stream_rows(
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


def document_rows(
    texts: Iterable[Any], tok: Any, max_length: int, max_sequences: int | None
) -> tuple[list[torch.Tensor], int | None, list[int]]:
    prefix, suffix = _special_template(tok)
    room = _content_room(max_length, prefix, suffix)
    pre = torch.tensor(prefix, dtype=torch.long)
    post = torch.tensor(suffix, dtype=torch.long)
    rows: list[torch.Tensor] = []
    n_texts = truncated = dropped = n_cut = 0

    def char_cap() -> int:
        left = TEXT_BATCH if max_sequences is None else max_sequences - len(rows)
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
