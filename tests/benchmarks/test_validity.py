"""benchmarks/validity.py: its statistics against scipy, scikit-learn and hand computations,
its per-sequence scores against a neighbour search of scikit-learn's, and a toy-size run of
the whole script whose every correlation is recomputed here from the table it writes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata, spearmanr
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors


@pytest.fixture(scope="module")
def validity(benchmark_script):
    return benchmark_script("validity")


# --------------------------------------------------------------------------- statistics
def test_ranks_and_spearman_match_scipy_with_ties(validity):
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 6, size=30).astype(float)  # many ties
        y = x + rng.integers(-3, 4, size=30)
        assert np.array_equal(validity.average_ranks(x), rankdata(x))
        assert validity.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_spearman_hand_value_and_undefined_cases(validity):
    # ranks x = 1 2 3 4, y = 1 3 2 4: d^2 sums to 2, rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert validity.spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert math.isnan(validity.spearman([1, 2, 3], [5, 5, 5]))  # a constant side
    assert math.isnan(validity.spearman([1, 2], [1, 2]))  # fewer than 3 pairs
    # non-finite pairs are left out: the same as the finite pairs alone
    x, y = [1, 2, np.nan, 3, 4], [10, 30, 7, 20, 40]
    assert validity.spearman(x, y) == pytest.approx(0.8)


def test_bootstrap_resamples_whole_runs(validity):
    """Two runs of three checkpoints: run A rises (x 1..3, y 1..3), run B falls (x 4..6, y 0,
    -1, -2). A resample of runs is AA (rho = 1), BB (rho = -1) or AB, each of AA and BB with
    probability 1/4 > 2.5 %, so the interval is exactly [-1, 1]. Resampling checkpoints
    instead would draw all six from B with probability 1/64 < 2.5 %: its low end is above -1."""
    x = np.array([1, 2, 3, 4, 5, 6.0])
    y = np.array([1, 2, 3, 0, -1, -2.0])
    runs = np.array(["A", "A", "A", "B", "B", "B"])
    lo, hi = validity.bootstrap_over_runs(x, y, runs, n_boot=2000, seed=1)
    assert (lo, hi) == (-1.0, 1.0)
    one = np.array(["A"] * 6)  # one run: every resample is the data itself
    rho = validity.spearman(x, y)
    assert validity.bootstrap_over_runs(x, y, one, n_boot=50) == pytest.approx((rho, rho))


def test_partial_spearman_is_the_correlation_of_rank_residuals(validity):
    """Against an independent route: regress the ranks of x and of y on the ranks of z by
    least squares, correlate the residuals (Pearson)."""
    rng = np.random.default_rng(5)
    for _ in range(10):
        z = rng.normal(size=50)
        x = z + rng.normal(size=50)
        y = z + 0.5 * x + rng.normal(size=50)
        rx, ry, rz = rankdata(x), rankdata(y), rankdata(z)
        design = np.c_[np.ones(50), rz]
        res_x = rx - design @ np.linalg.lstsq(design, rx, rcond=None)[0]
        res_y = ry - design @ np.linalg.lstsq(design, ry, rcond=None)[0]
        expected = np.corrcoef(res_x, res_y)[0, 1]
        assert validity.partial_spearman(x, y, z) == pytest.approx(expected, abs=1e-10)
    # x is y's rank twin but both only through z: nothing left once z is known
    assert math.isnan(validity.partial_spearman([1, 2, 3, 4], [2, 4, 6, 8], [1, 2, 3, 4]))


def test_within_run_median_by_hand(validity):
    x = np.array([1, 2, 3, 1, 2, 3, 1, 2, 3, 4, 1, 2, 3.0])
    y = np.array([1, 2, 3, 3, 2, 1, 1, 3, 2, 4, 5, 5, 5.0])
    runs = np.array(["a"] * 3 + ["b"] * 3 + ["c"] * 4 + ["d"] * 3)
    # a: +1, b: -1, c: x 1..4 against ranks 1 3 2 4 -> 0.8, d: constant -> left out
    assert validity.within_run_median(x, y, runs) == pytest.approx(0.8)


def test_auroc_matches_sklearn_and_a_hand_value(validity):
    # pairs (3,1) (3,2) (2,1) won, (2,2) tied: 3.5 / 4
    assert validity.auroc([3, 2], [1, 2]) == pytest.approx(0.875)
    rng = np.random.default_rng(3)
    for _ in range(10):
        m, n = rng.integers(0, 5, 40).astype(float), rng.integers(0, 4, 25).astype(float)
        labels = np.r_[np.ones(m.size), np.zeros(n.size)]
        expected = roc_auc_score(labels, np.r_[m, n])
        assert validity.auroc(m, n) == pytest.approx(expected, abs=1e-12)


def test_auroc_over_runs(validity):
    perfect = [[(np.array([2.0, 3.0]), np.array([0.0, 1.0]))]] * 3
    assert validity.auroc_over_runs(perfect, n_boot=50) == (1.0, 1.0, 1.0)
    m, n = np.array([3.0, 2.0, 5.0]), np.array([1.0, 2.0, 4.0])
    point, lo, hi = validity.auroc_over_runs([[(m, n)], [(n, m)]], n_boot=300, seed=0)
    # the mean of the two checkpoints' AUROCs, 7/9 and 2/9
    assert point == pytest.approx(0.5)
    assert lo <= point <= hi and lo < 0.5 < hi


def test_first_crossing_by_hand(validity):
    # 0.7 at 128, 0.3 at 256: halfway in log2 N, 2 ** 7.5
    value, why = validity.first_crossing([64, 128, 256], [0.9, 0.7, 0.3], 0.5)
    assert value == pytest.approx(2**7.5) and why is None
    value, why = validity.first_crossing([64, 128], [0.4, 0.1], 0.5)
    assert math.isnan(value) and "below 0.5 at every N" in why
    value, why = validity.first_crossing([64, 128], [0.9, 0.8], 0.5)
    assert math.isnan(value) and "not below" in why


# --------------------------------------------------------------------------- sequence scores
def test_sequence_scores_against_sklearn_neighbours(validity):
    """The per-sequence scores of one tiny audit against a neighbour search by scikit-learn on
    the audit's patterns, RMS-normalized here."""
    import hopaudit
    from hopaudit.zoo import corpus, train_tiny_gpt2

    run = train_tiny_gpt2(corpus(max_chars=30_000), fraction=0.2, n_embd=32, n_head=2,
                          seq_len=64, steps=20, progress=False)  # fmt: skip
    held = run.heldout_ids[:12]
    a = hopaudit.audit(run.model, run.train_ids, heldout=held, tokenizer=run.tokenizer,
                       extraction=True, progress=False, umap_layers=[], bootstrap=0,
                       autocast="off")  # fmt: skip
    rows = pd.DataFrame(validity.sequence_rows(a, {"run": "r", "step": 20}))
    n_mem = len(run.train_ids)
    assert rows["member"].sum() == n_mem and (~rows["member"]).sum() == len(held)

    def rms(x):
        x = np.asarray(x, np.float64)
        return x * math.sqrt(x.shape[1]) / np.linalg.norm(x, axis=1, keepdims=True)

    names = a.layer_names
    stored = {k: np.asarray(a.activations(k), np.float64) for k in names}
    heldout = {k: np.asarray(a.heldout_capture.store.get(k), np.float64) for k in names}
    z_all = rms(np.concatenate([stored["final"], heldout["final"]]))
    z_mem, z_held = z_all[:n_mem], z_all[n_mem:]
    # nearest members: k = 3 among members (self first for a member), k = 2 for held-out
    d_mm = NearestNeighbors(n_neighbors=3).fit(z_mem).kneighbors(z_mem)[0][:, 1:]
    d_hm = NearestNeighbors(n_neighbors=2).fit(z_mem).kneighbors(z_held)[0]
    d_mh = NearestNeighbors(n_neighbors=1).fit(z_held).kneighbors(z_mem)[0][:, 0]
    d_hh = NearestNeighbors(n_neighbors=2).fit(z_held).kneighbors(z_held)[0][:, 1]
    near_m = np.r_[d_mm[:, 0], d_hm[:, 0]]
    near_m2 = np.r_[d_mm[:, 1], d_hm[:, 1]]
    near_h = np.r_[d_mh, d_hh]
    np.testing.assert_allclose(rows["member_vs_heldout"], np.log(near_h / near_m), atol=1e-6)
    np.testing.assert_allclose(rows["nn2_over_nn"], np.log(near_m2 / near_m), atol=1e-6)
    # the audit's own nearest-other distances agree with the search here
    r_hat = a.layer_report("final").r_hat
    np.testing.assert_allclose(rows["nn_ratio_final"], -near_m / r_hat, rtol=1e-4, atol=1e-5)
    last_block = names[-2]
    norms = np.r_[np.linalg.norm(stored[last_block], axis=1),
                  np.linalg.norm(heldout[last_block], axis=1)]  # fmt: skip
    np.testing.assert_allclose(rows["norm"], norms, rtol=1e-6)
    z = {k: rms(np.concatenate([stored[k], heldout[k]])) for k in names}
    steps = [np.linalg.norm(z[b] - z[a_], axis=1) for a_, b in itertools.pairwise(names)]
    drift = np.mean(steps, axis=0)
    np.testing.assert_allclose(rows["drift"], drift, rtol=1e-6)
    np.testing.assert_allclose(rows["loss"], np.r_[a.samples["loss"], a.heldout_samples["loss"]])


