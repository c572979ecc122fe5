"""The precision of the audit's forward pass: the model as it is, or bfloat16 autocast.

Most of an audit's time is the forward pass. Where the hardware multiplies bfloat16 natively
(CUDA GPUs with ``torch.cuda.is_bf16_supported()``; CPUs with AVX512-BF16 or AMX), autocast
runs the matrix products in bfloat16 while norms, softmax and the residual stream stay in
float32: the same recipe as mixed-precision training, and the precision SmolLM2 and most
recent models were released in.

What it gains in speed and costs in accuracy (cross-entropy, stored activations, distances)
is measured by ``benchmarks/precision.py``; the numbers are in benchmarks/README.md.

``autocast="auto"`` (the default) uses bfloat16 where it is native and the model is float32,
and leaves every other model as it is; ``"bfloat16"`` asks for it anyway (slow where it is
emulated); ``"off"`` runs the model in its own dtype. The choice made is recorded in the
audit's summary (``compute_dtype``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from hopaudit.cpus import cpu_bf16_native
from hopaudit.errors import DataError

__all__ = [
    "AUTOCAST_MODES",
    "autocast_context",
    "cast_weights_once",
    "check_autocast",
    "compute_dtype",
    "cpu_description",
    "cpu_lines",
    "describe",
    "native_bf16",
    "weights_to_cast",
]

AUTOCAST_MODES = ("auto", "bfloat16", "off")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware (not emulated)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_bf16_native()
    return False


def cpu_description() -> dict[str, object]:
    """Which CPU this is, for benchmark lines: its model name, whether torch multiplies
    bfloat16 natively on it, the instruction sets that decide that, and the usable CPUs."""
    from pathlib import Path

    from hopaudit.cpus import usable_cpus

    name, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == "unknown":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return {
        "cpu": name,
        "native_bf16": native_bf16(torch.device("cpu")),
        "cpu_flags": ",".join(f for f in wanted if f in flags) or "unknown",
        "cpus_usable": usable_cpus(),
    }


def cpu_lines() -> list[str]:
    """:func:`cpu_description` as the ``key=value`` lines a benchmark prints first (the CPU's
    name quoted), so that every measured line says which machine it came from."""
    return [f"{k}={v!r}" if k == "cpu" else f"{k}={v}" for k, v in cpu_description().items()]


def _param_dtype(model: nn.Module) -> torch.dtype | None:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def check_autocast(autocast: Any) -> None:
    """Raise a clear :class:`DataError` for anything but one of ``AUTOCAST_MODES``."""
    if autocast not in AUTOCAST_MODES:
        raise DataError(
            f"autocast must be one of {AUTOCAST_MODES}, got {autocast!r}: 'auto' uses bfloat16 "
            "where the hardware has it and the model is float32, 'off' runs the model as it is"
        )


def compute_dtype(model: nn.Module, device: torch.device, autocast: str) -> torch.dtype | None:
    """The autocast dtype for the forward pass, or None to run the model as it is."""
    check_autocast(autocast)
    if autocast == "off" or device.type not in ("cpu", "cuda"):
        return None
    if autocast == "bfloat16":
        return torch.bfloat16
    if _param_dtype(model) == torch.float32 and native_bf16(device):
        return torch.bfloat16
    return None


def autocast_context(dtype: torch.dtype | None, device: torch.device) -> Any:
    """``torch.autocast`` on ``device`` for ``dtype``; a no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


#: Modules whose forward is one of autocast's lower-precision products (linear, addmm) on their
#: ``weight`` and ``bias``: ``torch.nn.Linear`` and transformers' ``Conv1D`` (GPT-2's).
_PRODUCT_MODULES = ("Linear", "Conv1D")


def _cast_candidates(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Parameter]]:
    for module in model.modules():
        if type(module).__name__ not in _PRODUCT_MODULES or hasattr(module, "_hf_hook"):
            continue  # accelerate's hooks move offloaded weights in and out at each call
        for name in ("weight", "bias"):
            p = module._parameters.get(name)
            if p is not None and p.dtype == torch.float32 and p.device.type != "meta":
                yield module, name, p


def _free_bytes(device: torch.device) -> int | None:
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        if device.type == "cpu":
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
    except (OSError, RuntimeError, ValueError, IndexError):
        return None
    return None


