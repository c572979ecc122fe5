"""The module paths of hopaudit 0.x before its subpackages, kept for one release.

``import hopaudit.persist`` still works: a meta-path finder hands back the module at its new
path (``hopaudit.storage.persist``) with a :class:`DeprecationWarning` naming it, so both
names are one module object (a monkeypatch through either reaches both).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any

#: old path -> new path, relative to ``hopaudit``
MOVED: dict[str, str] = {
    "inputs": "data.inputs",
    "blocks": "model.blocks",
    "loading": "model.loading",
    "precision": "model.precision",
    "store": "capture.store",
    "hugepages": "search.hugepages",
    "measure": "layer.measuring",
    "embedding": "layer.embedding",
    "layerfiles": "layer.files",
    "scores": "evidence.scores",
    "membership": "evidence.membership",
    "extraction": "evidence.extract",
    "ray_engine": "engines.ray",
    "memory": "engines.memory",
    "result": "results.audit",
    "comparison": "results.comparison",
    "metadata": "results.metadata",
    "persist": "storage.persist",
    "catalog": "storage.catalog",
    "atomic": "storage.atomic",
    "view": "views.protocol",
    "widget": "views.widget",
    "snapshot": "views.snapshot",
    "report": "views.report",
    "schema": "views.schema",
    "loggers": "training.loggers",
    "tinygpt": "zoo.tinygpt",
}


class _Alias:
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.target}; the old path goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """The module was executed at its new path."""


class MovedFinder:
    """Finds ``hopaudit.<old>`` for every old path in :data:`MOVED`."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        package, _, leaf = fullname.rpartition(".")
        if package != "hopaudit" or leaf not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(f"hopaudit.{MOVED[leaf]}"))


def install() -> None:
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedFinder())