# --------------------------------------------------------------------------- the toy run
TOY = ["--widths", "32,64", "--sizes", "4,8", "--seeds", "0", "--steps", "100",
       "--checkpoints", "3", "--workers", "1", "--max-chars", "30000", "--lr", "1e-2",
       "--batch-size", "8", "--boot", "300"]  # fmt: skip


def _printed(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def toy(validity, tmp_path_factory):
    out = tmp_path_factory.mktemp("validity")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        validity.main([*TOY, "--out", str(out)])
    return _printed(buf.getvalue()), out


def test_toy_run_prints_every_line_and_each_rho_lies_in_its_interval(validity, toy):
    lines, out = toy
    for q in (*validity.GEOMETRY, *validity.ANCHORS):
        for key in (f"rho_{q}", f"rho_{q}_lo", f"rho_{q}_hi", f"rho_within_{q}"):
            assert key in lines
        rho, lo, hi = (float(lines[f"rho_{q}{s}"]) for s in ("", "_lo", "_hi"))
        if not math.isnan(rho):
            assert lo - 1e-4 <= rho <= hi + 1e-4, (q, lo, rho, hi)
    for width in (32, 64):
        for name in ("capacity_observed", "capacity_predicted", "capacity_predicted_rc"):
            assert f"{name}_{width}" in lines
    for q in validity.GEOMETRY:
        rho, lo, hi = (float(lines[f"rho_partial_{q}{s}"]) for s in ("", "_lo", "_hi"))
        if not math.isnan(rho):
            assert lo - 1e-4 <= rho <= hi + 1e-4, (q, lo, rho, hi)
    for score in validity.SEQ_SCORES:
        point, lo, hi, lo_fw, hi_fw = (
            float(lines[f"auroc_seq_{score}{s}"]) for s in ("", "_lo", "_hi", "_lo_fw", "_hi_fw")
        )
        if not math.isnan(point):  # from the same resamples, the family-wise interval is wider
            assert lo_fw <= lo and hi <= hi_fw, (score, lo_fw, lo, hi, hi_fw)
    assert lines["cpu_kind"] in ("native-bfloat16", "avx2-only", "other")
    assert lines["native_bf16"] in ("True", "False")
    assert float(lines["wall_seconds"]) > 0
    # the toy memorizes: members are extracted at some checkpoints, not at all of them
    table = pd.read_parquet(out / "checkpoints.parquet")
    rates = table.loc[table["is_final"], "extraction_rate"]
    assert rates.max() >= 0.5 and rates.nunique() > 1
    assert (out / "capacity.svg").read_text().startswith("<svg")


def test_the_table_reproduces_every_printed_correlation(validity, toy):
    lines, out = toy
    table = pd.read_parquet(out / "checkpoints.parquet")
    for col in ("extraction_rate", "run", "seed", "width", "n_members", "step", "layer"):
        assert col in table.columns
    # one row per run, checkpoint and layer (2 blocks + final)
    assert len(table) == table[["run", "step"]].drop_duplicates().shape[0] * 3
    assert table.groupby(["run", "step"])["layer"].nunique().eq(3).all()
    assert int(lines["n_runs"]) == 4 and int(lines["n_checkpoints"]) == 12
    fin = table[table["layer"] == "final"].sort_values(["run", "step"])
    for q in (*validity.GEOMETRY, *validity.ANCHORS):
        ok = np.isfinite(fin[q]) & np.isfinite(fin["extraction_rate"])
        part = fin[ok]
        printed = float(lines[f"rho_{q}"])
        if part[q].nunique() < 2 or part["extraction_rate"].nunique() < 2:
            assert math.isnan(printed), q
            continue
        expected = spearmanr(part[q], part["extraction_rate"]).statistic
        assert printed == pytest.approx(expected, abs=6e-5), q
        per_run = [
            spearmanr(g[q], g["extraction_rate"]).statistic
            for _, g in part.groupby("run")
            if len(g) >= 3 and g[q].nunique() > 1 and g["extraction_rate"].nunique() > 1
        ]
        if q in validity.GEOMETRY and part["train_ce"].nunique() > 1:
            # partial given the train cross-entropy, by the residuals of ranks (see above)
            rx, ry, rz = (rankdata(part[c]) for c in (q, "extraction_rate", "train_ce"))
            design = np.c_[np.ones(len(rz)), rz]
            res = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in (rx, ry)]
            if min(np.std(res[0]), np.std(res[1])) > 1e-9:
                expected = np.corrcoef(res[0], res[1])[0, 1]
                assert float(lines[f"rho_partial_{q}"]) == pytest.approx(expected, abs=6e-5), q
        within = float(lines[f"rho_within_{q}"])
        if per_run:
            assert within == pytest.approx(float(np.median(per_run)), abs=6e-5), q
        else:
            assert math.isnan(within), q


