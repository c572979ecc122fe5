"""Turn what a user passes as MODEL (object, local directory, GGUF file, hub id) into a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from hopaudit.errors import ModelError


def load_model(spec: Any, *, tokenizer: Any = None) -> tuple[nn.Module, Any]:
    """Return ``(model, tokenizer)`` for a model object or a path.

    A model object passes through (its tokenizer is found later, beside it). A string is a
    local directory saved with ``save_pretrained``, a ``.gguf`` file, the name ``smollm2`` or
    ``minilm`` (the embedded models), or a hub id (only where the user has a network).
    Causal LMs are loaded with their head so the audit can report the cross-entropy, and so
    are encoder-decoders (``AutoModelForSeq2SeqLM``, ``AutoModelForSpeechSeq2Seq``); other
    models fall back to the bare ``AutoModel``. An image or audio model's processor, when one
    is saved beside it, is attached as ``model.hopaudit_processor``.
    """
    if isinstance(spec, nn.Module):
        return spec, tokenizer
    if not isinstance(spec, (str, Path)):
        raise ModelError(
            f"expected a torch model or a path to one, got {type(spec).__name__}; "
            "pass a transformers model, a local model directory, or a .gguf file"
        )
    name = str(spec)
    if name in ("smollm2", "minilm"):
        from hopaudit import zoo

        return getattr(zoo, name)()

    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSpeechSeq2Seq,
        AutoTokenizer,
    )

    path = Path(name).expanduser()
    kwargs: dict[str, Any] = {}
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        kwargs = {"gguf_file": path.name}
        source = str(path.parent)
    elif path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelError(
                f"{path} is not a model directory (no config.json); "
                "save one with model.save_pretrained(dir)"
            )
        source = str(path)
        kwargs = {"local_files_only": True}
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model path does not exist: {path}")
    else:
        source = name  # a hub id: works only where the user has a network

    errors = []
    classes = [AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSpeechSeq2Seq, AutoModel]
    if _is_encoder_decoder(source, kwargs):  # else BART loads as BartForCausalLM, decoder only
        classes = classes[1:]
    for cls in classes:
        try:
            model = cls.from_pretrained(source, **kwargs)
            break
        except (OSError, ValueError, KeyError) as exc:
            errors.append(f"{cls.__name__}: {exc}".splitlines()[0])
    else:
        raise ModelError(f"cannot load a model from {name!r}: " + "; ".join(errors))
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        except (OSError, ValueError, KeyError):
            tokenizer = None
    if getattr(model, "main_input_name", "input_ids") != "input_ids":
        _attach_processor(model, source, kwargs)
    return model, tokenizer


def _is_encoder_decoder(source: str, kwargs: dict[str, Any]) -> bool:
    from transformers import AutoConfig

    try:
        return bool(AutoConfig.from_pretrained(source, **kwargs).is_encoder_decoder)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _attach_processor(model: nn.Module, source: str, kwargs: dict[str, Any]) -> None:
    """Images and audio need the model's processor: load it from beside the model, if saved."""
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoProcessor

    for cls in (AutoImageProcessor, AutoFeatureExtractor, AutoProcessor):
        try:
            model.hopaudit_processor = cls.from_pretrained(source, **kwargs)
            return
        except (OSError, ValueError, KeyError, TypeError):
            continue