@contextlib.contextmanager
def cast_weights_once(
    model: nn.Module,
    dtype: torch.dtype | None,
    *,
    budget: int | None = None,
    first: Iterable[nn.Module | None] = (),
) -> Iterator[int]:
    """For the length of the block, the float32 weights and biases of ``model``'s matrix
    products held in ``dtype``, restored after (also on error and Ctrl-C); yields how many.

    Under autocast every call casts its float32 weight to ``dtype`` again (autocast's cache
    keeps only casts of tensors that require grad, and none under ``inference_mode``), a large
    share of a CPU forward (benchmarks/README.md, forward.py). The cast is the same rounding,
    so for a model that uses these weights only in its products the results are bit for bit
    those of autocast alone, whichever weights are cast here. Which are
    (:func:`weights_to_cast`): the modules in ``first`` (the LM head, which the scores call
    many times a batch), then the rest in the model's order while the copies take at most half
    of the memory still free on their device and ``budget`` bytes (None: no limit); the others
    are left to autocast, one cast a call. Does nothing for ``dtype=None``.
    """
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    found = [] if dtype is None else weights_to_cast(model, dtype, budget, first, _half_free)
    try:
        copies: dict[int, nn.Parameter] = {}  # a tied weight is cast once
        for module, name, p in found:
            if id(p) not in copies:
                copies[id(p)] = nn.Parameter(p.detach().to(dtype), requires_grad=False)
            swapped.append((module, name, p))
            module._parameters[name] = copies[id(p)]
        yield len(swapped)
    finally:
        for module, name, p in reversed(swapped):
            module._parameters[name] = p


def weights_to_cast(
    model: nn.Module,
    dtype: torch.dtype,
    budget: int | None = None,
    first: Iterable[nn.Module | None] = (),
    room: Callable[[torch.device], int | None] | None = None,
) -> list[tuple[nn.Module, str, nn.Parameter]]:
    """The (module, name, parameter) :func:`cast_weights_once` casts: ``first``'s, then the
    model's in order, each module's weight and bias together while their copies (a tied weight
    counted once) fit: at most ``room(device)`` bytes on each device (None: no limit), and
    ``budget`` bytes in all, which ``first``'s count towards but need not fit. A module that
    does not fit is skipped and a later, smaller one may still be cast."""
    found = list(_cast_candidates(model))
    front = {id(m) for m in first if m is not None}
    ordered = [c for c in found if id(c[0]) in front] + [c for c in found if id(c[0]) not in front]
    by_module: dict[int, list[tuple[nn.Module, str, nn.Parameter]]] = {}
    for c in ordered:
        by_module.setdefault(id(c[0]), []).append(c)
    limits: dict[torch.device, int | None] = {}
    used: dict[torch.device, int] = {}
    chosen: list[tuple[nn.Module, str, nn.Parameter]] = []
    counted: set[int] = set()
    total = 0
    for key, entries in by_module.items():
        fresh = {id(p): p for _, _, p in entries if id(p) not in counted}.values()
        extra = sum(p.numel() * dtype.itemsize for p in fresh)
        device = entries[0][2].device
        if device not in limits:
            limits[device] = None if room is None else room(device)
        limit = limits[device]
        if limit is not None and used.get(device, 0) + extra > limit:
            continue  # no copies that could exhaust the memory: autocast casts these at each call
        if key not in front and budget is not None and total + extra > budget:
            continue
        chosen += entries
        counted.update(id(p) for p in fresh)
        used[device] = used.get(device, 0) + extra
        total += extra
    return chosen


def _half_free(device: torch.device) -> int | None:
    """Half of the memory still free on ``device`` (/proc/meminfo's MemAvailable, or the CUDA
    device's free memory); None where that cannot be read."""
    free = _free_bytes(device)
    return None if free is None else free // 2


def describe(dtype: torch.dtype | None, model: nn.Module, cast: int | None = None) -> str:
    """What the summary shows: ``"bfloat16 autocast"`` or the model's own dtype; with ``cast``
    (how many weights :func:`cast_weights_once` cast), which of the weights were cast once:
    ``"bfloat16 autocast, weights cast once"``, or ``", 3 of 9 weights cast once (memory)"``
    where the memory allowed no more."""
    if dtype is not None:
        what = f"{str(dtype).removeprefix('torch.')} autocast"
        total = sum(1 for _ in _cast_candidates(model)) if cast else 0
        if cast and cast >= total:
            return f"{what}, weights cast once"
        if cast:
            return f"{what}, {cast} of {total} weights cast once (memory)"
        return what
    own = _param_dtype(model)
    return "unknown" if own is None else str(own).removeprefix("torch.")
