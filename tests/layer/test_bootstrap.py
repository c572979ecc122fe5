"""Bootstrap intervals of the per-layer estimates (measure.py, docs/theory.md §7)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from tiny_models import TOKENIZER_TEXT, tiny_model, tiny_tokenizer

import hopaudit
from hopaudit import theory
from hopaudit.errors import DataError
from hopaudit.layer.measuring import INTERVAL_COLUMNS, bootstrap_intervals


def _twin_pairs(rng: np.random.Generator, pairs: int, dim: int, a: float, b: float):
    """Pairs at spacing s ~ U[a, b] around centres far apart (so each one's nn is its s)."""
    centres = rng.normal(size=(pairs, dim)) * 100
    u = rng.normal(size=(pairs, dim))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    s = rng.uniform(a, b, pairs)
    return np.concatenate([centres, centres + s[:, None] * u]), s


def test_r_hat_interval_covers_the_truth_on_planted_twins():
    """True r_hat = median(U[a, b]) / 2 = (a + b) / 4; the 95 % interval must cover it in at
    least 90 of 100 independent draws."""
    a, b = 1.0, 2.0
    truth = (a + b) / 4
    covered = 0
    for draw in range(100):
        rng = np.random.default_rng(1000 + draw)
        x, s = _twin_pairs(rng, 200, 8, a, b)
        r = hopaudit.measure(x, normalize="none", index="exact", seed=draw, fractions=())
        if draw == 0:  # the planted geometry holds: every nn is its pair's spacing
            np.testing.assert_allclose(np.sort(r.nn), np.sort(np.r_[s, s]), rtol=1e-5)
        assert r.bootstrap == 200
        covered += r.r_hat_lo <= truth <= r.r_hat_hi
    assert covered >= 90


def test_intervals_bracket_the_estimates_and_derived_ones_follow_r_hat():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 16))
    r = hopaudit.measure(x, normalize="none", index="exact", n_blocks=4)
    for name in ("r_hat", "separated_frac", "twonn_id", "log_z_vol", "floor_low", "floor_high"):
        lo, hi, est = getattr(r, f"{name}_lo"), getattr(r, f"{name}_hi"), getattr(r, name)
        assert lo <= hi, name
        if name != "separated_frac":  # all 1 here: a point interval
            assert lo < hi and lo <= est <= hi, name
    # log Z_vol and the floors are functions of r_hat alone (d fixed), so their percentile
    # intervals are the images of r_hat's end points (up to numpy's linear interpolation
    # between neighbouring resamples, which a nonlinear map does not commute with)
    ends = theory.log_partition_volume(np.array([r.r_hat_lo, r.r_hat_hi]), r.n, r.n_patterns)
    assert sorted([r.log_z_vol_lo, r.log_z_vol_hi]) == pytest.approx(sorted(ends), rel=1e-5)
    floors = np.asarray(theory.loss_floor(ends), dtype=np.float64)
    assert sorted([r.floor_low_lo, r.floor_low_hi]) == pytest.approx(sorted(floors), rel=1e-5)
    assert r.floor_high_lo - r.floor_low_lo == pytest.approx(math.log(4))
    row = r.row()
    assert all(c in row for c in INTERVAL_COLUMNS)


def test_bootstrap_off_and_bad_values():
    x = np.random.default_rng(1).normal(size=(50, 8))
    r = hopaudit.measure(x, bootstrap=0)
    assert r.bootstrap == 0
    assert all(math.isnan(getattr(r, c)) for c in INTERVAL_COLUMNS)
    with pytest.raises(DataError, match="bootstrap"):
        hopaudit.measure(x, bootstrap=-1)
    out = bootstrap_intervals(np.ones(2), np.ones(2), np.array([1, 0]), 8, 1.0, 1, 200)
    assert all(math.isnan(v) for v in out.values())  # fewer than 3 patterns


def test_audit_layers_carry_intervals_and_summary_states_the_floor_interval():
    rng = random.Random(0)
    words = TOKENIZER_TEXT.split()
    texts = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(60)]
    model, _ = tiny_model("gpt2")
    a = hopaudit.audit(
        model, texts, tokenizer=tiny_tokenizer(), max_length=12, progress=False, umap_layers=[]
    )
    layers = a.layers
    for c in INTERVAL_COLUMNS:
        assert c in layers and layers[c].notna().all(), c
    assert (layers["r_hat_lo"] <= layers["r_hat"]).all()
    assert (layers["r_hat"] <= layers["r_hat_hi"]).all()
    s = a.summary()
    assert s["floor_low_lo"] <= s["floor_low"] <= s["floor_low_hi"]
    with pytest.raises(DataError, match="bootstrap"):
        hopaudit.audit(model, texts, tokenizer=tiny_tokenizer(), bootstrap=-5)
