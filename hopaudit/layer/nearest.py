"""New vectors against one layer's stored patterns: the nearest stored *sequences* of each query.

A query (a new text) gives one row per position the audit kept (one with ``positions="last"``);
a stored sequence owns one or more patterns. The distance from a query to a stored sequence is
the smallest distance between any of the query's rows and any of the sequence's patterns
(docs/theory.md §2: nn is plain L2). Pure functions of arrays: the search itself is the
layer's index (:mod:`hopaudit.search.backends`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["NEAREST_COLUMNS", "nearest_sequences", "neighbours_needed"]

#: The columns :func:`nearest_sequences` gives, in order.
NEAREST_COLUMNS = ["query", "rank", "sequence", "pattern", "distance", "inside_ball"]


def neighbours_needed(pattern_sequence: np.ndarray, k: int) -> int:
    """How many nearest patterns per query row guarantee the k nearest distinct sequences.

    Among the ``k * m`` nearest patterns (``m``: the most patterns any one sequence owns) are
    at least ``k`` distinct sequences, and a sequence outside them is farther than all of them.
    """
    seq = np.asarray(pattern_sequence, dtype=np.int64)
    if seq.size == 0:
        return 0
    most = int(np.bincount(seq).max())
    return min(int(seq.size), int(k) * most)


def nearest_sequences(
    ids: np.ndarray,
    dists: np.ndarray,
    row_query: np.ndarray,
    pattern_sequence: np.ndarray,
    radii: np.ndarray,
    k: int,
) -> dict[str, np.ndarray]:
    """The ``k`` nearest stored sequences of every query, from its rows' nearest patterns.

    ``ids``/``dists`` (rows, c): each query row's nearest patterns (index ids, ascending L2);
    ``row_query`` (rows,): the query each row belongs to; ``pattern_sequence`` (patterns,): the
    stored sequence of each pattern; ``radii`` (patterns,): each pattern's ball radius r_i =
    nn_i / 2 (docs/theory.md §2). Per query, each sequence counts once, at its closest
    (query row, pattern) pair; ties go to the lower sequence id. ``inside_ball``: the distance
    is at most the radius of that closest pattern (the containment rule of docs/theory.md §2).
    """
    ids = np.asarray(ids, dtype=np.int64)
    dists = np.asarray(dists, dtype=np.float32)
    row_query = np.asarray(row_query, dtype=np.int64)
    seq_of = np.asarray(pattern_sequence, dtype=np.int64)
    radii = np.asarray(radii, dtype=np.float64)
    out: dict[str, list[Any]] = {c: [] for c in NEAREST_COLUMNS}
    for q in np.unique(row_query):
        mask = row_query == q
        pid = ids[mask].ravel()
        d = dists[mask].ravel()
        keep = pid >= 0  # hnswlib pads with -1 when it finds fewer
        pid, d = pid[keep], d[keep]
        seq = seq_of[pid]
        order = np.lexsort((seq, d))  # by distance, then sequence id
        _, first = np.unique(seq[order], return_index=True)  # each sequence at its closest
        best = order[first]
        best = best[np.lexsort((seq[best], d[best]))][: int(k)]
        for rank, j in enumerate(best, start=1):
            out["query"].append(int(q))
            out["rank"].append(rank)
            out["sequence"].append(int(seq[j]))
            out["pattern"].append(int(pid[j]))
            out["distance"].append(float(d[j]))
            out["inside_ball"].append(bool(d[j] <= radii[pid[j]]))
    return {
        "query": np.asarray(out["query"], dtype=np.int64),
        "rank": np.asarray(out["rank"], dtype=np.int64),
        "sequence": np.asarray(out["sequence"], dtype=np.int64),
        "pattern": np.asarray(out["pattern"], dtype=np.int64),
        "distance": np.asarray(out["distance"], dtype=np.float32),
        "inside_ball": np.asarray(out["inside_ball"], dtype=bool),
    }
