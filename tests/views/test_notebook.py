"""demo.ipynb runs top to bottom, and every widget in it carries its panels' data.

The notebook is executed with nbclient in a kernel that runs this interpreter (a kernelspec
written to a temporary directory, so the venv's python is used whatever ``python`` means on
PATH). nbclient records the widget state the kernel sent (``store_widget_state``), binary
buffers included; each hopaudit widget is then unpacked and checked: every trait
``hopaudit.widget.widget_state`` packs is present, every array is non-empty and of the size its
layout says, and the histograms count the patterns the layer table reports. It runs on less
text and fewer training steps than the committed notebook (:data:`SMALLER`); the committed
outputs are checked as they are. Each section's wall time is printed (``pytest -s``).

Set HOPAUDIT_EXECUTED_NOTEBOOK=path to keep the executed notebook (to read its outputs).

Slow: it loads SmolLM2 and MiniLM and trains tiny models (minutes).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import anywidget
import nbformat
import numpy as np
import pytest

from hopaudit.results.comparison import member_state
from hopaudit.views.schema import is_array
from hopaudit.views.widget import (
    LAYER_STAT_COLUMNS,
    STATE_LAYOUT,
    AuditWidget,
    TimelineWidget,
    decode,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "demo.ipynb"
KERNEL = "hopaudit-venv"
CELL_TIMEOUT = 1800  # seconds; SmolLM2's forward pass is minutes on two shared cores
#: The demo as the test runs it: the same cells on less text and fewer training steps (SmolLM2's
#: forward pass and the extraction's greedy decoding are most of the notebook's time, then the
#: tiny models' training). Every view and table is still made; only the numbers in them
#: differ. Each must match exactly once.
SMALLER = {
    # SmolLM2: 32 audited sequences, one short held-out document (the first odd one alone is
    # about 40 sequences, each decoded greedily)
    "extraction=True, max_length=64, max_sequences=800": (
        "extraction=True, max_length=64, max_sequences=32"
    ),
    "texts[1::2][:10]": "texts[1::2][3:4]",
    # the four tiny GPT-2s, their audits, the Trainer run (still four checkpoints) and MiniLM
    "seq_len=16, steps=400": "seq_len=16, steps=100",
    "max_sequences=2000": "max_sequences=500",
    "max_steps=400": "max_steps=100",
    "save_steps=100": "save_steps=25",
    "logging_steps=100": "logging_steps=25",
    "full.train_ids[:300]": "full.train_ids[:100]",
    'max_sequences=800, positions="mean"': 'max_sequences=200, positions="mean"',
    # the model that memorized half of a text, and its reference
    "max_chars=40_000": "max_chars=20_000",
    "fraction=0.5, steps=600": "fraction=0.5, steps=120",
    "fraction=0.5, steps=150": "fraction=0.5, steps=30",
}
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

#: Arrays of a single-audit state that may be empty: the sequence ids are sent only when they
#: are not 0..n-1.
MAY_BE_EMPTY = {"sequence_ids", "roc_points"}  # roc_points: only with heldout=
#: What the compare and timeline views leave out of their members: the samples table, and the
#: front end (the multi-audit widget carries it once).
NOT_IN_MEMBERS = {
    "selection",  # the view's own state, not the audit's
    "can_query",  # whether a kernel answers the ask box: the live view's, not the audit's
    "sample_seq",
    "sample_values",
    "sample_columns",
    "membership",
    "roc_points",
    "_esm",
    "_css",
}


def _own_traits(cls) -> dict[str, object]:
    """The synced traits hopaudit's widget class adds to anywidget's (the packed state)."""
    base = set(anywidget.AnyWidget.class_traits(sync=True))
    own = cls.class_traits(sync=True)
    return {name: t for name, t in own.items() if name not in base and name != "height"}


AUDIT_TRAITS = _own_traits(AuditWidget)
AUDIT_ARRAYS = set(STATE_LAYOUT)
TIMELINE_TRAITS = _own_traits(TimelineWidget)  # compare's traits plus steps and alignment


# ------------------------------------------------------------------------------ helpers
def _kernelspec(tmp: Path) -> Path:
    """A kernelspec named KERNEL running *this* interpreter (the venv's python)."""
    spec = tmp / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "hopaudit venv",
                "language": "python",
            }
        )
    )
    return tmp


