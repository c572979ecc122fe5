"""An encoder-decoder's report in Chromium: its two stacks drawn as two groups."""

from __future__ import annotations

import pytest
from tiny_models import TOKENIZER_TEXT, tiny_model, tiny_seq2seq, tiny_tokenizer

import hopaudit


@pytest.fixture(scope="module")
def t5_audit():
    words = TOKENIZER_TEXT.split()
    texts = [" ".join(words[i : i + 12]) for i in range(0, 300, 3)]
    model = tiny_seq2seq("t5")
    tok = tiny_tokenizer(template="cls_sep")
    return hopaudit.audit(
        model, texts, tokenizer=tok, chunking="document", positions="all", progress=False,
        umap_layers=[],
    )  # fmt: skip


def test_layer_menus_and_the_radii_chart_group_the_stacks(open_report, t5_audit, tmp_path):
    p = open_report(path=t5_audit.to_html(tmp_path / "t5.html"))
    groups = p.page.eval_on_selector_all(
        '[data-panel="distances"] optgroup', "els => els.map(e => [e.label, e.children.length])"
    )
    assert groups == [["encoder", 3], ["decoder", 3]]
    radii = p.page.locator('[data-panel="radii"] .ha-radii').inner_text()
    assert "encoder" in radii and "decoder" in radii
    assert p.errors == []


def test_compare_draws_one_line_per_stack(open_report, t5_audit, tmp_path):
    model, _ = tiny_model("gpt2")
    other = hopaudit.audit(
        model, t5_audit.texts, tokenizer=tiny_tokenizer(), chunking="document", progress=False,
        umap_layers=[],
    )  # fmt: skip
    path = hopaudit.compare(t5_audit, other, labels=["t5", "gpt2"]).to_html(tmp_path / "c.html")
    p = open_report(path=path)
    note = p.page.locator('[data-panel="compare-radii"] .ha-note').inner_text()
    assert "Dashed: an encoder-decoder's encoder" in note
    assert p.errors == []
