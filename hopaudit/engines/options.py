"""``audit()``'s options, checked once, before any work, into one frozen :class:`AuditOptions`.

Every check that used to happen deep inside the flow happens here, so bad input costs no
forward pass and loses nothing (a wrong option is a :class:`~hopaudit.errors.DataError` that
names the accepted values).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from hopaudit.capture.dtype import store_dtype_name
from hopaudit.capture.positions import parse_positions
from hopaudit.errors import DataError
from hopaudit.evidence.extract import parse_extraction
from hopaudit.layer.embedding import MIN_POINTS
from hopaudit.layer.files import GRAPH_DIST_DTYPES
from hopaudit.model.compiled import check_compile
from hopaudit.model.precision import check_autocast
from hopaudit.results.metadata import check_metadata
from hopaudit.search.backends import INDEX_KINDS

__all__ = ["ENGINES", "INDEX_KINDS", "NORMALIZE_MODES", "AuditOptions", "umap_layer_names"]

NORMALIZE_MODES = ("rms", "none")
ENGINES = ("local", "ray")


@dataclasses.dataclass(frozen=True)
class AuditOptions:
    """Every option of :func:`hopaudit.audit` but the model and the data, checked."""

    max_length: int | None = None
    chunking: str = "stream"
    positions: Any = "last"
    blocks: str | None = None
    normalize: str = "rms"
    index: str = "auto"
    store: str | os.PathLike | None = None
    store_dtype: Any = "auto"
    batch_size: int | None = None
    max_sequences: int | None = None
    k: int = 15
    umap_layers: tuple | None = None
    umap_max_points: int = 20_000
    progress: bool = True
    seed: int = 0
    autocast: str = "auto"
    compile: bool = False
    extraction: tuple[int, int] | None = None  # (prefix, suffix) tokens, None: off
    bootstrap: int = 200
    graph_dtype: str = "float32"
    saturation_max: int | None = 50_000
    engine: str = "local"
    ray_options: Mapping[str, Any] | None = None

    @classmethod
    def check(cls, *, extraction: Any = False, metadata: Any = None, **given: Any) -> AuditOptions:
        """The options as ``audit()`` took them, checked; ``metadata`` is checked but for its
        length (the data is not tokenized yet)."""
        if given.get("graph_dtype", "float32") not in GRAPH_DIST_DTYPES:
            raise DataError(
                f"graph_dtype must be one of {GRAPH_DIST_DTYPES}, got {given['graph_dtype']!r}"
            )
        _positive_int("saturation_max", given.get("saturation_max"))
        engine = given.get("engine", "local")
        if engine not in ENGINES:
            raise DataError(f"engine must be one of {ENGINES}, got {engine!r}")
        if engine != "ray" and given.get("ray_options") is not None:
            raise DataError(
                "ray_options is for engine='ray'; pass engine='ray' or drop ray_options"
            )
        umap_layers = given.get("umap_layers")
        if isinstance(umap_layers, (str, int)):
            raise DataError(
                f"umap_layers must be a list of layer ids or names, got {umap_layers!r}"
            )
        if umap_layers is not None:
            given["umap_layers"] = tuple(umap_layers)
        options = cls(**given, extraction=parse_extraction(extraction))
        options._check()
        check_metadata(metadata, None)
        return options

    def _check(self) -> None:
        check_autocast(self.autocast)
        check_compile(self.compile)
        if self.normalize not in NORMALIZE_MODES:
            raise DataError(f"normalize must be one of {NORMALIZE_MODES}, got {self.normalize!r}")
        if self.index not in INDEX_KINDS:
            raise DataError(f"index must be one of {INDEX_KINDS}, got {self.index!r}")
        store_dtype_name(self.store_dtype)
        k, umap_max = self.k, self.umap_max_points
        if not _is_int(k) or k < 2:
            raise DataError(
                f"k must be an integer of at least 2 (TwoNN needs two neighbours), got {k!r}"
            )
        if not _is_int(umap_max) or umap_max < 0:
            raise DataError(
                f"umap_max_points must be an integer >= 0 (0: no cap), got {umap_max!r}"
            )
        if 0 < umap_max <= max(k, MIN_POINTS):
            raise DataError(
                f"umap_max_points={umap_max} leaves too few points for a UMAP with k={k} "
                f"neighbours; give more than {max(k, MIN_POINTS)}, or 0 for no cap"
            )
        for name in ("max_length", "batch_size", "max_sequences"):
            _positive_int(name, getattr(self, name))
        if self.chunking not in ("stream", "document"):
            raise DataError(f"chunking must be 'stream' or 'document', got {self.chunking!r}")
        parse_positions(self.positions)
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise DataError(f"seed must be an integer, got {seed!r}")
        if self.store is not None and not isinstance(self.store, (str, os.PathLike)):
            raise DataError(
                f"store must be a directory path or None, got {type(self.store).__name__}"
            )
        b = self.bootstrap
        if not isinstance(b, (int, np.integer)) or isinstance(b, bool) or b < 0:
            raise DataError(f"bootstrap is a number of resamples >= 0 (0: off), got {b!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _positive_int(name: str, value: Any) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
    ):
        raise DataError(f"{name} must be a positive integer or None, got {value!r}")


def umap_layer_names(names: list[str], chosen: Any, measured: Any = None) -> list[str]:
    """The layers to lay out, by name: ``chosen`` ids or names, by default the first, middle
    and last block and ``final``; of ``measured`` only, when given. DataError for a layer that
    does not exist (checked before the forward pass with ``measured=None``)."""
    if chosen is None:
        blocks = names[:-1]
        picks = [blocks[0], blocks[len(blocks) // 2], blocks[-1], names[-1]] if blocks else names
    else:
        picks = []
        for layer in chosen:
            if isinstance(layer, (int, np.integer)):
                if not -len(names) <= layer < len(names):
                    raise DataError(f"umap_layers: layer {layer} out of range 0..{len(names) - 1}")
                picks.append(names[layer])
            elif layer in names:
                picks.append(layer)
            else:
                raise DataError(f"umap_layers: no layer named {layer!r}")
    seen: list[str] = []
    for name in picks:
        if (measured is None or name in measured) and name not in seen:
            seen.append(name)
    return seen
