"""Audit.selected(): the rows of samples whose ids the basins view put in ``selection``."""

from __future__ import annotations

import random

import pytest
from tiny_models import TOKENIZER_TEXT, tiny_model, tiny_tokenizer

import hopaudit
from hopaudit.errors import HopauditError


@pytest.fixture(scope="module")
def audited(one_torch_thread):
    rng = random.Random(0)
    words = TOKENIZER_TEXT.split()
    texts = [" ".join(rng.choice(words) for _ in range(20)) for _ in range(40)]
    model, _ = tiny_model("gpt2")
    return hopaudit.audit(model, texts, tokenizer=tiny_tokenizer(), max_length=10,
                          progress=False, umap_layers=[], autocast="off")  # fmt: skip


def test_selected_rows_follow_the_widget_selection(audited):
    with pytest.raises(HopauditError, match="no view of this audit was shown"):
        audited.selected()
    w = audited.widget()
    assert w.selection == [] and "selection" in w.keys  # synced with the front end
    assert audited.selected(w).empty
    w.selection = [7, 3, 30]
    rows = audited.selected(w)
    samples = audited.samples
    assert rows["sequence"].tolist() == [3, 7, 30]
    assert rows.equals(samples.loc[[3, 7, 30]])
    # without an argument: the view shown last
    assert audited.selected().equals(rows)
    w2 = audited.widget()
    w2.selection = [1]
    assert audited.selected()["sequence"].tolist() == [1]
    assert audited.selected(w)["sequence"].tolist() == [3, 7, 30]


def test_selected_refuses_something_without_a_selection(audited):
    with pytest.raises(HopauditError, match="has no selection"):
        audited.selected(object())


def test_a_selection_from_another_audits_widget_is_refused(audited):
    """Issue 26: a selection made in another audit's widget returned rows of this audit
    without a word; it is refused, and the widget's own audit still answers."""
    import dataclasses

    other = dataclasses.replace(audited)  # another Audit object holding the same data
    w = other.widget()
    w.selection = [2, 5]
    with pytest.raises(HopauditError, match="this widget shows another audit"):
        audited.selected(w)
    assert other.selected(w)["sequence"].tolist() == [2, 5]
