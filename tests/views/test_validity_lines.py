"""The validity file the package ships (hopaudit/views/validity.json, written by
benchmarks/validity.py --write-package-data): its format, the check that refuses a damaged one,
the sentence each panel shows, and that the widget state and the static snapshot carry them."""

from __future__ import annotations

import copy
import json
import re

import pytest
from fakes import fake_audit

from hopaudit.errors import FormatError
from hopaudit.views.snapshot import snapshot_html, snapshot_text
from hopaudit.views.validity import (
    PANELS,
    VALIDITY_PATH,
    check_validity,
    load_validity,
    membership_line,
    panel_line,
)


@pytest.fixture(scope="module")
def shipped():
    return json.loads(VALIDITY_PATH.read_text(encoding="utf-8"))


def test_the_shipped_file_has_the_format(shipped):
    assert check_validity(shipped) is shipped
    assert shipped["command"].startswith("python benchmarks/validity.py")
    assert "--write-package-data" in shipped["command"]
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", shipped["hopaudit_version"])
    assert re.fullmatch(r"20\d\d-\d\d-\d\d", shipped["date"])
    assert shipped["doc"] == "docs/validity.md"
    assert set(shipped["panels"]) == set(PANELS)
    for entry in shipped["panels"].values():
        assert entry["rho_lo"] <= entry["rho"] <= entry["rho_hi"]
        assert entry["rho_partial_lo"] <= entry["rho_partial"] <= entry["rho_partial_hi"]
    seq = shipped["panels"]["basins"]["sequence"]
    assert 0 <= seq["auroc_lo"] <= seq["auroc"] <= seq["auroc_hi"] <= 1
    assert load_validity() == shipped


def test_the_scores_the_package_keeps_are_those_the_study_kept(shipped):
    """Audit.membership's geometric scores beside -(nn / r_hat) per layer are exactly those
    whose family-wise interval excludes 0.5 in the shipped numbers (docs/validity.md)."""
    from hopaudit.evidence.geometric import KEPT_SCORES

    scores = shipped["membership"]["scores"]
    kept = {s["score"] for s in scores if s["kept"]}
    assert kept == set(KEPT_SCORES)
    for s in scores:
        assert s["kept"] == (not s["auroc_lo_fw"] <= 0.5 <= s["auroc_hi_fw"]), s["score"]
        assert s["auroc_lo_fw"] <= s["auroc_lo"] <= s["auroc"] <= s["auroc_hi"] <= s["auroc_hi_fw"]
    assert {s["score"] for s in scores if s["shipped"]} == {"geometric", *KEPT_SCORES}


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda d: d.pop("date"), "lacks date"),
        (lambda d: d.update(date="5 Dec 2026"), "YYYY-MM-DD"),
        (lambda d: d.update(command=""), "command"),
        (lambda d: d["panels"].pop("floor"), "exactly"),
        (lambda d: d["panels"]["radii"].pop("rho_lo"), "needs"),
        (lambda d: d["panels"]["radii"].update(rho=1.5), r"\[-1.0, 1.0\]"),
        (lambda d: d["panels"]["radii"].update(rho="0.8"), "must be a number"),
        (lambda d: d["panels"]["radii"].update(rho_lo=0.9, rho=0.5, rho_hi=0.95), "outside"),
        (lambda d: d["panels"]["basins"]["sequence"].update(auroc=float("nan")), "finite"),
        (lambda d: d["membership"].pop("loss"), "membership needs"),
        (lambda d: d["membership"]["scores"][1].update(kept=False), "kept must say"),
        (lambda d: d["membership"]["scores"][1].update(auroc_lo_fw=0.51), "family-wise"),
        (lambda d: d["membership"]["scores"][0].update(auroc=0.9), "outside"),
        (lambda d: d["membership"].update(n_checkpoints=-1), "a count"),
    ],
)
def test_a_damaged_file_is_refused_with_what_is_wrong(shipped, damage, match):
    data = copy.deepcopy(shipped)
    damage(data)
    with pytest.raises(FormatError, match=match):
        check_validity(data)


def test_load_reads_a_path_and_refuses_what_is_not_json(shipped, tmp_path):
    assert load_validity(tmp_path / "absent.json") is None
    (tmp_path / "v.json").write_text(json.dumps(shipped))
    assert load_validity(tmp_path / "v.json") == shipped
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FormatError, match="not JSON"):
        load_validity(tmp_path / "bad.json")


def _entry(rho, lo, hi, prho, plo, phi):
    return {"quantity": "q", "label": "Q", "rho": rho, "rho_lo": lo, "rho_hi": hi,
            "rho_partial": prho, "rho_partial_lo": plo, "rho_partial_hi": phi}  # fmt: skip