def test_the_sequence_table_reproduces_the_auroc_lines(validity, toy):
    lines, out = toy
    table = pd.read_parquet(out / "checkpoints.parquet")
    seqs = pd.read_parquet(out / "sequences.parquet")
    fin = table[table["layer"] == "final"]
    memo = fin.loc[fin["extraction_rate"] >= 0.5, ["run", "step"]]
    assert int(lines["n_memorized_checkpoints"]) == len(memo) > 0
    for score in validity.SEQ_SCORES:
        values = []
        for ck in memo.itertuples():
            part = seqs[(seqs["run"] == ck.run) & (seqs["step"] == ck.step)]
            values.append(roc_auc_score(part["member"], part[score]))
        assert float(lines[f"auroc_seq_{score}"]) == pytest.approx(np.mean(values), abs=6e-5)
    # the loss separates members of a model that extracts most of them
    assert float(lines["auroc_seq_loss"]) > 0.9


def test_from_reprints_the_same_lines(validity, toy):
    import contextlib
    import io

    lines, out = toy
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        validity.main(["--from", str(out), "--boot", "300"])
    again = _printed(buf.getvalue())
    run_only = ("wall_seconds", "load_average_start", "load_average_end")
    assert not set(run_only) & set(again)
    assert again == {k: v for k, v in lines.items() if k not in run_only}


