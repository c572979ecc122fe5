"""The hopaudit command: exit status 0 / 1 / 2, one readable line on user errors."""

from __future__ import annotations

import random
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from tiny_models import TOKENIZER_TEXT, tiny_model, tiny_tokenizer

import hopaudit
from hopaudit.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model, _ = tiny_model("gpt2")
    tok = tiny_tokenizer()
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    rng = random.Random(0)
    words = TOKENIZER_TEXT.split()
    text = "\n\n".join(" ".join(rng.choice(words) for _ in range(40)) for _ in range(60))
    (root / "data.txt").write_text(text)
    return root


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hopaudit", *args], capture_output=True, text=True, timeout=600
    )


def test_audit_prints_summary_and_table(model_dir, capsys):
    code = main(
        [
            "audit",
            str(model_dir / "model"),
            str(model_dir / "data.txt"),
            "--max-length",
            "16",
            "--quiet",
            "--save",
            str(model_dir / "saved"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    saved = hopaudit.load(model_dir / "saved")
    assert list(saved.layers["name"]) == [*(f"transformer.h.{i}" for i in range(3)), "final"]
    assert "cross_entropy" in out and "n_params_blocks" in out
    for i in range(3):
        assert f"transformer.h.{i}" in out
    assert "final" in out


def test_user_error_is_one_line_and_status_1(tmp_path):
    proc = _run("audit", str(tmp_path / "missing-model"), str(tmp_path / "missing.txt"))
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("hopaudit: error:")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_bad_usage_is_status_2():
    proc = _run("audit")
    assert proc.returncode == 2
    assert "usage" in proc.stderr
    assert _run("frobnicate").returncode == 2


def test_help_lists_every_command():
    proc = _run("--help")
    assert proc.returncode == 0
    for command in ("audit", "demo"):
        assert command in proc.stdout


# ------------------------------------------------------------------ failures (issue 12)
@pytest.fixture(scope="module")
def saved_dir(model_dir):
    model, _ = tiny_model("gpt2")
    rng = random.Random(1)
    words = TOKENIZER_TEXT.split()
    texts = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(40)]
    a = hopaudit.audit(
        model, texts, tokenizer=tiny_tokenizer(), max_length=10, progress=False, umap_layers=[]
    )
    return a.save(model_dir / "for-views")


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hopaudit: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_unwritable_output_is_one_line(saved_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    line = _one_error_line(
        _run("compare", str(saved_dir), "--out", str(blocker / "sub" / "report.html"))
    )
    assert "a-file" in line
    assert blocker.read_text() == "x"


def test_audit_compile_flag_compiles_the_blocks_and_the_saved_audit_says_so(
    model_dir, monkeypatch, tmp_path
):
    import torch

    calls = []

    def stand_in(fn, **kwargs):  # torch.compile, counted; the blocks run as they are
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", stand_in)
    args = ["audit", str(model_dir / "model"), str(model_dir / "data.txt"), "--max-length", "16"]
    assert main([*args, "--quiet", "--compile", "--save", str(tmp_path / "a")]) == 0
    assert [c["dynamic"] for c in calls] == [True] * 3  # the three blocks, not the final norm
    saved = hopaudit.load(tmp_path / "a")
    assert saved.options["compile"] is True
    assert saved.summary()["compiled"] == "torch.compile: 3 blocks"
    calls.clear()
    assert main([*args, "--quiet", "--save", str(tmp_path / "b")]) == 0
    assert calls == [] and hopaudit.load(tmp_path / "b").summary()["compiled"] is None


def test_damaged_saved_audit_is_one_line(saved_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(saved_dir, copy)
    (copy / "capture.npz").write_bytes(b"PK\x03\x04 not a zip")
    line = _one_error_line(_run("compare", str(copy), "--out", str(tmp_path / "r.html")))
    assert "capture.npz" in line
    assert not (tmp_path / "r.html").exists()


def test_unexpected_errors_are_one_line_too(monkeypatch, capsys, saved_dir, tmp_path):
    import hopaudit.results.comparison

    def boom(*args, **kwargs):
        raise TypeError("planted\nover two lines")

    monkeypatch.setattr(hopaudit.results.comparison, "compare", boom)
    code = main(["compare", str(saved_dir), "--out", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "unexpected TypeError: planted over two lines" in err


def test_a_closed_pipe_ends_quietly(saved_dir, tmp_path):
    """``hopaudit ... | head -c 10``: the reader goes away; no traceback, status 1."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hopaudit", "compare", str(saved_dir), str(saved_dir),
         "--out", str(tmp_path / "r.html")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    proc.stdout.close()  # before it writes anything
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    assert err.decode().strip() == ""


# ------------------------------------------------------------------ formats (issue 15)
def test_version_exits_0():
    proc = _run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"hopaudit {hopaudit.__version__}"


def test_show_json_parses_and_matches_the_audit(saved_dir):
    import json
    import math

    proc = _run("show", str(saved_dir), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # stdout holds the JSON alone
    a = hopaudit.load(saved_dir)
    assert data["summary"] == json.loads(json.dumps(a.summary()))
    layers = a.layers
    assert [row["name"] for row in data["layers"]] == list(layers["name"])
    for row, r_hat in zip(data["layers"], layers["r_hat"], strict=True):
        assert row["r_hat"] == (None if math.isnan(r_hat) else pytest.approx(r_hat, rel=1e-12))


def test_show_csv_reads_back(saved_dir):
    import io

    import pandas as pd

    proc = _run("show", str(saved_dir), "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(io.StringIO(proc.stdout))
    a = hopaudit.load(saved_dir)
    assert list(df.columns) == list(a.layers.columns)
    assert df["r_ratio"].tolist() == pytest.approx(a.layers["r_ratio"].tolist(), rel=1e-12)


def test_catalog_csv_and_compare_json(saved_dir, tmp_path):
    import io
    import json

    import pandas as pd

    proc = _run("catalog", str(saved_dir), "--table", "samples", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(io.StringIO(proc.stdout), keep_default_na=False)
    assert list(df.columns[:5]) == ["audit", "model", "label", "step", "saved_at"]
    assert df["text"].tolist() == hopaudit.load(saved_dir).texts
    proc = _run(
        "compare", str(saved_dir), str(saved_dir), "--out", str(tmp_path / "r.html"),
        "--format", "json", "--labels", "a,b",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [row["label"] for row in json.loads(proc.stdout)] == ["a", "b"]
    assert "report written" in proc.stderr and (tmp_path / "r.html").exists()


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_head_1_leaves_no_traceback(saved_dir, fmt):
    """``hopaudit show DIR | head -1``: head exits after one line; hopaudit ends quietly."""
    cmd = f"{sys.executable} -m hopaudit show '{saved_dir}' --format {fmt} | head -1"
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=600
    )
    assert len(proc.stdout.splitlines()) == 1
    assert proc.stderr == "", proc.stderr
    assert proc.returncode in (0, 1)  # 1: hopaudit saw the closed pipe; 0: it had finished


def test_py_typed_is_in_the_package():
    from pathlib import Path

    assert (Path(hopaudit.__file__).parent / "py.typed").is_file()


HEAVY = ("torch", "transformers", "umap", "ray", "numba", "sklearn")


def _imported(*args: str) -> set[str]:
    """Top-level modules a fresh ``python -X importtime`` run of ``args`` imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln.split("|")[-1] for ln in proc.stderr.splitlines() if ln.startswith("import time:")]
    return {ln.strip().split(".")[0] for ln in lines}


def test_import_hopaudit_imports_nothing_heavy():
    """``import hopaudit`` resolves its names on first use: no torch, transformers, umap, Ray
    (a module list, not a time: it holds on any machine)."""
    found = _imported("-c", "import hopaudit; hopaudit.__version__")
    assert "hopaudit" in found
    assert found.isdisjoint(HEAVY), found & set(HEAVY)


def test_version_and_show_import_no_model_library(saved_dir):
    """``hopaudit --version`` and ``hopaudit show`` read files only (a second at most idle)."""
    assert _imported("-m", "hopaudit", "--version").isdisjoint(HEAVY)
    found = _imported("-m", "hopaudit", "show", str(saved_dir))
    assert "pandas" in found  # it did print the table
    assert found.isdisjoint(HEAVY), found & set(HEAVY)


def test_show_writes_infinite_and_astronomical_floors_in_words(saved_dir, capsys):
    """``hopaudit show``'s layer table: a floor of inf or 1.9e152 nats is written as what it
    means, a finite one as digits."""
    from hopaudit.cli import _print_report

    a = hopaudit.load(saved_dir)
    layers = a.layers.copy()
    layers.loc[0, "floor_low"], layers.loc[1, "floor_low"] = np.inf, 1.884e152
    finite = float(layers.loc[2, "floor_low"])
    stand_in = SimpleNamespace(summary_text=lambda: "summary", layers=layers)
    _print_report(stand_in)
    out = capsys.readouterr().out
    assert "no finite floor: Z < 1e-308 (over-packed)" in out
    assert "> 1e100 nats: Z < 1e-100 (over-packed)" in out
    assert "inf" not in out.split("summary", 1)[1] and "e+152" not in out
    assert f"{finite:.3g}" in out


def test_demo_audits_with_held_out_text_and_extraction(monkeypatch, capsys):
    """``hopaudit demo`` fills the membership panel: stored and held-out documents of the pydoc
    corpus, disjoint, and greedy extraction over the whole sequence length."""
    import hopaudit.api
    from hopaudit.zoo.models import corpus

    seen = {}

    def stand_in(model, data, **kwargs):
        seen.update(kwargs, model=model, data=data)
        raise KeyboardInterrupt  # stop before any model is loaded

    monkeypatch.setattr(hopaudit.api, "audit", stand_in)
    assert main(["demo", "--max-length", "48"]) == 130
    assert "hopaudit demo: SmolLM2" in capsys.readouterr().err  # said before anything slow
    docs = corpus("pydoc")
    assert seen["model"] == "smollm2" and seen["max_length"] == 48
    assert seen["data"] and seen["heldout"] and set(seen["data"]).isdisjoint(seen["heldout"])
    assert set(seen["data"]) | set(seen["heldout"]) <= set(docs)
    assert seen["extraction"] == {"prefix": 24, "suffix": 24}


def test_csv_cells_that_start_like_a_formula_are_quoted(saved_dir, tmp_path):
    """Issue 26: texts and labels beginning with =, +, -, @, tab or CR come out of catalog and
    compare --format csv with a leading apostrophe (OWASP), so a spreadsheet shows them as
    text; other cells and every number are as they were."""
    import csv
    import io
    import json
    import shutil

    import pandas as pd
    from fakes import resign

    root = tmp_path / "crafted"
    shutil.copytree(saved_dir, root)
    n = len(json.loads((root / "texts.json").read_text()))
    starts = ['=HYPERLINK("http://x.example","m")', "+1+2", "-3+4", "@SUM(A1)", "\tx", "\ry", "ok"]
    texts = [starts[i % len(starts)] + f" {i}" for i in range(n)]
    (root / "texts.json").write_text(json.dumps(texts))
    samples = pd.read_parquet(root / "samples.parquet")
    samples["text"] = texts
    samples.to_parquet(root / "samples.parquet", index=False)
    resign(root)
    rows = list(
        csv.DictReader(io.StringIO(_csv("catalog", str(root), "--table", "samples"), newline=""))
    )
    assert [r["text"] for r in rows] == ["'" + t if t[0] in "=+-@\t\r" else t for t in texts]
    assert all(float(r["cross_entropy"]) > 0 for r in rows)  # numbers untouched
    out = _csv(
        "compare", str(root), str(root), "--out", str(tmp_path / "r.html"), "--labels", "=1+1,@b"
    )
    labels = [r["label"] for r in csv.DictReader(io.StringIO(out, newline=""))]
    assert labels == ["'=1+1", "'@b"]


def _csv(*args: str) -> str:
    """stdout of ``hopaudit ARGS --format csv``, bytes decoded as they are (a carriage return
    inside a cell stays one)."""
    proc = subprocess.run(
        [sys.executable, "-m", "hopaudit", *args, "--format", "csv"],
        capture_output=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return proc.stdout.decode("utf-8")
