"""Nearest-neighbour search behind one protocol: hnswlib (approximate) and exact (torch)."""

from hopaudit.search.backends import (
    AUTO_EXACT_MAX,
    DEFAULT_EF,
    ExactIndex,
    HnswIndex,
    LazyIndex,
    NeighborIndex,
    Progress,
    build_index,
    default_threads,
    knn_self,
    load_index,
    save_index,
)

__all__ = [
    "AUTO_EXACT_MAX",
    "DEFAULT_EF",
    "ExactIndex",
    "HnswIndex",
    "LazyIndex",
    "NeighborIndex",
    "Progress",
    "build_index",
    "default_threads",
    "knn_self",
    "load_index",
    "save_index",
]