def test_panel_line_says_what_the_intervals_say():
    line = panel_line(_entry(0.86, 0.67, 0.91, 0.12, 0.003, 0.26))
    assert line.startswith("Q rose with the members' extraction rate (ρ = 0.86 [0.67, 0.91])")
    assert "still predicted some (partial ρ = 0.12 [0.00, 0.26])" in line
    line = panel_line(_entry(-0.76, -0.84, -0.57, 0.10, -0.17, 0.32))
    assert "Q fell with" in line and "added nothing measurable (partial ρ = 0.10" in line
    line = panel_line(_entry(-0.2, -0.61, 0.1, 0.05, -0.1, 0.2))
    assert line.startswith("Q: predicted nothing measurable about memorization")
    assert "-0.20 [-0.61, 0.10]" in line
    seq = {"label": "nn / r̂", "auroc": 0.49, "auroc_lo": 0.46, "auroc_hi": 0.52}
    line = panel_line({**_entry(0.5, 0.2, 0.7, 0.0, -0.1, 0.1), "sequence": seq})
    assert "nn / r̂ did not tell memorized sequences from held-out ones (AUROC 0.49" in line
    seq = {"label": "s", "auroc": 0.6, "auroc_lo": 0.55, "auroc_hi": 0.65}
    line = panel_line({**_entry(0.5, 0.2, 0.7, 0.0, -0.1, 0.1), "sequence": seq})
    assert "s separated them at AUROC 0.60 [0.55, 0.65]" in line


def _score(name, auroc, lo_fw, hi_fw, kept, shipped=True):
    return {"score": name, "label": name.upper(), "shipped": shipped, "kept": kept,
            "auroc": auroc, "auroc_lo": lo_fw + 0.005, "auroc_hi": hi_fw - 0.005,
            "auroc_lo_fw": lo_fw, "auroc_hi_fw": hi_fw}  # fmt: skip


def test_membership_line_names_kept_shown_and_dropped_scores():
    loss = {"auroc": 1.0, "auroc_lo": 1.0, "auroc_hi": 1.0}
    entry = {"n_checkpoints": 43, "loss": loss, "scores": [
        _score("a", 0.523, 0.5006, 0.545, True), _score("b", 0.51, 0.482, 0.539, False),
        _score("c", 0.495, 0.454, 0.540, False, shipped=False)]}  # fmt: skip
    line = membership_line(entry)
    assert "43 memorized checkpoints" in line
    assert "kept here told members from held-out text by a few hundredths at most: A 0.523 " \
        "[0.501, 0.545]" in line  # fmt: skip
    assert "the loss reached 1.00 [1.00, 1.00]" in line
    assert "Shown, but its interval reaches 0.5: B 0.510 [0.482, 0.539]" in line
    assert "Tried and dropped (interval reaches 0.5): C 0.495 [0.454, 0.540]" in line
    entry["scores"] = [entry["scores"][1]]
    assert "no geometric score told members from held-out text beyond chance" in (
        membership_line(entry)
    )


def test_widget_state_and_snapshot_carry_one_line_per_panel(shipped):
    state = fake_audit(n_blocks=2, d=60, n=8, seed=1).widget_state()
    v = state["validity"]
    assert set(v["lines"]) == {*PANELS, "membership"}
    assert v["lines"] == {
        **{p: panel_line(shipped["panels"][p]) for p in PANELS},
        "membership": membership_line(shipped["membership"]),
    }
    assert v["doc"] == "docs/validity.md" and v["grid"] == shipped["grid"]
    assert v["version"] == shipped["hopaudit_version"] and v["date"] == shipped["date"]
    page = snapshot_html(state)
    for p in PANELS:
        found = re.search(rf'<li data-validity="{p}">(.*?)</li>', page)
        assert found, p
        rho = f"{shipped['panels'][p]['rho']:.2f}"
        assert rho in found.group(1)
    found = re.search(r'<li data-validity="membership">(.*?)</li>', page)
    assert found and "nearest held-out / nearest stored 0.535" in found.group(1)
    assert "docs/validity.md" in page
    text = snapshot_text(state)
    assert "validity study" in text and text.count("ρ = ") >= len(PANELS)


def test_no_validity_file_no_lines(monkeypatch, tmp_path):
    import hopaudit.views.validity as validity

    monkeypatch.setattr(validity, "VALIDITY_PATH", tmp_path / "absent.json")
    assert validity.validity_state() == {}
    state = fake_audit(n_blocks=1, d=40, n=8, seed=2).widget_state()
    assert state["validity"] == {}
    assert "validity study" not in snapshot_html(state)
