"""The per-sequence geometric scores the validity study kept (docs/validity.md), as pure
functions of what an audit holds: its distance ratios, its patterns and its stored activations.

Six geometric scores were tried on tiny GPT-2s whose memorization is known; a score is kept
when its family-wise (Bonferroni over the six) AUROC interval on the memorized checkpoints
excludes 0.5. Three did, each a few hundredths from chance where the loss reaches 1.00:

``nn_ratio_layers``    -(nn / r_hat) averaged over the measured layers;
``member_vs_heldout``  log(nearest held-out pattern / nearest other stored pattern) at
                       ``final`` (closer to the stored set than to the held-out set = member);
``norm_reversed``      -||h|| of the raw pattern at the last block (shorter = member: the
                       direction was read off the study's grid, docs/validity.md says so).

Every score is oriented higher = more likely a member, as the loss scores are.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "KEPT_SCORES",
    "layer_mean",
    "log_distance_ratio",
    "nearest_heldout",
    "per_sequence_mean",
    "row_norms",
]

#: The geometric scores kept by the validity study, in the order the views list them.
KEPT_SCORES = ("nn_ratio_layers", "member_vs_heldout", "norm_reversed")
#: Rows per chunk when norms are taken, so a float16 memmap never needs a float64 copy whole.
_CHUNK_ROWS = 8192
#: Distances are floored here before the log, so an exact duplicate gives a finite score.
_TINY = float(np.finfo(np.float32).tiny)


def per_sequence_mean(values: np.ndarray, seq: np.ndarray, n: int) -> np.ndarray:
    """The mean of the finite ``values`` of each sequence ``0..n-1`` (``seq[i]`` is row i's
    sequence); NaN for a sequence with none (positions="all" gives several rows a sequence)."""
    values = np.asarray(values, np.float64)
    seq = np.asarray(seq, np.int64)
    ok = np.isfinite(values)
    sums = np.bincount(seq[ok], weights=values[ok], minlength=n)[:n]
    counts = np.bincount(seq[ok], minlength=n)[:n]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def layer_mean(per_layer: np.ndarray) -> np.ndarray:
    """The mean over layers (axis 1) of the finite values of each row; NaN where none is."""
    x = np.asarray(per_layer, np.float64)
    ok = np.isfinite(x)
    counts = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.where(ok, x, 0.0).sum(axis=1) / counts, np.nan)


def row_norms(x: np.ndarray) -> np.ndarray:
    """The L2 norm of each row, in float64 chunk by chunk; NaN for a row with NaN or inf."""
    out = np.empty(x.shape[0], np.float64)
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        block = np.asarray(x[start : start + _CHUNK_ROWS], np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            norms = np.linalg.norm(block, axis=1)
        out[start : start + block.shape[0]] = np.where(
            np.isfinite(block).all(axis=1), norms, np.nan
        )
    return out


def log_distance_ratio(d_heldout: np.ndarray, d_member: np.ndarray) -> np.ndarray:
    """log(d_heldout / d_member), each distance floored at float32's smallest normal number
    (an exact duplicate scores high but finite); NaN where either distance is NaN."""
    h = np.maximum(np.asarray(d_heldout, np.float64), _TINY)
    m = np.maximum(np.asarray(d_member, np.float64), _TINY)
    return np.log(h) - np.log(m)


#: Searches of at least this many patterns show a progress bar (smaller ones take a moment).
PROGRESS_ROWS = 100_000


def nearest_heldout(stored: np.ndarray, heldout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance of each stored pattern to its nearest held-out pattern, distance of each
    held-out pattern to its nearest *other* held-out pattern), L2, searched exactly or by HNSW
    as ``index="auto"`` picks for the held-out set's size. Needs at least 2 held-out rows."""
    from hopaudit.progress import tqdm
    from hopaudit.search.backends import build_index, knn_self

    total = 2 * len(heldout) + len(stored)
    bar = tqdm(total=total, desc="membership: nearest held-out", unit="pattern", leave=False,
               disable=total < PROGRESS_ROWS)  # fmt: skip
    try:
        index = build_index(heldout, "auto", progress=bar.update)
        _, to_heldout = index.query(stored, 1, progress=bar.update)
        _, among = knn_self(index, heldout, 1, progress=bar.update)
    finally:
        bar.close()
    return to_heldout[:, 0].astype(np.float64), among[:, 0].astype(np.float64)