def test_from_reads_the_runs_of_a_grid_cut_short(validity, toy, tmp_path):
    import contextlib
    import io
    import shutil

    lines, out = toy
    shutil.copytree(out / "runs", tmp_path / "runs")  # no checkpoints.parquet: a cut grid
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        validity.main(["--from", str(tmp_path), "--boot", "300"])
    again = _printed(buf.getvalue())
    assert again["n_runs"] == "4" and again["rho_r_ratio"] == lines["rho_r_ratio"]


def test_a_second_run_with_the_same_out_reuses_every_run(validity, toy):
    import contextlib
    import io

    lines, out = toy
    assert len(list((out / "runs").glob("*.checkpoints.parquet"))) == 4
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        validity.main([*TOY, "--out", str(out)])
    assert err.getvalue().count("read from") == 4 and "# run 1/4" not in err.getvalue()
    run_only = ("wall_seconds", "load_average_start", "load_average_end")
    again = {k: v for k, v in _printed(buf.getvalue()).items() if k not in run_only}
    assert again == {k: v for k, v in lines.items() if k not in run_only}


def test_spread_order_spans_the_range_first(validity):
    assert validity.spread_order([1, 2, 3, 4, 5, 6]) == [3, 1, 5, 2, 4, 6]
    assert validity.spread_order([16, 32, 64]) == [32, 16, 64]
    assert validity.spread_order([]) == []
    grid = {"widths": (16, 64), "sizes": (4, 8, 16), "seeds": (1, 0), "steps": 10,
            "checkpoints": 2}  # fmt: skip
    runs = [j["run"] for j in validity.make_jobs(grid, batch_size=8, lr=1e-3, max_chars=None)]
    assert runs[:3] == ["w16-n8-s0", "w64-n8-s0", "w16-n4-s0"] and len(set(runs)) == 12


