"""What the validity study found each geometric panel's quantity predicts (docs/validity.md).

``benchmarks/validity.py --write-package-data`` measures, on tiny GPT-2s whose memorization is
known, how each panel's quantity goes with the members' extraction rate (Spearman's rho over
checkpoints, a 95 % interval from a bootstrap over runs, and the partial rho given the training
loss), and writes the numbers to ``validity.json`` beside this file, with the command, the
hopaudit version and the date that produced them. The views (widget, report, static snapshot)
show one line per panel made from those numbers by :func:`panel_line`, so a reader sees what
the panel has been measured to mean, or that it predicted nothing measurable.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from hopaudit.errors import FormatError

__all__ = [
    "PANELS",
    "VALIDITY_PATH",
    "check_validity",
    "load_validity",
    "membership_line",
    "panel_line",
    "validity_state",
]

#: The shipped numbers (written by ``benchmarks/validity.py --write-package-data``).
VALIDITY_PATH = Path(__file__).with_name("validity.json")
#: The geometric panels that carry a line, and where the study is described.
PANELS = ("distances", "radii", "floor", "basins")
DOC = "docs/validity.md"
_TOP_KEYS = ("command", "hopaudit_version", "date", "grid", "doc", "panels")
_PANEL_KEYS = ("quantity", "label", "rho", "rho_lo", "rho_hi", "rho_partial",
               "rho_partial_lo", "rho_partial_hi")  # fmt: skip
_SEQUENCE_KEYS = ("label", "auroc", "auroc_lo", "auroc_hi")


def _number(where: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FormatError(f"{where} must be a number, got {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        raise FormatError(f"{where} must be a finite number in [{low}, {high}], got {value!r}")
    return float(value)


def check_validity(data: Any) -> dict[str, Any]:
    """``data`` if it has the validity file's format, else a FormatError naming what is wrong:
    the top keys, a non-empty ``command``, an ISO ``date``, and for every panel of
    :data:`PANELS` its quantity, label and correlations in [-1, 1] with ``lo <= rho <= hi``;
    an optional ``sequence`` entry (the per-sequence nn / r-hat score) holds AUROCs in [0, 1],
    and an optional top-level ``membership`` entry every per-sequence geometric score tried."""
    if not isinstance(data, dict):
        raise FormatError(f"the validity data must be a JSON object, got {type(data).__name__}")
    missing = [k for k in _TOP_KEYS if k not in data]
    if missing:
        raise FormatError(f"the validity data lacks {', '.join(missing)}")
    for key in ("command", "hopaudit_version", "grid", "doc"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise FormatError(f"validity data: {key} must be a non-empty string")
    if not isinstance(data["date"], str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", data["date"]):
        raise FormatError(f"validity data: date must be YYYY-MM-DD, got {data['date']!r}")
    panels = data["panels"]
    if not isinstance(panels, dict) or sorted(panels) != sorted(PANELS):
        got = sorted(panels) if isinstance(panels, dict) else type(panels).__name__
        raise FormatError(f"validity data: panels must be exactly {list(PANELS)}, got {got}")
    for name in PANELS:
        _check_panel(name, panels[name])
    if data.get("membership") is not None:
        _check_membership(data["membership"])
    return data


def _check_membership(entry: Any) -> None:
    """The optional ``membership`` entry: the memorized checkpoints counted, the loss's AUROC,
    and every geometric per-sequence score tried with its intervals and whether it was kept."""
    if not isinstance(entry, dict) or any(
        k not in entry for k in ("n_checkpoints", "loss", "scores")
    ):
        raise FormatError("validity data: membership needs n_checkpoints, loss and scores")
    n = entry["n_checkpoints"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise FormatError(f"validity data: membership.n_checkpoints must be a count, got {n!r}")
    _check_aurocs("membership.loss", entry["loss"], ("auroc", "auroc_lo", "auroc_hi"))
    if not isinstance(entry["scores"], list) or not entry["scores"]:
        raise FormatError("validity data: membership.scores must be a non-empty list")
    for i, score in enumerate(entry["scores"]):
        where = f"membership.scores[{i}]"
        if not isinstance(score, dict):
            raise FormatError(f"validity data: {where} must be an object")
        for key in ("score", "label"):
            if not isinstance(score.get(key), str) or not score[key]:
                raise FormatError(f"validity data: {where}.{key} must be a non-empty string")
        for key in ("shipped", "kept"):
            if not isinstance(score.get(key), bool):
                raise FormatError(f"validity data: {where}.{key} must be true or false")
        _check_aurocs(where, score, _SCORE_AUROCS)
        if score["kept"] == (score["auroc_lo_fw"] <= 0.5 <= score["auroc_hi_fw"]):
            raise FormatError(
                f"validity data: {where}.kept must say whether its family-wise interval "
                "excludes 0.5"
            )


_SCORE_AUROCS = ("auroc", "auroc_lo", "auroc_hi", "auroc_lo_fw", "auroc_hi_fw")


def _check_aurocs(where: str, entry: Any, keys: tuple[str, ...]) -> None:
    """AUROCs in [0, 1], each point inside its interval(s), a wider family-wise one nesting."""
    if not isinstance(entry, dict) or any(k not in entry for k in keys):
        raise FormatError(f"validity data: {where} needs {', '.join(keys)}")
    v = {k: _number(f"{where}.{k}", entry[k], 0.0, 1.0) for k in keys}
    if not v["auroc_lo"] <= v["auroc"] <= v["auroc_hi"]:
        raise FormatError(f"validity data: {where}.auroc lies outside its interval")
    if (
        "auroc_lo_fw" in v
        and not v["auroc_lo_fw"] <= v["auroc_lo"] <= v["auroc_hi"] <= v["auroc_hi_fw"]
    ):
        raise FormatError(f"validity data: {where}'s family-wise interval must hold its 95 % one")


def _check_panel(name: str, entry: Any) -> None:
    """One panel's entry of the validity data (see :func:`check_validity`)."""
    if not isinstance(entry, dict) or any(k not in entry for k in _PANEL_KEYS):
        raise FormatError(f"validity data: panel {name!r} needs {', '.join(_PANEL_KEYS)}")
    for key in ("quantity", "label"):
        if not isinstance(entry[key], str) or not entry[key]:
            raise FormatError(f"validity data: {name}.{key} must be a non-empty string")
    for stem in ("rho", "rho_partial"):
        lo, value, hi = (
            _number(f"{name}.{stem}{s}", entry[f"{stem}{s}"], -1.0, 1.0) for s in ("_lo", "", "_hi")
        )
        if not lo <= value <= hi:
            raise FormatError(
                f"validity data: {name}.{stem} = {value} lies outside its interval [{lo}, {hi}]"
            )
    seq = entry.get("sequence")
    if seq is not None:
        if not isinstance(seq, dict) or any(k not in seq for k in _SEQUENCE_KEYS):
            raise FormatError(f"validity data: {name}.sequence needs {_SEQUENCE_KEYS}")
        for key in ("auroc", "auroc_lo", "auroc_hi"):
            _number(f"{name}.sequence.{key}", seq[key], 0.0, 1.0)


