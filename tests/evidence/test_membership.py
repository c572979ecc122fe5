"""Membership evaluation (hopaudit/membership.py, Audit.membership) against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve
from tiny_models import random_texts, tiny_model, tiny_tokenizer

import hopaudit
from hopaudit.errors import DataError
from hopaudit.evidence.geometric import (
    KEPT_SCORES,
    layer_mean,
    log_distance_ratio,
    per_sequence_mean,
    row_norms,
)
from hopaudit.evidence.membership import (
    auroc,
    bootstrap_auroc,
    roc_curve,
    tpr_at_fpr,
    weighted_auroc,
)


def _sk(members, nonmembers):
    y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    return y, np.r_[members, nonmembers]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_roc_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    members = np.round(rng.normal(0.5, 1, 300), 1)  # rounded: many ties
    nonmembers = np.round(rng.normal(0, 1, 200), 1)
    y, s = _sk(members, nonmembers)
    assert auroc(members, nonmembers) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, thr = roc_curve(members, nonmembers)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    for target in (0.01, 0.05, 0.2):
        expected = sk_tpr[sk_fpr <= target].max()
        assert tpr_at_fpr(fpr, tpr, target) == pytest.approx(expected, abs=1e-12)


def test_auroc_extremes_and_nan_scores_dropped():
    assert auroc([3, 4, np.nan], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    fpr, tpr, _ = roc_curve([3, 4], [1, 2])
    assert tpr_at_fpr(fpr, tpr, 0.01) == 1.0


def test_one_nonmember_is_undefined():
    with pytest.raises(DataError, match="at least 2 members and 2 non-members"):
        auroc([1.0, 2.0, 3.0], [0.5])


def test_bootstrap_interval_covers_the_true_auroc():
    """Normal scores shifted by delta have AUROC Phi(delta / sqrt 2): the 95 % interval
    should cover it in about 95 of 100 independent draws."""
    delta = 0.8
    truth = norm.cdf(delta / math.sqrt(2))
    covered = 0
    for draw in range(100):
        rng = np.random.default_rng(100 + draw)
        lo, hi = bootstrap_auroc(rng.normal(delta, 1, 80), rng.normal(0, 1, 60), 200, draw)
        covered += lo <= truth <= hi
    assert covered >= 88


def test_weighted_auroc_is_the_auroc_of_the_repeated_sample():
    """A bootstrap resample is a count per sequence: its AUROC must be sklearn's on the
    sample that repeats each sequence that many times."""
    rng = np.random.default_rng(3)
    members = np.round(rng.normal(0.3, 1, 40), 1)
    nonmembers = np.round(rng.normal(0, 1, 30), 1)
    w_m = rng.multinomial(40, np.full(40, 1 / 40), size=5)
    w_n = rng.multinomial(30, np.full(30, 1 / 30), size=5)
    got = weighted_auroc(members, nonmembers, w_m, w_n)
    for b in range(5):
        y, s = _sk(np.repeat(members, w_m[b]), np.repeat(nonmembers, w_n[b]))
        assert got[b] == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_bootstrap_off_gives_nan():
    lo, hi = bootstrap_auroc([1, 2, 3], [0, 1], 0)
    assert math.isnan(lo) and math.isnan(hi)


@pytest.fixture(scope="module")
def membership_audit():
    model, _ = tiny_model("gpt2")
    return hopaudit.audit(
        model, random_texts(40), tokenizer=tiny_tokenizer(), heldout=random_texts(25, seed=7),
        max_length=12, progress=False, umap_layers=[], bootstrap=50,
    )  # fmt: skip


def test_audit_membership_matches_sklearn(membership_audit):
    a = membership_audit
    table = a.membership
    assert list(table.columns) == [
        "score", "layer", "auroc", "auroc_lo", "auroc_hi", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr",
        "n_members", "n_nonmembers",
    ]  # fmt: skip
    stored, held = a.samples, a.heldout_samples
    assert len(held) == a.heldout_capture.seq_nll.size
    assert set(table["score"]) == {"loss", "zlib", "min_k", "min_k_pp", "geometric", *KEPT_SCORES}
    for row in table.itertuples():
        if row.score == "geometric":
            m = a.geometric_scores("stored")[row.layer].to_numpy()
            n = a.geometric_scores("heldout")[row.layer].to_numpy()
        elif row.score in KEPT_SCORES:
            m = a.geometric_scores("stored", per_layer=False)[row.score].to_numpy()
            n = a.geometric_scores("heldout", per_layer=False)[row.score].to_numpy()
        else:
            m, n = stored[row.score].to_numpy(), held[row.score].to_numpy()
        y, s = _sk(m, n)
        assert row.auroc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        sk_fpr, sk_tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
        assert row.tpr_at_5pct_fpr == pytest.approx(sk_tpr[sk_fpr <= 0.05].max())
        assert row.tpr_at_1pct_fpr == pytest.approx(sk_tpr[sk_fpr <= 0.01].max())
        assert row.auroc_lo <= row.auroc <= row.auroc_hi
        assert (row.n_members, row.n_nonmembers) == (len(m), len(n))
    _fpr, tpr = a.roc("loss")
    y, s = _sk(stored["loss"].to_numpy(), held["loss"].to_numpy())
    np.testing.assert_allclose(tpr, sk_roc_curve(y, s, drop_intermediate=False)[1])
    assert set(a.roc_curves()) == {
        (r.score, r.layer if r.score == "geometric" else None) for r in table.itertuples()
    }


def test_geometric_scores_are_minus_the_distance_ratio(membership_audit):
    a = membership_audit
    g = a.geometric_scores()
    assert list(g.columns) == a.layer_names and len(g) == len(a.texts)
    np.testing.assert_allclose(-g["final"].to_numpy(), a.samples["distance_ratio"].to_numpy())
    # held-out: distance to the nearest stored pattern over r_hat, by brute force
    rep = a.layer_report("final")
    from hopaudit.geometry import normalize_rows

    x = normalize_rows(np.asarray(a.activations("final"), np.float64), "rms")
    q = normalize_rows(np.asarray(a.heldout_capture.store.get("final"), np.float64), "rms")
    nearest = np.sqrt(((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(
        -a.geometric_scores("heldout")["final"].to_numpy(), nearest / rep.r_hat, rtol=1e-4
    )


def _pairwise(x, y):
    return np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))


def test_the_kept_geometric_scores_by_brute_force(membership_audit):
    """The three scores the validity study kept, recomputed in float64 from the raw
    activations with all pairwise distances (docs/validity.md gives their definitions)."""
    from hopaudit.geometry import normalize_rows

    a = membership_audit
    names = a.layer_names
    stored = a.geometric_scores("stored", per_layer=False)
    held = a.geometric_scores("heldout", per_layer=False)
    assert list(stored.columns) == list(KEPT_SCORES) == list(held.columns)
    assert len(stored) == len(a.texts) and len(held) == len(a.heldout_samples)
    raw_s = {n: np.asarray(a.activations(n), np.float64) for n in names}
    raw_h = {n: np.asarray(a.heldout_capture.store.get(n), np.float64) for n in names}
    assert raw_s["final"].shape[0] == len(stored)  # one pattern per sequence here
    # mean over layers of -(nn / r_hat), nn by brute force
    ratios_s, ratios_h = [], []
    for n in names:
        xs, xh = normalize_rows(raw_s[n], "rms"), normalize_rows(raw_h[n], "rms")
        d_ss = _pairwise(xs, xs)
        np.fill_diagonal(d_ss, np.inf)
        r_hat = a.layer_report(n).r_hat
        ratios_s.append(d_ss.min(1) / r_hat)
        ratios_h.append(_pairwise(xh, xs).min(1) / r_hat)
    np.testing.assert_allclose(stored["nn_ratio_layers"], -np.mean(ratios_s, 0), rtol=1e-4)
    np.testing.assert_allclose(held["nn_ratio_layers"], -np.mean(ratios_h, 0), rtol=1e-4)
    # log(nearest held-out / nearest stored) at final, never a pattern itself
    xs, xh = normalize_rows(raw_s["final"], "rms"), normalize_rows(raw_h["final"], "rms")
    d_ss, d_hh = _pairwise(xs, xs), _pairwise(xh, xh)
    np.fill_diagonal(d_ss, np.inf)
    np.fill_diagonal(d_hh, np.inf)
    d_sh = _pairwise(xs, xh)
    expect_s = np.log(d_sh.min(1)) - np.log(d_ss.min(1))
    expect_h = np.log(d_hh.min(1)) - np.log(d_sh.min(0))
    np.testing.assert_allclose(stored["member_vs_heldout"], expect_s, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(held["member_vs_heldout"], expect_h, rtol=1e-4, atol=1e-5)
    # minus the raw norm at the last block (the block before final)
    last = names[-2]
    np.testing.assert_allclose(stored["norm_reversed"], -np.linalg.norm(raw_s[last], axis=1))
    np.testing.assert_allclose(held["norm_reversed"], -np.linalg.norm(raw_h[last], axis=1))


def test_per_sequence_mean_and_layer_mean_skip_what_is_not_finite():
    values = np.array([1.0, 3.0, np.nan, 5.0, np.inf, 2.0])
    seq = np.array([0, 0, 1, 2, 2, 0])
    np.testing.assert_allclose(per_sequence_mean(values, seq, 4), [2.0, np.nan, 5.0, np.nan])
    x = np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, np.nan]])
    np.testing.assert_allclose(layer_mean(x), [2.0, np.nan])


def test_row_norms_and_the_log_ratio_of_a_duplicate():
    x = np.array([[3.0, 4.0], [np.nan, 1.0], [3e4, 4e4]], np.float16)  # squares beyond float16
    np.testing.assert_allclose(row_norms(x), [5.0, np.nan, 5e4], rtol=1e-3)
    got = log_distance_ratio(np.array([2.0, 1.0, np.nan]), np.array([1.0, 0.0, 1.0]))
    assert got[0] == pytest.approx(math.log(2.0))
    assert np.isfinite(got[1]) and got[1] > 80  # an exact duplicate: high, but finite
    assert math.isnan(got[2])


def test_nearest_heldout_against_all_pairs_with_its_bar_shown(monkeypatch, capsys):
    import hopaudit.evidence.geometric as geometric

    monkeypatch.setattr(geometric, "PROGRESS_ROWS", 0)  # the bar's path, shown on stderr
    rng = np.random.default_rng(5)
    stored, held = rng.normal(size=(60, 8)), rng.normal(size=(25, 8))
    to_held, among = geometric.nearest_heldout(stored.astype(np.float32), held.astype(np.float32))
    d_hh = _pairwise(held, held)
    np.fill_diagonal(d_hh, np.inf)
    np.testing.assert_allclose(to_held, _pairwise(stored, held).min(1), rtol=1e-5)
    np.testing.assert_allclose(among, d_hh.min(1), rtol=1e-5)
    assert "membership: nearest held-out" in capsys.readouterr().err


def test_membership_without_heldout_is_empty_with_a_reason():
    model, _ = tiny_model("gpt2")
    a = hopaudit.audit(
        model, random_texts(20), tokenizer=tiny_tokenizer(), max_length=12, progress=False,
        umap_layers=[],
    )  # fmt: skip
    assert a.membership.empty
    assert "heldout=" in a.membership.attrs["reason"]
    g = a.geometric_scores(per_layer=False)  # the kept scores: all but member_vs_heldout
    assert g["member_vs_heldout"].isna().all()
    assert np.isfinite(g["nn_ratio_layers"]).all() and np.isfinite(g["norm_reversed"]).all()
    assert a.geometric_scores("heldout", per_layer=False).empty
    assert a.heldout_samples.empty and list(a.heldout_samples.columns) == list(a.samples.columns)
    with pytest.raises(hopaudit.HopauditError, match="heldout="):
        a.roc("loss")


def test_one_heldout_sequence_is_refused_before_any_forward(monkeypatch):
    model, _ = tiny_model("gpt2")
    calls = []
    # the capture pass is the forward that costs; find_final_norm's 4-token probe does not
    monkeypatch.setattr("hopaudit.engines.local.capture", lambda *a, **k: calls.append(1))
    with pytest.raises(DataError, match="undefined with fewer than 2 non-members"):
        hopaudit.audit(
            model, random_texts(20), tokenizer=tiny_tokenizer(), heldout=random_texts(1, seed=3),
            max_length=12, chunking="document", progress=False,
        )  # fmt: skip
    assert calls == []


def test_membership_survives_save_and_load(membership_audit, tmp_path):
    a = membership_audit
    b = hopaudit.load(a.save(tmp_path / "a"))
    assert b.membership.equals(a.membership)
    assert b.heldout_samples.equals(a.heldout_samples)


def test_heldout_samples_without_heldout_texts(membership_audit):
    """An audit saved before held-out texts were kept: scores but zlib survive, zlib is NaN."""
    import dataclasses

    a = dataclasses.replace(membership_audit, heldout_texts=None)
    held = a.heldout_samples
    assert len(held) == len(membership_audit.heldout_samples)
    assert held["zlib"].isna().all()
    np.testing.assert_array_equal(held["loss"], membership_audit.heldout_samples["loss"])
