"""What did the user give? Any data form (texts, a path, a dataset, token ids, batches) sorted
into texts to tokenize or rows of token ids, with a line saying where they came from."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hopaudit.data.rows import batch_rows, mapping_rows, sequence_rows, shape_source, tensor_rows
from hopaudit.data.texts import TEXT_BATCH
from hopaudit.errors import DataError

__all__ = ["TEXT_NOT_PATH_CHARS", "classify"]

_ACCEPTED = (
    "a list of strings, a path to a text file or to a directory of .txt files, a "
    "datasets.Dataset with a text column, a LongTensor of token ids (batch, seq), a DataLoader "
    "(or iterable) of dicts with input_ids, or a TokenData"
)


def classify(data: Any) -> tuple[str, Any, str]:
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
            return "rows", sequence_rows(values), f"{len(values)} rows of token ids (Series)"
        raise DataError("a pandas Series must hold strings (texts) or lists of token ids")
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return "rows", iter(tensor_rows(data, "the token id tensor")), shape_source(data)
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
            return "rows", batch_rows(data, 0), "a batch of input_ids"
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
            return "rows", mapping_rows(rest), f"{n}batches of input_ids"
        if isinstance(first.get("text"), str):
            return "texts", (_text_of(item) for item in rest), f"{n}records with text"
        raise DataError(
            "the data yields dicts without 'input_ids' or 'text' "
            f"(keys: {sorted(map(str, first))[:8]}); tokenize them or pick the text field"
        )
    if isinstance(first, (torch.Tensor, np.ndarray, list, tuple)):
        return "rows", sequence_rows(rest), f"{n}rows of token ids"
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
        ids = list(batch_rows(batch, i))
        labels = list(batch_rows({"input_ids": batch["labels"]}, i))
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
        batches = ds.iter(batch_size=TEXT_BATCH)
        return "rows", mapping_rows(batches), f"{name} input_ids"

    def dtype_of(c: str) -> list:
        return [getattr(features.get(c), "dtype", None)]

    col = _text_column(columns, dtype_of)
    texts = (t for batch in ds.iter(batch_size=TEXT_BATCH) for t in batch[col])
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
        return "rows", mapping_rows(rest), f"{name} input_ids (columns read from its rows)"
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