def _stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _section_times(nb) -> list[tuple[str, float]]:
    """Wall seconds per notebook section (a markdown heading starts one)."""
    out: list[tuple[str, float]] = []
    title = "setup"
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            headings = [ln for ln in cell.source.splitlines() if ln.startswith("#")]
            if headings:  # a section starts at a cell's last heading
                title = headings[-1].lstrip("#").strip()
            continue
        ex = cell.metadata.get("execution", {})
        if "iopub.execute_input" not in ex or "shell.execute_reply" not in ex:
            continue
        start, end = _stamp(ex["iopub.execute_input"]), _stamp(ex["shell.execute_reply"])
        sec = (end - start).total_seconds()
        if out and out[-1][0] == title:
            out[-1] = (title, out[-1][1] + sec)
        else:
            out.append((title, sec))
    return out


def _states(nb) -> dict[str, dict]:
    """model id -> the widget's state with every binary buffer put back in place as bytes."""
    store = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    out = {}
    for model_id, entry in store.items():
        state = dict(entry.get("state", {}))
        for buf in entry.get("buffers", []):
            assert buf.get("encoding") == "base64", buf.get("encoding")
            target = state
            *parents, last = buf["path"]
            for key in parents:
                target = target[key]
            target[last] = base64.b64decode(buf["data"])
        out[model_id] = state
    return out


def _views(nb) -> list[tuple[int, str]]:
    """(cell index, model id) of every widget view among the code cells' outputs."""
    found = []
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view:
                found.append((i, view["model_id"]))
    return found


def _is_hopaudit(state: dict) -> str | None:
    if not state.get("_esm"):
        return None
    if "layer_stats" in state:
        return "audit"
    if "members" in state and state.get("kind") in ("compare", "timeline"):
        return state["kind"]
    return None


def check_audit_state(state: dict, where: str, *, skip: set[str] = frozenset()) -> None:
    """Every panel's data of one single-audit widget state is there and consistent."""
    missing = sorted(set(AUDIT_TRAITS) - set(state) - skip)
    assert not missing, f"{where}: traits missing: {missing}"
    for key in sorted(AUDIT_ARRAYS - skip - MAY_BE_EMPTY):
        value = state[key]
        assert is_array(value), f"{where}: {key} is {type(value).__name__}, not a packed array"
        assert isinstance(value["view"], bytes), f"{where}: {key} holds no bytes"
        assert len(value["view"]) > 0, f"{where}: {key} is empty"
    for key in ("layer_names", "layer_info", "layer_columns", "hist_fractions", "scatter_layers"):
        assert state[key], f"{where}: {key} is empty"
    assert state["summary"].get("n_tokens"), f"{where}: summary without tokens"
    assert state["hist_bins"] > 1 and state["n_sequences"] > 0, where

    n_layers = len(state["layer_names"])
    assert state["layer_columns"] == list(LAYER_STAT_COLUMNS), where
    stats = decode(state, "layer_stats")  # reshapes: fails when the byte count is wrong
    counts = decode(state, "hist_counts")
    decode(state, "hist_range")
    assert stats.shape == (n_layers, len(LAYER_STAT_COLUMNS)), where
    # Every measured layer's histogram over all patterns counts at least one distance, at most
    # one per pattern; the layer table's r_star is sqrt(n / 2 pi e) of its width.
    col = {c: j for j, c in enumerate(LAYER_STAT_COLUMNS)}
    measured = np.isfinite(stats[:, col["r_hat"]])
    assert measured.any(), f"{where}: no measured layer"
    full = counts[:, state["hist_fractions"].index(1.0), :].sum(axis=1)
    assert (full[measured] > 0).all(), f"{where}: empty distance histograms"
    assert (full[measured] <= stats[measured, col["n_patterns"]]).all(), where
    n = stats[measured, col["n"]]
    np.testing.assert_allclose(stats[measured, col["r_star"]], np.sqrt(n / (2 * np.pi * np.e)))
    # The scatter: two uint16 per point, one basin and one ratio per point.
    n_points = sum(m["n"] for m in state["scatter_layers"])
    assert n_points > 0, f"{where}: no scatter points"
    assert decode(state, "scatter_xy").shape == (n_points, 2), where
    assert decode(state, "scatter_basin").shape == (n_points,), where
    assert decode(state, "scatter_ratio").shape == (n_points,), where
    assert decode(state, "seq_ce").shape == (state["n_sequences"],), where
    assert len(decode(state, "text_offsets")) == state["n_sequences"] + 1, where