def load_validity(path: str | Path | None = None) -> dict[str, Any] | None:
    """The shipped validity numbers (checked), or None where the file is absent."""
    path = VALIDITY_PATH if path is None else Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: not JSON ({exc})") from exc
    return check_validity(data)


def _interval(value: float, lo: float, hi: float, digits: int = 2) -> str:
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def panel_line(entry: dict[str, Any]) -> str:
    """One or two sentences: whether the panel's quantity went with the members' extraction
    rate (rho, 95 % interval), whether it still did given the training loss (partial rho), or
    that it predicted nothing measurable; plus the per-sequence score where there is one."""
    label = entry["label"]
    rho = _interval(entry["rho"], entry["rho_lo"], entry["rho_hi"])
    part = _interval(entry["rho_partial"], entry["rho_partial_lo"], entry["rho_partial_hi"])
    alone = not entry["rho_lo"] <= 0.0 <= entry["rho_hi"]
    beyond = not entry["rho_partial_lo"] <= 0.0 <= entry["rho_partial_hi"]
    if not alone and not beyond:
        text = (f"{label}: predicted nothing measurable about memorization (ρ with the "
                f"extraction rate = {rho}; given the loss, partial ρ = {part}).")  # fmt: skip
    else:
        way = ("rose" if entry["rho"] > 0 else "fell") if alone else "did not measurably move"
        text = f"{label} {way} with the members' extraction rate (ρ = {rho}); "
        if beyond:
            text += f"given the training loss it still predicted some (partial ρ = {part})."
        else:
            text += f"given the training loss it added nothing measurable (partial ρ = {part})."
    seq = entry.get("sequence")
    if seq is not None:
        auroc = _interval(seq["auroc"], seq["auroc_lo"], seq["auroc_hi"])
        if seq["auroc_lo"] <= 0.5 <= seq["auroc_hi"]:
            text += (f" Per sequence, {seq['label']} did not tell memorized sequences from "
                     f"held-out ones (AUROC {auroc}).")  # fmt: skip
        else:
            text += f" Per sequence, {seq['label']} separated them at AUROC {auroc}."
    return text


def membership_line(entry: dict[str, Any]) -> str:
    """What the study found the per-sequence geometric scores worth: the kept ones with their
    family-wise intervals against the loss's AUROC, and the ones tried and dropped."""

    def fw(s: dict[str, Any]) -> str:
        return f"{s['label']} {_interval(s['auroc'], s['auroc_lo_fw'], s['auroc_hi_fw'], 3)}"

    kept = [s for s in entry["scores"] if s["kept"]]
    shown = [s for s in entry["scores"] if s["shipped"] and not s["kept"]]
    dropped = [s for s in entry["scores"] if not s["shipped"] and not s["kept"]]
    loss = _interval(entry["loss"]["auroc"], entry["loss"]["auroc_lo"], entry["loss"]["auroc_hi"])
    where = f"on the study's {entry['n_checkpoints']} memorized checkpoints"
    if kept:
        text = (f"Per sequence, {where}, the geometric scores kept here told members from "
                f"held-out text by a few hundredths at most: {'; '.join(fw(s) for s in kept)} "
                f"(AUROC, family-wise interval), where the loss reached {loss}: measurable, "
                "not a detector.")  # fmt: skip
    else:
        text = (f"Per sequence, {where}, no geometric score told members from held-out text "
                f"beyond chance, where the loss reached {loss}.")  # fmt: skip
    if shown:
        text += f" Shown, but its interval reaches 0.5: {'; '.join(fw(s) for s in shown)}."
    if dropped:
        text += f" Tried and dropped (interval reaches 0.5): {'; '.join(fw(s) for s in dropped)}."
    return text


def validity_state(data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The views' ``validity`` trait: ``lines`` (panel -> sentence; the membership panel's
    too where the file has it), ``doc``, ``grid``,
    ``date`` and ``version``; empty where no validity data is shipped."""
    data = load_validity() if data is None else check_validity(data)
    if data is None:
        return {}
    lines = {name: panel_line(data["panels"][name]) for name in PANELS}
    if data.get("membership") is not None:
        lines["membership"] = membership_line(data["membership"])
    return {
        "lines": lines,
        "doc": data["doc"],
        "grid": data["grid"],
        "date": data["date"],
        "version": data["hopaudit_version"],
    }
