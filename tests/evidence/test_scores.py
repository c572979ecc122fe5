"""Membership scores (hopaudit/scores.py and the samples columns) against float64 loops."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from tiny_models import random_texts, tiny_model, tiny_tokenizer

import hopaudit
from hopaudit.errors import ModelError
from hopaudit.evidence.scores import head_statistics, lowest_fraction_mean, token_statistics


def _loop_stats(logits: np.ndarray, ids: np.ndarray, mask: np.ndarray):
    """Per prediction (seq, log p(target), z) by plain float64 loops over tokens and vocab."""
    out = []
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            if not (mask[b, t] and mask[b, t + 1]):
                continue
            row = [float(v) for v in logits[b, t]]
            top = max(row)
            log_norm = top + math.log(sum(math.exp(v - top) for v in row))
            logp = [v - log_norm for v in row]
            mu = sum(math.exp(lp) * lp for lp in logp)
            var = sum(math.exp(lp) * (lp - mu) ** 2 for lp in logp)
            target = logp[int(ids[b, t + 1])]
            out.append((b, target, (target - mu) / math.sqrt(var)))
    return out


def _lowest_mean(values: list[float], k: float) -> float:
    values = sorted(values)
    n = max(1, math.floor(k * len(values)))
    return sum(values[:n]) / n


def _hits_by_hand(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> list[bool]:
    """Each counted prediction's top-1 hit: numpy's argmax (the first maximum) is the target."""
    batch, seq = ids.shape
    return [
        int(np.argmax(logits.numpy()[b, t])) == int(ids[b, t + 1])
        for b in range(batch)
        for t in range(seq - 1)
        if mask[b, t] and mask[b, t + 1]
    ]


def test_token_statistics_match_float64_loop():
    rng = np.random.default_rng(0)
    batch, seq, vocab = 3, 9, 37
    logits = torch.tensor(rng.normal(scale=3.0, size=(batch, seq, vocab)))
    ids = torch.tensor(rng.integers(0, vocab, size=(batch, seq)))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, 6:] = 0  # right padding
    mask[2, 3] = 0  # a hole: predictions around it do not count
    expected = _loop_stats(logits.numpy(), ids.numpy(), mask.numpy())
    # a tiny chunk so the chunked path is taken
    seq_i, lp, hit, z = token_statistics(logits, ids, mask, chunk_values=2 * vocab)
    assert seq_i.tolist() == [e[0] for e in expected]
    np.testing.assert_allclose(lp.numpy(), [e[1] for e in expected], rtol=0, atol=1e-10)
    np.testing.assert_allclose(z.numpy(), [e[2] for e in expected], rtol=0, atol=1e-10)
    assert lp.dtype == torch.float64
    # float32 logits are scored in float32: the same numbers to float32 precision
    _, lp32, _, z32 = token_statistics(logits.float(), ids, mask)
    assert lp32.dtype == torch.float32
    np.testing.assert_allclose(lp32.numpy(), [e[1] for e in expected], atol=1e-5)
    np.testing.assert_allclose(z32.numpy(), [e[2] for e in expected], atol=2e-4)
    assert hit.tolist() == _hits_by_hand(logits, ids, mask)


def _laid_out(logits: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout: rows that flatten with a stride, or not."""
    if layout == "every_other":  # a strided view: flattens, rows two apart
        wide = torch.zeros(
            logits.shape[0], 2 * logits.shape[1], logits.shape[2], dtype=logits.dtype
        )
        wide[:, ::2] = logits
        return wide[:, ::2]
    if layout == "transposed":  # batch-minor: does not flatten, gathered by index
        return logits.transpose(0, 1).contiguous().transpose(0, 1)
    return logits.clone()


