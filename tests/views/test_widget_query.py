"""The widget's "ask about a text" box, kernel side: the custom message in, the card out (its
scores with the audit's AUROCs beside them, its nearest sequences as Audit.query gives them);
a report and a snapshot have no box and say why."""

from __future__ import annotations

import random

import pytest
from tiny_models import TOKENIZER_TEXT, tiny_model, tiny_tokenizer

import hopaudit
from hopaudit.views.snapshot import ASK_NOTE, snapshot_html, snapshot_text
from hopaudit.views.widget import QUERY_MESSAGE, QUERY_REPLY, AuditWidget


@pytest.fixture(scope="module")
def audit():
    model, _ = tiny_model("gpt2")
    rng = random.Random(5)
    words = TOKENIZER_TEXT.split()
    texts = [" ".join(rng.choice(words) for _ in range(14)) for _ in range(36)]
    a = hopaudit.audit(
        model, texts[:30], tokenizer=tiny_tokenizer(), heldout=texts[30:], max_length=20,
        chunking="document", progress=False, umap_layers=["final"], bootstrap=20,
        extraction={"prefix": 4, "suffix": 4},
    )  # fmt: skip
    a.model = model  # the test keeps the model alive (the audit holds it weakly)
    return a


def _ask(widget, text, k=3):
    sent = []
    widget.send = sent.append
    widget._handle_custom_msg({"type": QUERY_MESSAGE, "id": 7, "text": text, "k": k}, [])
    assert len(sent) == 1
    return sent[0]


def test_box_message_gets_the_card(audit):
    w = audit.widget()
    assert w.can_query
    text = audit.texts[4]
    reply = _ask(w, text)
    assert reply["type"] == QUERY_REPLY and reply["id"] == 7 and "error" not in reply
    expected = audit.query([text], k=3)
    assert [n["sequence"] for n in reply["nearest"]] == expected.nearest["sequence"].tolist()
    assert [n["inside"] for n in reply["nearest"]] == expected.nearest["inside_ball"].tolist()
    membership = audit.membership.set_index("score")
    for s in reply["scores"]:
        assert s["value"] == pytest.approx(expected.scores.loc[0, s["score"]])
        assert s["auroc"] == pytest.approx(membership.loc[s["score"], "auroc"])
    assert reply["extraction"]["prefix"] == 4
    assert reply["extraction"]["extracted_tokens"] == expected.scores.loc[0, "extracted_tokens"]
    assert [p["name"] for p in reply["places"]] == ["final"]


def test_box_errors_come_back_as_one_message(audit):
    reply = _ask(audit.widget(), "   ")
    assert reply["error"].startswith("text 0 is empty")
    reply = _ask(AuditWidget.from_audit(audit), "the fox", k=10_000)
    assert "k=10000" in reply["error"]


def test_other_messages_are_ignored(audit):
    w = audit.widget()
    sent = []
    w.send = sent.append
    w._handle_custom_msg({"type": "something else"}, [])
    assert sent == []


def test_report_and_snapshot_have_no_box(audit):
    w = audit.widget()
    assert "can_query" not in w.widget_state()  # a report of the widget has no kernel
    assert "can_query" not in audit.widget_state()
    state = audit.widget_state()
    assert ASK_NOTE.split(":")[0] in snapshot_html(state)
    assert ASK_NOTE in snapshot_text(state)
