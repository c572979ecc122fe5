"""place() puts new points on a fitted layout exactly as umap-learn's own transform does."""

from __future__ import annotations

import numpy as np
import pytest

from hopaudit.layer.embedding import DEFAULT_EPOCHS, place

pytestmark = pytest.mark.slow  # umap's first import and jit


def test_place_equals_umap_transform():
    import umap

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 6
    x = (centres[rng.integers(0, 4, 300)] + rng.normal(size=(300, 8))).astype(np.float32)
    new = (centres[rng.integers(0, 4, 7)] + rng.normal(size=(7, 8))).astype(np.float32)
    reducer = umap.UMAP(
        n_neighbors=10, n_epochs=DEFAULT_EPOCHS, random_state=0, n_jobs=1, init="pca"
    ).fit(x)
    expected = reducer.transform(new)
    # the neighbours found independently, with the float32 distances umap's transform uses
    # (a last-bit change of one distance can flip an edge and move a point: the epochs sample)
    sq = (new[:, None, :] - x[None, :, :]) ** 2  # float32 differences, as umap's numba metric
    d = np.sqrt(sq.sum(-1, dtype=np.float64)).astype(np.float32)
    ids = np.argsort(d, axis=1, kind="stable")[:, :10]
    got = place(reducer.embedding_, ids, np.take_along_axis(d, ids, 1), n_epochs=DEFAULT_EPOCHS)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # and it lands among its neighbours, not anywhere
    spread = np.ptp(reducer.embedding_, axis=0).max()
    near = reducer.embedding_[ids[:, 0]]
    assert np.linalg.norm(got - near, axis=1).max() < 0.25 * spread