def test_write_package_data_writes_a_file_the_views_accept(validity, toy, tmp_path):
    import contextlib
    import io
    import json

    from hopaudit.views.validity import PANELS, check_validity

    lines, out = toy
    target = tmp_path / "validity.json"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        validity.main(["--from", str(out), "--boot", "300", "--write-package-data", str(target)])
    data = check_validity(json.loads(target.read_text(encoding="utf-8")))
    assert data["command"].startswith("python benchmarks/validity.py --from")
    assert data["grid"].startswith("4 tiny GPT-2 runs") and "12 checkpoints" in data["grid"]
    for panel in PANELS:
        entry = data["panels"][panel]
        q = entry["quantity"]
        assert entry["rho"] == pytest.approx(float(lines[f"rho_{q}"]), abs=1e-4)
        partial_hi = float(lines[f"rho_partial_{q}_hi"])
        assert entry["rho_partial_hi"] == pytest.approx(partial_hi, abs=1e-4)
    seq = data["panels"]["basins"]["sequence"]
    assert seq["auroc"] == pytest.approx(float(lines["auroc_seq_nn_ratio_final"]), abs=1e-4)
    if float(lines["n_memorized_checkpoints"]) > 0:
        by_name = {s["score"]: s for s in data["membership"]["scores"]}
        for tried, shipped, flip in (
            ("nn_ratio_layers", "nn_ratio_layers", False),
            ("norm", "norm_reversed", True),
            ("drift", "drift", False),
        ):
            got, line = by_name[shipped], float(lines[f"auroc_seq_{tried}"])
            assert got["auroc"] == pytest.approx(1 - line if flip else line, abs=2e-4)
            lo_fw, hi_fw = (float(lines[f"auroc_seq_{tried}{s}"]) for s in ("_lo_fw", "_hi_fw"))
            assert got["kept"] == (not lo_fw <= 0.5 <= hi_fw)
    else:
        assert "membership" not in data
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temporary sibling, renamed


def test_from_the_checkpoint_table_alone_gives_all_but_the_sequences(validity, toy, tmp_path):
    import contextlib
    import io
    import shutil

    lines, out = toy
    shutil.copy(out / "checkpoints.parquet", tmp_path / "checkpoints.parquet")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        validity.main(["--from", str(tmp_path), "--boot", "300"])
    again = _printed(buf.getvalue())
    for key, value in again.items():
        if key.startswith("auroc_seq_"):
            assert value == "nan", key
        else:
            assert value == lines[key], key