@pytest.mark.parametrize("layout", ["contiguous", "every_other", "transposed"])
@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("chunk_rows", [1, 4, 7, 100])
def test_chunks_across_sequences_and_layouts_equal_the_float64_loop(layout, overwrite, chunk_rows):
    """Chunks that span sequences, padding and holes, in any layout, in place or copied: the
    same numbers as the float64 loop, and the logits untouched unless ``overwrite``."""
    rng = np.random.default_rng(2)
    batch, seq, vocab = 4, 9, 37
    base = torch.tensor(rng.normal(scale=3.0, size=(batch, seq, vocab)))
    ids = torch.tensor(rng.integers(0, vocab, size=(batch, seq)))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3] = 0
    mask[3, :] = 0  # a sequence with no prediction at all
    expected = _loop_stats(base.numpy(), ids.numpy(), mask.numpy())
    logits = _laid_out(base, layout)
    seq_i, lp, hit, z = token_statistics(
        logits, ids, mask, chunk_values=chunk_rows * vocab, overwrite=overwrite
    )
    assert seq_i.tolist() == [e[0] for e in expected]
    np.testing.assert_allclose(lp.numpy(), [e[1] for e in expected], rtol=0, atol=1e-10)
    np.testing.assert_allclose(z.numpy(), [e[2] for e in expected], rtol=0, atol=1e-10)
    assert hit.tolist() == _hits_by_hand(base, ids, mask)
    if not overwrite:
        assert torch.equal(logits, base)


@pytest.mark.parametrize("chunk_rows", [1, 4, 100])
@pytest.mark.parametrize("head_rows", [1, 5, 100])
def test_head_statistics_equal_the_float64_loop(chunk_rows, head_rows):
    """The logits made by the head from the hidden states, a few rows at a time: the float64
    loop's numbers on the logits computed whole by hand."""
    rng = np.random.default_rng(3)
    batch, seq, width, vocab = 4, 9, 6, 37
    hidden = torch.tensor(rng.normal(size=(batch, seq, width)))
    weight = torch.tensor(rng.normal(scale=1.5, size=(vocab, width)))
    ids = torch.tensor(rng.integers(0, vocab, size=(batch, seq)))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3] = 0
    mask[3, :] = 0
    logits = torch.einsum("btw,vw->btv", hidden, weight)
    expected = _loop_stats(logits.numpy(), ids.numpy(), mask.numpy())
    rows_seen = []

    def head(rows):
        rows_seen.append(rows.shape[0])
        return rows @ weight.T

    seq_i, lp, hit, z = head_statistics(
        hidden, head, ids, mask, chunk_values=chunk_rows * vocab, head_values=head_rows * vocab
    )
    assert seq_i.tolist() == [e[0] for e in expected]
    np.testing.assert_allclose(lp.numpy(), [e[1] for e in expected], rtol=0, atol=1e-10)
    np.testing.assert_allclose(z.numpy(), [e[2] for e in expected], rtol=0, atol=1e-10)
    assert hit.tolist() == _hits_by_hand(logits, ids, mask)
    assert sum(rows_seen[1:]) == len(expected)  # after the one-row look at the vocabulary
    assert max(rows_seen) <= max(chunk_rows, head_rows)


