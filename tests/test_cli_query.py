"""hopaudit query DIR --model MODEL TEXT...: the saved audit asked from the shell, in each format,
against Audit.query in Python; a wrong model is one error line and status 1."""

from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from tiny_models import TOKENIZER_TEXT, tiny_model, tiny_tokenizer

import hopaudit
from hopaudit.cli import main
from hopaudit.model.loading import load_model

TEXTS = ["the quick brown fox jumps over the lazy dog and the memory", "Ada and Alan and Grace"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-query")
    model, _ = tiny_model("gpt2")
    model.save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    other, _ = tiny_model("gpt2", n_layer=2)
    other.save_pretrained(root / "other")
    tiny_tokenizer().save_pretrained(root / "other")
    model, tok = load_model(str(root / "model"))
    rng = random.Random(3)
    words = TOKENIZER_TEXT.split()
    texts = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(30)]
    a = hopaudit.audit(model, texts, tokenizer=tok, max_length=16, progress=False, umap_layers=[])
    a.save(root / "audit")
    expected = a.query(TEXTS, k=3, extraction={"prefix": 4, "suffix": 4}, place=False)
    return root, expected


def _query(root, fmt, capsys, *extra):
    args = ["query", str(root / "audit"), "--model", str(root / "model"), *TEXTS]
    code = main([*args, "-k", "3", "--extraction", "4,4", "--format", fmt, *extra])
    return code, capsys.readouterr()


def test_json_equals_the_python_query(saved, capsys):
    root, expected = saved
    code, out = _query(root, "json", capsys)
    assert code == 0
    got = json.loads(out.out)
    nearest = pd.DataFrame(got["nearest"])
    assert list(nearest["sequence"]) == list(expected.nearest["sequence"])
    assert list(nearest["name"]) == list(expected.nearest["name"])
    pd.testing.assert_series_equal(
        nearest["distance"], expected.nearest["distance"].astype(float), atol=1e-6
    )
    scores = pd.DataFrame(got["scores"])
    assert list(scores["extracted_tokens"]) == list(expected.scores["extracted_tokens"])
    pd.testing.assert_series_equal(scores["loss"], expected.scores["loss"], atol=1e-6)


def test_csv_is_one_row_per_text_layer_and_neighbour(saved, capsys):
    root, expected = saved
    code, out = _query(root, "csv", capsys)
    assert code == 0
    table = pd.read_csv(io.StringIO(out.out))
    assert len(table) == len(expected.nearest) == 2 * 4 * 3  # texts x layers x k
    assert {"query", "layer", "rank", "sequence", "distance", "inside_ball", "loss"} <= set(
        table.columns
    )


def test_table_and_layers(saved, capsys):
    root, _ = saved
    code, out = _query(root, "table", capsys, "--layers", "0,final")
    assert code == 0
    assert "distance_over_r_hat" in out.out and "extracted_tokens" in out.out
    assert "transformer.h.1" not in out.out and "final" in out.out


def test_wrong_model_is_one_error_line(saved):
    root, _ = saved
    proc = subprocess.run(
        [sys.executable, "-m", "hopaudit", "query", str(root / "audit"), "--model",
         str(root / "other"), "a text"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 1
    # transformers' own loading bar may come first; hopaudit's error is one line, the last
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("hopaudit: error:") and "not the audited one" in last, proc.stderr
    assert "n_layer: 2 vs 3" in last and "Traceback" not in proc.stderr


def test_a_moved_copy_of_the_model_passes(saved, capsys):
    root, expected = saved
    if not (root / "moved").exists():
        shutil.copytree(root / "model", root / "moved")  # same weights, another name
    args = ["query", str(root / "audit"), "--model", str(root / "moved"), *TEXTS, "-k", "3"]
    assert main([*args, "--extraction", "off", "--format", "json"]) == 0
    got = pd.DataFrame(json.loads(capsys.readouterr().out)["nearest"])
    assert list(got["sequence"]) == list(expected.nearest["sequence"])
