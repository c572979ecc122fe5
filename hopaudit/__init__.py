"""hopaudit: audit what a transformer language model has memorized.

``hopaudit.audit(model, data)`` hooks every transformer block, indexes the stored patterns of
each layer, and measures them against the associative-memory theory in docs/theory.md.
``import hopaudit`` imports nothing heavy: torch, transformers, umap and Ray are imported when
a name that needs them is first used, so ``hopaudit --version`` answers at once.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from hopaudit import _moved
from hopaudit._version import __version__

#: public name -> the module that defines it (imported on first use)
_LAZY = {
    "audit": "hopaudit.api",
    "find_blocks": "hopaudit.model.blocks",
    "find_stacks": "hopaudit.model.blocks",
    "catalog": "hopaudit.storage.catalog",
    "prepare_data": "hopaudit.data.prepare",
    "ExtractionResult": "hopaudit.evidence.extract",
    "extraction": "hopaudit.evidence.extract",
    "LayerReport": "hopaudit.layer.measuring",
    "measure": "hopaudit.layer.measuring",
    "load": "hopaudit.storage.load",
    "Audit": "hopaudit.results.audit",
    "Embedding": "hopaudit.results.audit",
    "AuditCallback": "hopaudit.training.callback",
    "Auditor": "hopaudit.training.callback",
    "audit_checkpoints": "hopaudit.training.callback",
    "compare": "hopaudit.results.comparison",
    "timeline": "hopaudit.results.comparison",
    "Comparison": "hopaudit.results.comparison",
    "Timeline": "hopaudit.results.comparison",
    "CaptureError": "hopaudit.errors",
    "DataError": "hopaudit.errors",
    "FormatError": "hopaudit.errors",
    "HopauditError": "hopaudit.errors",
    "ModelError": "hopaudit.errors",
    "SearchError": "hopaudit.errors",
    "ZooError": "hopaudit.errors",
}
_SUBMODULES = ("geometry", "theory", "zoo")


class _Package(types.ModuleType):
    """``hopaudit.measure`` (and ``catalog``, ``extraction``) stay the functions: importing an
    old module path of the same name must not replace them with the module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
_moved.install()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"hopaudit.{name}")
    else:
        raise AttributeError(f"module 'hopaudit' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [*sorted(_LAZY), *_SUBMODULES, "__version__"]
