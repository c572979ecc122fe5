"""benchmarks/hnsw_params.py at toy size: every line it prints, the choice among configurations,
and its ground truth against all pairwise distances."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def hnsw_params(benchmark_script):
    return benchmark_script("hnsw_params")


def test_toy_sweep_prints_every_line_and_picks_a_configuration(capsys, hnsw_params):
    lines = hnsw_params.main(["--n", "3000", "--M", "8", "--efc", "50", "--sample", "200",
                            "--data", "synthetic"])  # fmt: skip
    printed = capsys.readouterr().out
    for m, efc in ((8, 50), (16, 200)):  # the grid, and the default always beside it
        for field in ("build_seconds", "search_seconds", "recall_at_1", "recall_at_15"):
            assert f"hnsw_synthetic_M{m}_efc{efc}_{field}=" in printed
    for key in ("best_M", "best_ef_construction", "best_over_default_seconds", "native_bf16"):
        assert f"{key}=" in printed
    assert lines["hnsw_synthetic_M16_efc200_recall_at_1"] >= 0.99  # 3000 points: near exact
    assert (lines["best_M"], lines["best_ef_construction"]) in ((8, 50), (16, 200))


def test_the_ground_truth_is_brute_force(hnsw_params):
    """The recall's reference: each sampled row's 15 nearest others, itself left out, equal to
    all pairwise distances sorted."""
    import numpy as np

    module = hnsw_params
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    sample = np.arange(0, 400, 10)
    truth = module.exact_neighbours(x, sample)
    d = np.sqrt(((x[sample, None, :] - x[None, :, :]) ** 2).sum(-1))
    d[np.arange(len(sample)), sample] = np.inf
    np.testing.assert_allclose(truth, np.sort(d, axis=1)[:, : module.K], rtol=1e-6)