@pytest.mark.parametrize("column_rows", [1, 5, 1024])
@pytest.mark.parametrize("head_values", [1, None])
def test_a_linear_head_made_a_slice_at_a_time_equals_the_float64_loop(
    monkeypatch, column_rows, head_values
):
    """``linear=(weight, bias)``: the vocabulary in slices of 256 columns (600 tokens: three,
    the last narrower) or whole, the rows in blocks of ``column_rows``; the sums folded across
    slices give the float64 loop's numbers, and every maximum tied across two slices counts
    for the earlier token, as argmax does."""
    monkeypatch.setattr(hopaudit.evidence.scores, "_COLUMN_ROWS", column_rows)
    rng = np.random.default_rng(5)
    batch, seq, width, vocab = 4, 9, 6, 600
    hidden = torch.tensor(rng.normal(size=(batch, seq, width)))
    weight = torch.tensor(rng.normal(scale=1.5, size=(vocab, width)))
    bias = torch.tensor(rng.normal(size=vocab))
    hidden[0, 2] = hidden[0, 1]
    weight[10] = 10 * hidden[0, 1] / hidden[0, 1].norm()  # token 10 the maximum at [0, 1:3]
    weight[300], bias[300] = weight[10], bias[10]  # token 300 (second slice) ties token 10
    weight[599], bias[599] = weight[280], bias[280]  # and 599 (third) ties 280 (second)
    ids = torch.tensor(rng.integers(0, vocab, size=(batch, seq)))
    ids[0, 2], ids[0, 3] = 300, 10  # the targets there: the tie's later token, its earlier one
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3] = 0
    logits = torch.einsum("btw,vw->btv", hidden, weight) + bias
    assert logits[0, 1].argmax() == 10 and logits[0, 1, 10] == logits[0, 1, 300]
    expected = _loop_stats(logits.numpy(), ids.numpy(), mask.numpy())
    slices = []
    real = torch.nn.functional.linear
    scores = hopaudit.evidence.scores
    monkeypatch.setattr(scores.F, "linear", lambda x, w, b: slices.append(w.shape) or real(x, w, b))
    seq_i, lp, hit, z = head_statistics(
        hidden, None, ids, mask, head_values=head_values, dtype=torch.float64,
        linear=(weight, bias),
    )  # fmt: skip
    assert seq_i.tolist() == [e[0] for e in expected]
    np.testing.assert_allclose(lp.numpy(), [e[1] for e in expected], rtol=0, atol=1e-10)
    np.testing.assert_allclose(z.numpy(), [e[2] for e in expected], rtol=0, atol=1e-10)
    hits = _hits_by_hand(logits, ids, mask)
    assert hit.tolist() == hits
    assert hits[1] is False and hits[2] is True  # the later tied token misses, the earlier hits
    n_blocks = -(-len(expected) // column_rows)
    widths = [256, 256, 88] if head_values == 1 else [vocab]
    assert [w[0] for w in slices] == widths * n_blocks


def test_a_linear_head_with_bfloat16_logits_is_called_a_few_rows_at_a_time():
    """bfloat16 logits (autocast's) are made by calling the head on rows, which ran faster than
    the slices there (head_chunks.py): the row path's numbers, and the head called."""
    rng = np.random.default_rng(6)
    hidden = torch.tensor(rng.integers(-2, 3, size=(3, 8, 6)), dtype=torch.float32)
    weight = torch.tensor(rng.integers(-2, 3, size=(700, 6)), dtype=torch.float32)
    ids = torch.tensor(rng.integers(0, 700, size=(3, 8)))
    mask = torch.ones(3, 8, dtype=torch.long)
    logits = torch.einsum("btw,vw->btv", hidden, weight)  # small integers: exact in bfloat16
    expected = _loop_stats(logits.double().numpy(), ids.numpy(), mask.numpy())
    calls = []

    def head(rows):
        calls.append(len(rows))
        return torch.nn.functional.linear(rows, weight.bfloat16())

    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, lp, hit, z = head_statistics(
            hidden, head, ids, mask, vocab=700, dtype=torch.bfloat16, linear=(weight, None)
        )
    assert calls and sum(calls) == len(expected)
    assert lp.dtype == torch.float32
    np.testing.assert_allclose(lp.numpy(), [e[1] for e in expected], atol=1e-5)
    np.testing.assert_allclose(z.numpy(), [e[2] for e in expected], atol=1e-4)
    assert hit.tolist() == _hits_by_hand(logits, ids, mask)


def test_head_statistics_of_bfloat16_logits_equal_token_statistics_of_them_whole():
    """A head that returns bfloat16 (autocast's): each chunk copied to float32, the same
    numbers as the whole logits scored by token_statistics."""
    rng = np.random.default_rng(4)
    hidden = torch.tensor(rng.normal(size=(3, 8, 5)), dtype=torch.float32)
    weight = torch.tensor(rng.normal(scale=2.0, size=(29, 5)), dtype=torch.float32)
    ids = torch.tensor(rng.integers(0, 29, size=(3, 8)))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[0, 5:] = 0

    def head(rows):
        return (rows.double() @ weight.double().T).bfloat16()  # the same rounding at any M

    whole = token_statistics(head(hidden.reshape(24, 5)).reshape(3, 8, 29), ids, mask)
    got = head_statistics(hidden, head, ids, mask, chunk_values=2 * 29, head_values=5 * 29)
    for a, b in zip(whole, got, strict=True):
        assert torch.equal(a, b)
    assert got[1].dtype == torch.float32


def test_head_statistics_with_no_prediction():
    ids = torch.zeros(2, 3, dtype=torch.long)
    seq_i, lp, hit, z = head_statistics(
        torch.randn(2, 3, 4), lambda r: r @ torch.randn(4, 7), ids, torch.zeros(2, 3)
    )
    assert seq_i.numel() == lp.numel() == hit.numel() == z.numel() == 0


def _numpy_stats(logits: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log p(next), z, top-1 hit) of every position but the last, vectorized in float64."""
    x = logits[:, :-1].astype(np.float64)
    top = x.max(-1, keepdims=True)
    logp = x - (top + np.log(np.exp(x - top).sum(-1, keepdims=True)))
    p = np.exp(logp)
    mu = (p * logp).sum(-1)
    sigma = np.sqrt((p * (logp - mu[..., None]) ** 2).sum(-1))
    target = np.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
    hit = x.argmax(-1) == ids[:, 1:]
    return target.ravel(), ((target - mu) / sigma).ravel(), hit.ravel()


@pytest.mark.parametrize("chunk_values", [49_152 * 3 + 5, 2**20])
def test_bfloat16_logits_of_a_full_vocabulary_against_float64(monkeypatch, chunk_values):
    """SmolLM2's vocabulary in bfloat16, as autocast returns it: scored in float32 chunks that
    never hold more than ``chunk_values`` logits, equal to a float64 computation."""
    rng = np.random.default_rng(1)
    batch, seq, vocab = 2, 24, 49_152
    logits = torch.tensor(rng.normal(scale=4.0, size=(batch, seq, vocab))).bfloat16()
    ids = torch.tensor(rng.integers(0, vocab, size=(batch, seq)))
    ids[0, 5] = int(logits[0, 4].float().argmax())  # one top-1 hit for certain
    mask = torch.ones(batch, seq, dtype=torch.long)
    rows = []
    chunked = hopaudit.evidence.scores._chunk_moments  # the function under test, wrapped
    monkeypatch.setattr(
        hopaudit.evidence.scores,
        "_chunk_moments",
        lambda y, *rest: rows.append(y.shape) or chunked(y, *rest),
    )
    _, lp, hit, z = token_statistics(logits, ids, mask, chunk_values=chunk_values)
    assert lp.dtype == torch.float32
    assert all(r[0] * r[1] <= chunk_values for r in rows)
    assert sum(r[0] for r in rows) == batch * (seq - 1)
    want_lp, want_z, want_hit = _numpy_stats(logits.float().numpy(), ids.numpy())
    np.testing.assert_allclose(lp.numpy(), want_lp, rtol=0, atol=2e-5)
    np.testing.assert_allclose(z.numpy(), want_z, rtol=0, atol=2e-4)
    assert hit.numpy().tolist() == want_hit.tolist()
    assert hit.numpy().any()


def test_one_hot_prediction_has_z_zero():
    logits = torch.full((1, 3, 8), -1e4, dtype=torch.float64)
    logits[0, :, 2] = 0.0
    ids = torch.tensor([[2, 2, 5]])
    _, lp, hit, z = token_statistics(logits, ids, torch.ones(1, 3, dtype=torch.long))
    assert z.tolist() == [0.0, 0.0]
    assert hit.tolist() == [True, False]
    assert lp[0].item() == pytest.approx(0.0, abs=1e-12)
    assert lp[1].item() == pytest.approx(-1e4, rel=1e-12)


def test_top1_hit_is_argmaxs_when_the_maximum_is_tied():
    """bfloat16 logits tie often: the hit is the first of the tied tokens, as argmax (and so
    greedy decoding) picks it; a target tied with an earlier token is not a hit."""
    logits = torch.zeros(1, 5, 16, dtype=torch.bfloat16)
    logits[0, 0, [3, 9]] = 2.0  # target 9 ties with 3, earlier: argmax is 3
    logits[0, 1, [3, 9]] = 2.0  # target 3 ties with 9, later: a hit
    logits[0, 2, 7] = 1.0  # no tie: target 7 is the maximum
    logits[0, 3, [0, 1, 2]] = 5.0  # a three-way tie, target 2: not a hit
    ids = torch.tensor([[0, 9, 3, 7, 2]])
    _, _, hit, _ = token_statistics(logits, ids, torch.ones(1, 5, dtype=torch.long))
    want = logits[0, :4].float().argmax(-1) == ids[0, 1:]
    assert hit.tolist() == want.tolist() == [False, True, True, False]


@pytest.mark.parametrize("by_max", [False, True])  # True: the path devices other than CPUs take
def test_top1_hits_both_ways_equal_argmax_on_tied_rows(by_max):
    rng = np.random.default_rng(3)
    y = torch.tensor(rng.integers(0, 4, size=(40, 23)), dtype=torch.float32)  # many ties
    target = y.argmax(1)
    target[::3] = torch.tensor(rng.integers(0, 23, size=14))  # some at another maximum or not
    top, hit = hopaudit.evidence.scores._top1_hits(y.clone(), target, by_max=by_max)
    assert torch.equal(top, y.amax(1))
    assert hit.tolist() == (y.argmax(1) == target).tolist()
    assert 0 < int(hit.sum()) < 40


def test_lowest_fraction_mean_matches_sorting_by_hand():
    rng = np.random.default_rng(1)
    seq = rng.integers(0, 4, size=50)
    seq[seq == 3] = 2  # sequence 3 has no values: NaN
    values = rng.normal(size=50)
    for k in (0.2, 0.5, 1.0):
        got = lowest_fraction_mean(seq, values, 4, k)
        for s in range(3):
            assert got[s] == pytest.approx(_lowest_mean(values[seq == s].tolist(), k), abs=1e-12)
        assert math.isnan(got[3])


@pytest.fixture(scope="module")
def double_gpt2_audit():
    model, _ = tiny_model("gpt2")
    model = model.double()
    tok = tiny_tokenizer()
    texts = random_texts(12, words=12)
    a = hopaudit.audit(
        model, texts, tokenizer=tok, max_length=10, chunking="document", progress=False,
        umap_layers=[], bootstrap=0, autocast="off",
    )  # fmt: skip
    return model, tok, a


def _model_loop(model, ids: torch.Tensor, mask: torch.Tensor):
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.double().numpy()
    return _loop_stats(logits, ids.numpy(), mask.numpy())


def test_samples_min_k_pp_zlib_loss_against_loops(double_gpt2_audit):
    model, tok, a = double_gpt2_audit
    s = a.samples
    enc = tok(a.texts, padding=True, return_tensors="pt", truncation=True, max_length=10)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    per = _model_loop(model, ids, mask)
    for i, text in enumerate(a.texts):
        lps = [lp for b, lp, _ in per if b == i]
        zs = [z for b, _, z in per if b == i]
        # Min-K%++ at k = 20 %, against the float64 loop over tokens and vocabulary (1e-6)
        assert s["min_k_pp"][i] == pytest.approx(_lowest_mean(zs, 0.2), abs=1e-6)
        # loss: minus the mean NLL; zlib: minus the NLL sum over the compressed bytes
        assert s["loss"][i] == pytest.approx(sum(lps) / len(lps), abs=1e-6)
        by_hand = len(zlib.compress(text.encode("utf-8")))
        assert s["zlib"][i] == pytest.approx(sum(lps) / by_hand, abs=1e-6)
    assert s["ref_loss_diff"].isna().all()  # no reference given


def test_reference_loss_difference(double_gpt2_audit):
    model, tok, _ = double_gpt2_audit
    ref, _ = tiny_model("gpt2", seed=3)
    ref = ref.double()
    texts = random_texts(6, words=12, seed=5)
    a = hopaudit.audit(
        model, texts, tokenizer=tok, max_length=10, progress=False, umap_layers=[],
        reference=ref, bootstrap=0, autocast="off",
    )  # fmt: skip
    enc = tok(a.texts, return_tensors="pt", truncation=True, max_length=10, padding=True)
    mine = _model_loop(model, enc["input_ids"], enc["attention_mask"])
    theirs = _model_loop(ref, enc["input_ids"], enc["attention_mask"])
    for i in range(len(a.texts)):
        nll_m = -np.mean([lp for b, lp, _ in mine if b == i])
        nll_r = -np.mean([lp for b, lp, _ in theirs if b == i])
        assert a.samples["ref_loss_diff"][i] == pytest.approx(nll_r - nll_m, abs=1e-6)
    assert a.options["reference"]


def test_reference_with_another_vocabulary_is_refused_before_any_forward():
    model, _ = tiny_model("gpt2")
    ref, _ = tiny_model("gpt2", vocab_size=300)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    ref.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ModelError, match="vocabulary has 300 entries"):
        hopaudit.audit(
            model, random_texts(10), tokenizer=tiny_tokenizer(), max_length=10, progress=False,
            reference=ref,
        )  # fmt: skip
    assert calls == []


def test_a_target_past_a_linear_heads_rows_scores_nan_not_garbage():
    """A target id the head has no row for (a config larger than the head) lies in no slice:
    its log p is NaN and it is no hit; the other predictions are scored as usual."""
    rng = np.random.default_rng(7)
    hidden = torch.tensor(rng.normal(size=(1, 3, 4)))
    weight = torch.tensor(rng.normal(size=(5, 4)))
    ids = torch.tensor([[0, 5, 1]])
    _, lp, hit, _ = head_statistics(
        hidden, None, ids, torch.ones(1, 3), dtype=torch.float64, linear=(weight, None)
    )
    assert math.isnan(lp[0]) and not hit[0]
    logits = (hidden[0, 1] @ weight.T).numpy()
    assert lp[1].item() == pytest.approx(logits[1] - np.log(np.exp(logits).sum()), abs=1e-12)


@pytest.mark.parametrize("by_max", [False, True])  # True: the path devices other than CPUs take
def test_the_slices_top1_hits_both_ways_equal_argmax_on_tied_rows(by_max):
    """Logits of a few values (many ties within and across slices of 256): the hit is argmax's
    whichever way the index of a new maximum is found."""
    rng = np.random.default_rng(8)
    rows = torch.tensor(rng.integers(0, 3, size=(40, 3)), dtype=torch.float32)
    weight = torch.tensor(rng.integers(0, 3, size=(700, 3)), dtype=torch.float32)
    logits = rows @ weight.T
    target = logits.argmax(1)
    target[::3] = torch.tensor(rng.integers(0, 700, size=14))  # some at a later tie or not
    lp, hit, _ = hopaudit.evidence.scores._column_statistics(
        rows, weight, None, target, 256 * 40, torch.float32, by_max=by_max
    )
    assert hit.tolist() == (logits.argmax(1) == target).tolist()
    assert 0 < int(hit.sum()) < 40
    want = torch.log_softmax(logits.double(), 1).gather(1, target[:, None])[:, 0]
    np.testing.assert_allclose(lp.numpy(), want.numpy(), atol=1e-5)
