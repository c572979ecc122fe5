"""``compile=True``: the model's blocks run through ``torch.compile`` for the audit's forward.

Each block's ``forward`` is compiled on its own (regional compilation, PyTorch's recipe for
transformers), not the whole model: the blocks of a stack share one code object, so one
compilation serves them all, and the capture's hooks stay outside the compiled code (they run
around ``forward`` in ``nn.Module.__call__``), where a graph break would cost more than they do.
What it gains, and what the first compilation costs, is ``benchmarks/forward.py``'s
``compiled_over_audit`` and ``compile_seconds`` (benchmarks/README.md).

Opt-in: the first batch waits for the compiler (seconds when its cache in the system's
temporary folder is warm, tens of seconds when cold) and needs a C++ compiler on a CPU, so it
pays on long audits. A compilation that fails leaves the pass eager with a warning
(:meth:`CompiledBlocks.undo`). The blocks get their own ``forward`` back afterwards, also on
error and Ctrl-C. The numbers move by the compiled kernels' rounding (fused element-wise work
rounds once where eager rounds at every operation): tests/capture/test_compile.py bounds it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hopaudit.errors import DataError

__all__ = ["RECOMPILE_LIMIT", "CompiledBlocks", "check_compile", "compiled_blocks"]

# transformers wraps every layer class's forward in one shared function, so each model class
# audited in a process adds a compilation to that function's cache; dynamo's default of 8 would
# silently run the ninth class eager
RECOMPILE_LIMIT = 64


def check_compile(value: Any) -> None:
    """``compile`` is True or False; a DataError otherwise (before any forward pass)."""
    if not isinstance(value, bool):
        raise DataError(f"compile must be True or False, got {value!r}")


@dataclass
class CompiledBlocks:
    """The blocks whose ``forward`` is compiled for now, and what to say of it."""

    modules: list[tuple[nn.Module, Any]] = field(default_factory=list)  # (block, its compiled)
    skipped: int = 0  # blocks whose forward something else had already replaced
    note: str | None = None  # None: compile was not asked for

    @property
    def active(self) -> bool:
        return bool(self.modules)

    def undo(self, why: str | None = None) -> None:
        """Every block back to its own ``forward``; ``why`` (a failed compilation) is noted."""
        for m, fn in self.modules:
            if m.__dict__.get("forward") is fn:
                del m.__dict__["forward"]
        self.modules = []
        if why is not None:
            self.note = f"eager: torch.compile failed ({why})"


@contextlib.contextmanager
def compiled_blocks(blocks: Iterable[nn.Module], enabled: bool) -> Iterator[CompiledBlocks]:
    """For the length of the block, each of ``blocks`` runs its forward through
    ``torch.compile(dynamic=True)`` (batch sizes and lengths vary, so no shape is baked in);
    a block whose ``forward`` is already an attribute of its own (accelerate's offload hooks
    put one there) is left eager. Yields the :class:`CompiledBlocks`; restored after."""
    state = CompiledBlocks()
    with contextlib.ExitStack() as limits:
        if enabled:
            # past the limit, an error (the capture then runs eager and says so), not a silent
            # eager run under a note that claims compiled blocks
            limits.enter_context(torch._dynamo.config.patch(**_limit_settings()))
        try:
            if enabled:
                for m in dict.fromkeys(blocks):  # a module listed twice is compiled once
                    if "forward" in m.__dict__:
                        state.skipped += 1
                        continue
                    fn = torch.compile(m.forward, dynamic=True)
                    m.__dict__["forward"] = fn
                    state.modules.append((m, fn))
                state.note = _describe(len(state.modules), state.skipped)
            yield state
        finally:
            state.undo()


def _limit_settings() -> dict[str, Any]:
    """Dynamo's recompile limit at ``RECOMPILE_LIMIT`` and its hit an error, under the names
    this torch knows (``cache_size_limit`` and ``fail_on_cache_limit_hit`` before 2.6)."""
    config = torch._dynamo.config
    out: dict[str, Any] = {}
    for names, value in (
        (("recompile_limit", "cache_size_limit"), RECOMPILE_LIMIT),
        (("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit"), True),
    ):
        name = next((n for n in names if hasattr(config, n)), None)
        if name is not None:
            out[name] = value
    return out


def _describe(compiled: int, skipped: int) -> str:
    out = f"torch.compile: {compiled} block{'s' * (compiled != 1)}"
    if skipped:
        out += f" ({skipped} left eager: their forward was already wrapped, as by accelerate)"
    return out
