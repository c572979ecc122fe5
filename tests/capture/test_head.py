"""The LM head run by the scores a chunk at a time (capture/head.py): the same scores as with
the model's whole logits, on every tiny decoder; the model's own logits kept where it changes
its head's output, where it cannot run the head on an empty slice, or calls it twice; and no
hook left behind, also on Ctrl-C."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from capture_helpers import _data, _run
from tiny_models import DECODER_ARCHS, tiny_model

import hopaudit.capture.forward as forward
from hopaudit.capture.head import HeadChunks, output_head


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _chunked_calls(monkeypatch) -> list[int]:
    """Counts the batches scored from the head's input (one entry per batch)."""
    calls: list[int] = []
    real = forward.head_statistics

    def counting(hidden, *args, **kwargs):
        calls.append(int(hidden.shape[0]))
        return real(hidden, *args, **kwargs)

    monkeypatch.setattr(forward, "head_statistics", counting)
    return calls


def _both_ways(monkeypatch, model, info, data, **kw):
    """(capture with the logits whole, capture with the head intercepted, intercepted batches)."""
    calls = _chunked_calls(monkeypatch)
    monkeypatch.setattr(forward, "HEAD_CHUNKS", False)
    whole = _run(model, info, data, **kw)
    assert not calls
    monkeypatch.setattr(forward, "HEAD_CHUNKS", True)
    chunked = _run(model, info, data, **kw)
    return whole, chunked, calls


def _assert_same_scores(a, b, atol):
    assert a.n_predicted == b.n_predicted > 0
    for name in ("seq_nll", "seq_min_k", "seq_min_k_pp", "seq_top1"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=0, atol=atol)
    assert b.cross_entropy == pytest.approx(a.cross_entropy, abs=atol)


LENGTHS = [9, 4, 9, 7, 2, 9, 5]


@pytest.mark.parametrize("arch", DECODER_ARCHS)
def test_every_tiny_decoder_scores_the_same_from_its_head(monkeypatch, arch):
    """float32: the head's product on a chunk of rows is the model's on all of them."""
    model, info = tiny_model(arch)
    whole, chunked, calls = _both_ways(monkeypatch, model, info, _data(LENGTHS), batch_size=3)
    _assert_same_scores(whole, chunked, atol=2e-5)
    # every batch scored from the head's input; nanoGPT names no output embedding: whole
    assert calls == ([] if arch == "nanogpt" else [3, 3, 1])
    assert _hooks(model) == 0


def test_bfloat16_autocast_scores_the_same_from_its_head(monkeypatch):
    model, info = tiny_model("llama")
    whole, chunked, calls = _both_ways(
        monkeypatch, model, info, _data(LENGTHS), batch_size=4, autocast="bfloat16"
    )
    assert calls == [4, 3]
    # bfloat16 logits either way; a product over fewer rows may round a logit differently
    _assert_same_scores(whole, chunked, atol=2e-2)
    assert whole.compute_dtype == chunked.compute_dtype == "bfloat16 autocast, weights cast once"


def test_seq2seq_decoder_scores_the_same_from_its_head(monkeypatch):
    from transformers import T5Config, T5ForConditionalGeneration

    from hopaudit.data import TokenData

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=300, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0,
    )  # fmt: skip
    model = T5ForConditionalGeneration(config).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 300, (5, 7), generator=g)
    labels = torch.randint(2, 300, (5, 6), generator=g)
    labels[1, 4:] = -100
    data = TokenData(ids, torch.ones_like(ids), [""] * 5, pad_token_id=0, labels=labels)
    from hopaudit.model.blocks import find_stacks

    calls = _chunked_calls(monkeypatch)
    runs = {}
    for chunks in (False, True):
        monkeypatch.setattr(forward, "HEAD_CHUNKS", chunks)
        runs[chunks] = forward.capture(
            model, data, find_stacks(model), batch_size=2, progress=False
        )
    assert calls == [2, 2, 1]
    _assert_same_scores(runs[False], runs[True], atol=2e-5)


def _softcapped_gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=2.0,
        pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )  # fmt: skip
    model = Gemma2ForCausalLM(config).eval()
    with torch.no_grad():  # logits large enough that the cap changes them
        model.lm_head.weight.mul_(50)
    return model


