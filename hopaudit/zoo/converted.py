"""A verified float32 copy of the embedded SmolLM2, converted from its GGUF file once.

transformers loads a GGUF file by parsing its metadata (49 152 token strings) and
dequantizing every tensor in Python, each time. The same weights, config and tokenizer saved
with ``save_pretrained`` (safetensors) load several times faster (``benchmarks/load.py``), bit
for bit the same model (tests/zoo/test_converted.py). The copy sits beside
the GGUF file in a folder named for the source's digest and the transformers and gguf
releases that converted it (another release converts again), and a manifest lists each
file's size and BLAKE3, checked before transformers reads a byte of it. It is written into a
temporary sibling and renamed into place, under the cache folder's lock; a copy that fails
its check is removed (it is hopaudit's own) and converted again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "CONVERTED_PREFIX",
    "converted_folder",
    "read_converted",
    "remove_stale",
    "write_converted",
]

CONVERTED_PREFIX = "float32-"
MANIFEST = "hopaudit-converted.json"
MANIFEST_MAX_BYTES = 1 << 20  # a few lines of JSON: anything bigger is not ours


def converted_folder(gguf: Path, source_sha256: str) -> Path:
    """Where the float32 conversion of ``gguf`` by this transformers and gguf goes."""
    import gguf as gguf_package
    import transformers

    tag = f"{source_sha256[:16]}-transformers{transformers.__version__}"
    tag += f"-gguf{getattr(gguf_package, '__version__', _version('gguf'))}"
    return gguf.parent / f"{CONVERTED_PREFIX}{tag}"


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _problem(folder: Path, source_sha256: str) -> tuple[str | None, dict]:
    """(why ``folder`` is not a complete, intact copy or None, the manifest's record)."""
    from hopaudit.storage.manifest import hash_all

    manifest = folder / MANIFEST
    record: dict = {}
    try:
        if manifest.stat().st_size > MANIFEST_MAX_BYTES:
            return f"{MANIFEST} is larger than {MANIFEST_MAX_BYTES} bytes", record
        record = json.loads(manifest.read_text(encoding="utf-8"))
        files = record["files"]
        if record.get("source_sha256") != source_sha256 or not files:
            return "its manifest names another source", record
        if not isinstance(record["architectures"], (list, type(None))):
            return "its manifest's architectures is neither a list nor null", record
        names = sorted(files)
        for name in names:
            if Path(name).name != name:
                return f"its manifest names {name!r}, not a file of the folder", record
            size = (folder / name).stat().st_size
            if size != int(files[name]["size"]):
                return f"{name} has {size} bytes, its manifest says {files[name]['size']}", record
        digests = hash_all([folder / n for n in names], "blake3")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}", record
    for name, digest in zip(names, digests, strict=True):
        if digest != files[name]["blake3"]:
            return f"{name}'s BLAKE3 is not its manifest's", record
    return None, record


def read_converted(folder: Path, source_sha256: str) -> tuple[Any, Any] | None:
    """(model, tokenizer) from a checked copy, or None when there is none (a damaged copy is
    removed, with a warning, so that the caller converts again)."""
    if not folder.is_dir():
        return None
    problem, record = _problem(folder, source_sha256)
    if problem is not None:
        warnings.warn(
            f"the converted copy {folder} is damaged ({problem}); converting again",
            RuntimeWarning,
            stacklevel=3,
        )
        shutil.rmtree(folder, ignore_errors=True)
        return None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_bars():
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    # save_pretrained names the class in the config; the GGUF load did not
    model.config.architectures = record["architectures"]
    return model, tokenizer


def write_converted(model: Any, tokenizer: Any, folder: Path, source_sha256: str) -> bool:
    """Save ``model`` and ``tokenizer`` as ``folder`` (a temporary sibling, then a rename), with
    the manifest written last. False, with a warning, when the cache cannot take it: the
    caller keeps the model it has and converts again next time."""
    from hopaudit.storage.manifest import hash_all

    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        architectures = model.config.architectures
        try:
            with _quiet_bars():
                model.save_pretrained(str(tmp), safe_serialization=True)
        finally:
            model.config.architectures = architectures  # save_pretrained sets it
        tokenizer.save_pretrained(str(tmp))
        names = sorted(p.name for p in tmp.iterdir() if p.is_file())
        digests = hash_all([tmp / n for n in names], "blake3")
        record = {
            "source_sha256": source_sha256,
            "architectures": architectures,
            "files": {
                n: {"size": (tmp / n).stat().st_size, "blake3": d}
                for n, d in zip(names, digests, strict=True)
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(record, indent=1), encoding="utf-8")
        if folder.exists():  # another process converted it first
            return True
        os.replace(tmp, folder)
        tmp = None
        return True
    except OSError as exc:
        warnings.warn(
            f"cannot keep a converted copy of SmolLM2 in {folder.parent} ({exc}): the next "
            "load converts the GGUF file again",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _quiet_bars() -> Iterator[None]:
    """No transformers bar for the length of the block (the copy loads and saves too fast for a
    bar to be more than a flash), the setting put back after."""
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def remove_stale(parent: Path, keep: Path) -> None:
    """Delete the copies other releases converted, and temporary folders a killed write left
    (call it under the cache folder's lock: only hopaudit's own names are touched)."""
    for path in parent.iterdir():
        ours = path.name.startswith(CONVERTED_PREFIX) or path.name.startswith(
            f".{CONVERTED_PREFIX}"
        )
        if ours and path.is_dir() and not path.is_symlink() and path != keep:
            shutil.rmtree(path, ignore_errors=True)
