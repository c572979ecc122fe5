"""hopaudit.capture.columns: a capture's per-row and per-prediction outputs, filled batch by
batch into arrays made before the batches."""

from __future__ import annotations

import numpy as np
import torch

from hopaudit.capture.columns import Column


def test_a_column_holds_every_batch_in_order_and_grows_when_short():
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 100, size=k) for k in (3, 0, 5, 4)]
    col = Column(np.int64, 6)  # shorter than the 12 values: doubles
    for i, part in enumerate(parts):
        col.extend(torch.from_numpy(part) if i % 2 else part, offset=10 * i)
    want = np.concatenate([p + 10 * i for i, p in enumerate(parts)])
    got = col.values()
    assert got.dtype == np.int64 and np.array_equal(got, want) and len(col) == 12


def test_values_are_the_array_when_full_and_a_copy_when_short():
    col = Column(np.float64, 4)
    col.extend(torch.tensor([0.5, 1.5], dtype=torch.float32))
    short = col.values()
    assert np.array_equal(short, [0.5, 1.5]) and short.base is None  # not a view of 4 slots
    col.extend(np.array([2.5, 3.5]))
    full = col.values()
    assert np.array_equal(full, [0.5, 1.5, 2.5, 3.5]) and full.size == 4


def test_booleans_and_an_empty_column():
    col = Column(np.bool_, 0)
    assert col.values().size == 0
    col.extend(torch.tensor([True, False, True]))
    assert col.values().tolist() == [True, False, True]