def test_a_model_that_caps_its_logits_keeps_them_whole(monkeypatch):
    """Gemma 2's soft cap acts after the head: the check sees it, and the scores are those of
    the model's own logits (a float64 computation from model(...).logits)."""
    from hopaudit.model.blocks import find_stacks

    model = _softcapped_gemma2()
    data = _data([6, 6, 4], vocab=512)
    calls = _chunked_calls(monkeypatch)
    res = forward.capture(model, data, find_stacks(model), batch_size=2, progress=False)
    assert calls == []
    with torch.no_grad():
        logits = model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
    assert float(logits.abs().max()) <= 2.0  # capped
    lp = torch.log_softmax(logits.double(), -1)
    nll = []
    for b, n in enumerate(data.attention_mask.sum(1).tolist()):
        ids = data.input_ids[b]
        nll.append(-float(sum(lp[b, t, ids[t + 1]] for t in range(n - 1))) / (n - 1))
    np.testing.assert_allclose(res.seq_nll, nll, rtol=0, atol=1e-5)
    chunks = HeadChunks(output_head(model))
    with torch.inference_mode(), chunks.intercepting():
        out = model(input_ids=data.input_ids[:2])
        assert out.logits.shape[:2] == (2, 1)  # the check's slice: each first position
        assert chunks.take(out.logits) is None
    assert chunks.refused == "the model changes its LM head's output (a scale or soft cap)"


def test_a_head_that_fails_on_an_empty_slice_runs_the_batch_again_whole(monkeypatch):
    model, info = tiny_model("gpt2")
    head = model.get_output_embeddings()

    def refuse_empty(module, args, output):
        if output.shape[1] == 0:
            raise ValueError("no positions")

    handle = head.register_forward_hook(refuse_empty)
    try:
        whole, chunked, calls = _both_ways(monkeypatch, model, info, _data(LENGTHS), batch_size=3)
    finally:
        handle.remove()
    # the first batch (the check's: one position a sequence) ran intercepted; the second
    # failed on its empty slice, so it and the rest ran whole
    assert calls == [3]
    _assert_same_scores(whole, chunked, atol=2e-5)
    assert _hooks(model) == 0


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_batch_run_again_keeps_none_of_its_first_attempt_s_rows(monkeypatch, tmp_path, on_disk):
    """Rows go to the store as each block ends; the batch that runs again (its head refused an
    empty slice after every block had written) takes back what its first attempt wrote, in RAM
    and on disk: every layer holds each real token once, as a pass that never ran again."""
    model, info = tiny_model("gpt2")
    head = model.get_output_embeddings()

    def refuse_empty(module, args, output):
        if output.shape[1] == 0:
            raise ValueError("no positions")

    runs: list[int] = []
    handles = [
        head.register_forward_hook(refuse_empty),
        model.register_forward_pre_hook(lambda m, a: runs.append(1)),
    ]
    caps = {}
    try:
        for chunks in (True, False):
            monkeypatch.setattr(forward, "HEAD_CHUNKS", chunks)
            store = str(tmp_path / f"store_{chunks}") if on_disk else None
            caps[chunks] = _run(model, info, _data(LENGTHS), positions="all", store=store,
                                store_dtype=torch.float32, batch_size=3)  # fmt: skip
            runs.append(0)
    finally:
        for h in handles:
            h.remove()
    assert runs == [1, 1, 1, 1, 0, 1, 1, 1, 0]  # the second batch ran twice, then not again
    width = model.config.n_embd
    for name in caps[True].layer_names:
        got = caps[True].store.get(name)
        assert got.shape == (sum(LENGTHS), width)
        np.testing.assert_array_equal(got, caps[False].store.get(name))
    np.testing.assert_array_equal(caps[True].row_sequence, caps[False].row_sequence)


def test_a_head_called_twice_keeps_the_logits_whole():
    head = torch.nn.Linear(4, 6)

    def run():
        x = torch.randn(1, 3, 4)
        return head(x) + head(x)

    chunks = HeadChunks(head)
    with chunks.intercepting():
        out = run()
    assert chunks.take(out) is None  # called twice: not the scores' to make
    assert chunks.refused == "the LM head does not run once on every position"
    assert not head._forward_pre_hooks


def test_the_intercepted_head_gives_the_models_logits_for_any_rows():
    head = torch.nn.Linear(8, 11)
    hidden = torch.randn(2, 5, 8)
    chunks = HeadChunks(head)
    with chunks.intercepting():
        first = head(hidden)  # the check: each sequence's first position, compared bit for bit
        assert first.shape == (2, 1, 11)
        assert chunks.take(first) is hidden
        assert (chunks.vocab, chunks.dtype, chunks.refused) == (11, torch.float32, None)
        out = head(hidden)
        assert out.shape == (2, 0, 11)
        got = chunks.take(out)
        assert got is hidden
        rows = hidden.reshape(10, 8)[[7, 1, 3]]
        by_hand = rows.double() @ head.weight.double().T + head.bias.double()
        torch.testing.assert_close(chunks.logits(rows).double(), by_hand, rtol=0, atol=1e-5)
        assert chunks.take(None) is None  # the logits' own call is not intercepted nor recorded
        chunks.stop()
        assert head(hidden).shape == (2, 5, 11)  # stopped: the head as it is
    assert not head._forward_pre_hooks


