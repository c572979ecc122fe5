"""hopaudit: audit what a transformer language model has memorized.

``hopaudit.audit(model, data)`` hooks every transformer block, indexes the stored patterns of
each layer, and measures them against the associative-memory theory in docs/theory.md.
umap (slow to import) is imported only when a UMAP is made.
"""

from __future__ import annotations

# The functions are bound after their modules are imported, so ``hopaudit.audit`` and
# ``hopaudit.measure`` are the functions, not the submodules of the same names.
from . import geometry, theory, zoo
from ._version import __version__
from .api import audit
from .blocks import find_blocks, find_stacks
from .catalog import catalog
from .data import prepare_data
from .errors import (
    CaptureError,
    DataError,
    FormatError,
    HopauditError,
    ModelError,
    SearchError,
    ZooError,
)
from .extraction import ExtractionResult, extraction
from .measure import LayerReport, measure
from .persist import load
from .result import Audit, Embedding

# Imported on first use: the training hooks pull in transformers' Trainer, the comparison
# views the widget code; neither is needed to audit one model.
_LAZY = {
    "AuditCallback": "hopaudit.training",
    "Auditor": "hopaudit.training",
    "audit_checkpoints": "hopaudit.training",
    "compare": "hopaudit.comparison",
    "timeline": "hopaudit.comparison",
    "Comparison": "hopaudit.comparison",
    "Timeline": "hopaudit.comparison",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hopaudit' has no attribute {name!r}")


__all__ = [
    *_LAZY,
    "Audit",
    "CaptureError",
    "DataError",
    "Embedding",
    "ExtractionResult",
    "FormatError",
    "HopauditError",
    "LayerReport",
    "ModelError",
    "SearchError",
    "ZooError",
    "__version__",
    "audit",
    "extraction",
    "catalog",
    "find_blocks",
    "find_stacks",
    "geometry",
    "load",
    "measure",
    "prepare_data",
    "theory",
    "zoo",
]
