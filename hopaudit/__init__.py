"""hopaudit: audit what a transformer language model has memorized.

``hopaudit.audit(model, data)`` hooks every transformer block, indexes the stored patterns of
each layer, and measures them against the associative-memory theory in docs/theory.md.
Attributes are imported on first use, so ``import hopaudit`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "audit": "hopaudit.api",
    "Audit": "hopaudit.result",
    "Embedding": "hopaudit.result",
    "load": "hopaudit.persist",
    "measure": "hopaudit.measure",
    "LayerReport": "hopaudit.measure",
    "find_blocks": "hopaudit.blocks",
    "prepare_data": "hopaudit.data",
    "HopauditError": "hopaudit.errors",
    "DataError": "hopaudit.errors",
    "ModelError": "hopaudit.errors",
    "CaptureError": "hopaudit.errors",
    "SearchError": "hopaudit.errors",
    "ZooError": "hopaudit.errors",
    "FormatError": "hopaudit.errors",
}
_SUBMODULES = ("zoo", "theory", "geometry")

__all__ = [*_EXPORTS, *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"hopaudit.{name}")
    raise AttributeError(f"module 'hopaudit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
