"""Images, audio and other non-text inputs -> :class:`~hopaudit.data.InputData` for encoders.

A model whose ``main_input_name`` is not ``input_ids`` (ViT, CLIP vision, DINOv2:
``pixel_values``; Whisper: ``input_features``; wav2vec2, HuBERT: ``input_values``) takes:

- the tensor itself (``(samples, ...)`` floats), or a dict of such tensors;
- a list of PIL images or of arrays (images ``(H, W, C)``, audio clips 1-D) with
  ``processor=`` (an image processor or a feature extractor / processor);
- a folder of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif``, ``.webp``) with
  ``processor=``;
- any iterable (a DataLoader) of dicts of tensors whose keys the model's forward accepts;
  a ``labels`` key holds decoder targets (Whisper), not a forward input.

Samples are concatenated along the first dimension; batches must agree on the other ones.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hopaudit.data.types import InputData
from hopaudit.errors import DataError

FEATURE_KEYS = ("pixel_values", "input_features", "input_values")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
INPUT_KIND = {
    "pixel_values": "images",
    "input_features": "audio features (log-mel spectrograms)",
    "input_values": "raw audio",
    "input_ids": "token ids (text)",
}


def main_input(model: Any) -> str:
    name = getattr(model, "main_input_name", None)
    return name if isinstance(name, str) else "input_ids"


def _is_image(x: Any) -> bool:
    return type(x).__module__.startswith("PIL.") and hasattr(x, "convert")


def _is_float_array(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return x.is_floating_point()
    return isinstance(x, np.ndarray) and x.dtype.kind == "f"


def prepare_inputs(
    data: Any, *, model: Any = None, processor: Any = None, max_sequences: int | None = None
) -> tuple[Any, Any]:
    """``(InputData, data)`` when ``data`` is non-text, ``(None, data)`` when it is for the
    text path (``data`` is handed back, replayable when a one-shot iterable was peeked at).
    Raises :class:`DataError` when data and model disagree: images for a text model, texts
    for a vision model, images or audio without a processor."""

    main = main_input(model) if model is not None else "input_ids"
    if processor is None:  # loaded beside the model by hopaudit.loading
        processor = getattr(model, "hopaudit_processor", None)
    if main == "input_ids" and isinstance(data, (torch.Tensor, np.ndarray)):
        return None, data  # the text path says what is wrong with a float tensor
    try:
        found = _read(data, processor, max_sequences)
    except _Replay as replay:
        data, found = replay.items, None
    if found is None:
        if main != "input_ids" and model is not None:
            raise DataError(
                f"{type(model).__name__} takes {main} ({INPUT_KIND.get(main, main)}), but the data "
                f"are texts or token ids ({type(data).__name__}); pass {main} tensors, or "
                f"{'images' if main == 'pixel_values' else 'audio arrays'} with processor="
                "AutoProcessor.from_pretrained(...)"
            )
        return None, data
    inputs, labels, texts, source = found
    if "_main" in inputs:
        inputs = {main: inputs.pop("_main")}
    if model is not None and main == "input_ids" and "input_ids" not in inputs:
        given = [k for k in inputs if k != "attention_mask"]
        raise DataError(
            f"the data hold {', '.join(given)} "
            f"({INPUT_KIND.get(given[0], 'non-text inputs')}), but "
            f"{type(model).__name__} is a text model that takes input_ids; audit a vision or "
            "audio model with them, or pass texts or token ids"
        )
    n = next(iter(inputs.values())).shape[0]
    if max_sequences is not None and n > max_sequences:
        inputs = {k: v[:max_sequences] for k, v in inputs.items()}
        labels = None if labels is None else labels[:max_sequences]
        texts = texts[:max_sequences]
    return InputData(inputs, texts, source, labels), data


def _read(data: Any, processor: Any, max_sequences: int | None) -> tuple | None:
    """(inputs, labels, texts, source) for non-text data; None for texts and token ids."""
    if isinstance(data, (str, Path)):
        path = Path(data).expanduser() if isinstance(data, Path) or len(data) < 4096 else None
        try:
            is_dir = path is not None and path.is_dir()
        except OSError:
            is_dir = False
        if not is_dir:
            return None
        images = sorted(
            p
            for p in path.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not images or any(path.rglob("*.txt")):
            return None
        if max_sequences is not None:
            images = images[:max_sequences]
        loaded = [_open_image(p) for p in images]
        inputs = _process(loaded, processor, "a folder of images")
        names = [str(p.relative_to(path)) for p in images]
        return inputs, None, names, f"{len(images)} images in {path}"
    if isinstance(data, (torch.Tensor, np.ndarray)):
        if not _is_float_array(data) or data.ndim < 2:
            return None
        t = torch.as_tensor(data)
        return {"_main": t}, None, _labels_of("sample", t.shape[0]), f"tensor {tuple(t.shape)}"
    if isinstance(data, Mapping):
        if not any(k in data for k in FEATURE_KEYS):
            return None
        return _from_batches([data], "a dict of tensors")
    if isinstance(data, (bytes, bytearray)) or not isinstance(data, Iterable):
        return None
    if isinstance(data, (list, tuple)):
        if not data:
            return None
        first = data[0]
        if _is_image(first) or (_is_float_array(first) and np.ndim(first) in (1, 3)):
            items = list(data[:max_sequences] if max_sequences is not None else data)
            kind = "images" if _is_image(first) or np.ndim(first) == 3 else "audio clips"
            inputs = _process(items, processor, f"a list of {kind}")
            noun = "image" if kind == "images" else "clip"
            return inputs, None, _labels_of(noun, len(items)), f"{len(items)} {kind}"
        if isinstance(first, Mapping) and any(k in first for k in FEATURE_KEYS):
            return _from_batches(data, f"{len(data)} dicts of tensors")
        return None
    if _is_text_like_iterable(data):
        return None
    items = iter(data)
    try:
        first = next(items)
    except StopIteration:
        return None
    rest = itertools.chain([first], items)
    if isinstance(first, Mapping) and any(k in first for k in FEATURE_KEYS):
        return _from_batches(rest, f"batches of {type(data).__name__}")
    # not ours: hand the items back to the text path through a replayable wrapper
    raise _Replay(rest)


class _Replay(Exception):
    """Raised when a one-shot iterable was read for a peek: carries the items back."""

    def __init__(self, items: Iterable) -> None:
        super().__init__("replay")
        self.items = items


def _is_text_like_iterable(data: Any) -> bool:
    module = type(data).__module__ or ""
    return module.startswith(("datasets", "pandas")) or type(data).__name__ == "DataFrame"


def _labels_of(noun: str, n: int) -> list[str]:
    return [f"{noun} {i}" for i in range(n)]


def _open_image(path: Path) -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading images needs Pillow: pip install pillow") from None
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as e:
        raise DataError(f"{str(path)!r} is not a readable image ({e})") from None


def _process(items: list, processor: Any, what: str) -> dict[str, torch.Tensor]:
    """Run ``processor`` over images or audio clips; dict of tensors with a batch dimension."""
    if processor is None:
        raise DataError(
            f"the data are {what}; pass processor= (e.g. AutoImageProcessor.from_pretrained("
            "...) for images, AutoFeatureExtractor / AutoProcessor for audio) to turn them "
            "into model inputs, or pass the tensors (pixel_values, input_features, "
            "input_values) yourself"
        )
    images = _is_image(items[0]) or np.ndim(items[0]) == 3
    arrays = items if images else [np.asarray(x, dtype=np.float32) for x in items]
    try:
        if images:
            out = processor(images=arrays, return_tensors="pt")
        else:
            kwargs: dict[str, Any] = {"return_tensors": "pt"}
            rate = getattr(processor, "sampling_rate", None)
            rate = rate or getattr(
                getattr(processor, "feature_extractor", None), "sampling_rate", None
            )
            if rate is not None:
                kwargs["sampling_rate"] = rate
            try:
                out = processor(arrays, **kwargs)
            except (ValueError, RuntimeError):  # clips of several lengths: pad to the longest
                out = processor(arrays, padding=True, **kwargs)
    except DataError:
        raise
    except Exception as e:
        raise DataError(
            f"the processor ({type(processor).__name__}) failed on {what}: {type(e).__name__}: {e}"
        ) from None
    inputs = {k: v for k, v in dict(out).items() if isinstance(v, torch.Tensor) and v.ndim >= 1}
    if not any(k in inputs for k in FEATURE_KEYS):
        raise DataError(
            f"the processor ({type(processor).__name__}) gave {sorted(inputs)}, none of "
            f"{FEATURE_KEYS}; pass the image or audio processor that belongs to the model"
        )
    return inputs


def _from_batches(batches: Iterable, what: str) -> tuple:
    """Concatenate dicts of tensors along the sample dimension; ``labels`` kept apart."""
    parts: dict[str, list[torch.Tensor]] = {}
    labels: list[torch.Tensor] = []
    for i, batch in enumerate(batches):
        if not isinstance(batch, Mapping):
            raise DataError(f"batch {i} is a {type(batch).__name__}, not a dict of tensors")
        for key, value in batch.items():
            t = value if isinstance(value, torch.Tensor) else None
            if t is None and isinstance(value, np.ndarray):
                t = torch.from_numpy(value)
            if t is None:
                continue  # strings, file names: not model inputs
            if key == "labels":
                labels.append(t.long() if t.ndim == 2 else t.long()[None])
                continue
            parts.setdefault(key, []).append(t)
    if not parts:
        raise DataError(f"{what} hold no tensors")
    inputs: dict[str, torch.Tensor] = {}
    for key, ts in parts.items():
        ts = [t if t.ndim > 1 or len(ts) == 1 else t[None] for t in ts]
        if len({tuple(t.shape[1:]) for t in ts}) > 1:
            raise DataError(
                f"the batches' {key} differ in shape ({sorted({tuple(t.shape) for t in ts})}); "
                "pad every batch to one length (e.g. processor(..., padding='max_length'))"
            )
        inputs[key] = torch.cat(ts)
    n = {k: v.shape[0] for k, v in inputs.items()}
    if len(set(n.values())) > 1:
        raise DataError(f"the inputs have different numbers of samples: {n}")
    label_t = None
    if labels:
        width = max(t.shape[1] for t in labels)
        label_t = torch.cat(
            [torch.nn.functional.pad(t, (0, width - t.shape[1]), value=-100) for t in labels]
        )
        if label_t.shape[0] != next(iter(n.values())):
            raise DataError(
                f"{label_t.shape[0]} rows of labels for {next(iter(n.values()))} samples"
            )
    count = next(iter(n.values()))
    return inputs, label_t, _labels_of("sample", count), what
