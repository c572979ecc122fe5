"""Nearest-neighbour search behind one protocol: exact (torch), clustered (k-means lists, recall
measured on the layer) and HNSW (hnswlib)."""

from hopaudit.search.backends import (
    AUTO_EXACT_MAX,
    DEFAULT_EF,
    ClusteredIndex,
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
    "ClusteredIndex",
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