def test_a_plain_linear_head_is_made_a_slice_at_a_time_and_any_other_is_called(monkeypatch):
    """A plain ``nn.Linear`` head is made from its weight a slice of the vocabulary at a time
    (scores._column_statistics); with a hook of the user's on it, or as a subclass, it is
    called as the model calls it. The scores are the same either way."""
    import hopaudit.evidence.scores as scores

    model, info = tiny_model("llama")
    head = model.get_output_embeddings()
    assert type(head) is torch.nn.Linear
    sliced = []
    real = scores._column_statistics
    monkeypatch.setattr(
        scores, "_column_statistics", lambda rows, *a: sliced.append(len(rows)) or real(rows, *a)
    )
    data = _data(LENGTHS)
    whole, by_slices, calls = _both_ways(monkeypatch, model, info, data, batch_size=4)
    assert calls == [4, 3]  # a batch's predictions, its sequences' lengths less one each:
    assert sliced == [sum(n - 1 for n in LENGTHS[:4]), sum(n - 1 for n in LENGTHS[4:])]
    _assert_same_scores(whole, by_slices, atol=2e-5)
    seen = []
    handle = head.register_forward_hook(lambda m, a, out: seen.append(out.shape[0]))
    try:
        sliced.clear()
        hooked = _run(model, info, data, batch_size=4)
    finally:
        handle.remove()
    assert not sliced and seen  # the user's hook saw every call of the head
    _assert_same_scores(whole, hooked, atol=2e-5)

    class Scaled(torch.nn.Linear):
        pass

    chunks = HeadChunks(Scaled(4, 7))
    with chunks.intercepting():
        assert chunks.linear is None
    plain = torch.nn.Linear(4, 7)
    chunks = HeadChunks(plain)
    with chunks.intercepting():
        assert chunks.linear == (plain.weight, plain.bias)


def test_ctrl_c_in_an_intercepted_batch_leaves_no_hook(monkeypatch):
    model, info = tiny_model("gpt2")
    calls = {"n": 0}

    def interrupt(module, args, output):
        calls["n"] += 1
        if calls["n"] == 3:  # the check's forward, the first batch, then the second
            raise KeyboardInterrupt

    handle = model.transformer.h[1].register_forward_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(model, info, _data(LENGTHS), batch_size=3)
    finally:
        handle.remove()
    assert _hooks(model) == 0
    head = model.get_output_embeddings()
    assert head(torch.randn(1, 2, head.in_features)).shape[1] == 2


@pytest.mark.parametrize("refuse_empty", [False, True])
def test_the_reference_pass_scores_the_same_from_its_head(monkeypatch, refuse_empty):
    """audit(reference=)'s pass (evidence/membership.py) intercepts the reference's head too,
    and falls back to whole logits where the head cannot run on an empty slice (after the
    first batch, the check's, which runs it on one position a sequence)."""
    import hopaudit.evidence.scores as scores
    from hopaudit.evidence.membership import reference_nll

    model, _ = tiny_model("llama", seed=4)
    data = _data(LENGTHS)
    head = model.get_output_embeddings()
    if refuse_empty:
        head.register_forward_hook(lambda m, a, out: 1 / 0 if out.shape[1] == 0 else None)
    calls = []
    real = scores.head_statistics
    monkeypatch.setattr(scores, "head_statistics", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = {}
    for chunks in (False, True):
        monkeypatch.setattr(forward, "HEAD_CHUNKS", chunks)
        got[chunks] = reference_nll(
            model, data.input_ids, data.attention_mask, batch_size=3, progress=False
        )
    # refusing an empty slice, only the first batch (the check's one position a sequence) runs
    # intercepted; the rest run whole
    assert len(calls) == (1 if refuse_empty else 3)
    np.testing.assert_allclose(got[True], got[False], rtol=0, atol=2e-6)
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=data.input_ids).logits.double(), -1)
    for b, n in enumerate(LENGTHS):
        ids = data.input_ids[b]
        if n > 1:
            by_hand = -float(sum(lp[b, t, ids[t + 1]] for t in range(n - 1))) / (n - 1)
            assert got[True][b] == pytest.approx(by_hand, abs=1e-5)
    head._forward_hooks.clear()
    assert _hooks(model) == 0


def test_the_first_batch_is_the_check_no_forward_runs_before_it(monkeypatch):
    """The head's check rides on the first batch (its first positions), so a capture of 7
    sequences in batches of 3 runs the model 3 times, and scores every batch from the head."""
    model, info = tiny_model("gpt2")
    runs: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: runs.append(1), with_kwargs=True)
    calls = _chunked_calls(monkeypatch)
    try:
        _run(model, info, _data(LENGTHS), batch_size=3)
    finally:
        handle.remove()
    assert len(runs) == 3
    assert calls == [3, 3, 1]