def check_multi_state(state: dict, where: str) -> int:
    """A compare or timeline state: every member unpacks into a complete audit state."""
    keys = set(TIMELINE_TRAITS) - {"step_index"}
    if state["kind"] == "compare":
        keys -= {"steps", "alignment"}
    assert keys <= set(state), f"{where}: traits missing: {sorted(keys - set(state))}"
    assert is_array(state["blob"]) and state["blob"]["view"], f"{where}: empty blob"
    members = state["members"]
    assert len(members) >= 2 and len(members) == len(state["labels"]), where
    if state["kind"] == "timeline":
        assert len(state["steps"]) == len(members), where
        assert state["steps"] == sorted(state["steps"]), where
    for i in range(len(members)):
        check_audit_state(member_state(state, i), f"{where} member {i}", skip=NOT_IN_MEMBERS)
    return len(members)


# ------------------------------------------------------------------------------ the test
def _smaller(nb) -> None:
    """Apply :data:`SMALLER` to the code cells, each replacement found exactly once."""
    for old, new in SMALLER.items():
        cells = [c for c in nb.cells if c.cell_type == "code" and old in c.source]
        assert len(cells) == 1 and cells[0].source.count(old) == 1, f"demo.ipynb: {old!r}"
        cells[0].source = cells[0].source.replace(old, new)


def test_committed_notebook_shows_its_results_without_a_kernel():
    """demo.ipynb is committed executed, without widget state: what GitHub's preview, nbconvert
    and a reader without a kernel see is every cell's output, each hopaudit view as its static
    snapshot (an output of its own, before the widget), and no error."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "demo.ipynb has no code cells"
    assert "widgets" not in nb.metadata, "demo.ipynb was committed with widget state"
    views = 0
    for i, cell in enumerate(code):
        assert cell.execution_count is not None, f"code cell {i} was committed unexecuted"
        outputs = cell.outputs
        for k, output in enumerate(outputs):
            assert output.output_type != "error", f"code cell {i}: {output.get('ename')}"
            if WIDGET_VIEW not in output.get("data", {}):
                continue
            views += 1
            before = outputs[k - 1].get("data", {}).get("text/html", "") if k else ""
            assert "hopaudit-snapshot" in before, f"code cell {i}: a widget without its snapshot"
    assert views == 4, views  # SmolLM2, the four tiny runs, the Trainer run, MiniLM


def test_demo_notebook_runs_and_every_widget_has_its_data(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    jupyter = _kernelspec(tmp_path / "jupyter")
    paths = [str(jupyter), os.environ.get("JUPYTER_PATH", "")]
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(p for p in paths if p))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    original = copy.deepcopy(nb)
    _smaller(nb)
    client = NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=CELL_TIMEOUT,
        store_widget_state=True,
        record_timing=True,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first cell that fails
    total = time.perf_counter() - t0

    print()
    for title, seconds in _section_times(nb):
        print(f"section {seconds:7.1f} s  {title}")
    print(f"notebook_seconds={total:.1f}")

    if os.environ.get("HOPAUDIT_EXECUTED_NOTEBOOK"):  # to read the outputs; never committed
        nbformat.write(nb, os.environ["HOPAUDIT_EXECUTED_NOTEBOOK"])

    # No cell printed an error (a failing cell raises above; this catches stderr tracebacks).
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            assert output.output_type != "error", f"cell {i}: {output.get('ename')}"

    states = _states(nb)
    views = _views(nb)
    kinds = {}
    for cell_index, model_id in views:
        assert model_id in states, f"cell {cell_index}: widget {model_id} has no stored state"
        kind = _is_hopaudit(states[model_id])
        if kind is None:
            continue  # a progress bar
        kinds.setdefault(kind, []).append(cell_index)
        where = f"cell {cell_index} ({kind})"
        if kind == "audit":
            check_audit_state(states[model_id], where)
        else:
            check_multi_state(states[model_id], where)
    # SmolLM2 and MiniLM, the four tiny runs side by side, the Trainer run's timeline.
    assert len(kinds.get("audit", [])) == 2, kinds
    assert len(kinds.get("compare", [])) == 1, kinds
    assert len(kinds.get("timeline", [])) == 1, kinds
    compare_state = next(states[m] for _, m in views if _is_hopaudit(states[m]) == "compare")
    assert len(compare_state["members"]) == 4

    # Executing did not touch the committed file.
    assert nbformat.read(NOTEBOOK, as_version=4) == original
