"""Extraction (hopaudit/extraction.py) against a plain greedy loop without a cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import random_texts, tiny_model, tiny_tokenizer

import hopaudit
from hopaudit.errors import DataError
from hopaudit.evidence.extract import NOT_DECODED, extract


def _plain_greedy(model, prefix: torch.Tensor, steps: int) -> torch.Tensor:
    """One sequence at a time, the whole sequence every step, no cache: the oracle."""
    rows = []
    with torch.no_grad():
        for row in prefix:
            x = row[None]
            for _ in range(steps):
                out = model(input_ids=x)
                logits = out if isinstance(out, torch.Tensor) else out.logits
                x = torch.cat([x, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            rows.append(x[0, prefix.shape[1] :])
    return torch.stack(rows)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox", "nanogpt"])
def test_cached_batched_decoding_matches_plain_loop(arch):
    model, _ = tiny_model(arch)
    model = model.double()  # float64: no near-ties between the two orders of arithmetic
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 500, (7, 16), generator=gen)
    prefix, suffix = 6, 8
    expected = _plain_greedy(model, ids[:, :prefix], suffix)
    # plant the model's own continuation in some rows, and part of it in others
    ids[:3, prefix : prefix + suffix] = expected[:3]
    ids[3, prefix : prefix + 4] = expected[3, :4]
    ids[3, prefix + 4] = (expected[3, 4] + 1) % 500
    r = extract(
        model, ids, torch.ones_like(ids), prefix=prefix, suffix=suffix, batch_size=3, progress=False
    )
    assert r.cached == (arch != "nanogpt")
    match = (expected == ids[:, prefix : prefix + suffix]).numpy()
    by_hand = [next((j for j, m in enumerate(row) if not m), suffix) for row in match]
    # every token up to and including each row's first divergence is the oracle's; a batch
    # decodes to the end while one of its rows still matches, and stops once none does
    decoded = r.generated != NOT_DECODED
    np.testing.assert_array_equal(r.generated[decoded], expected.numpy()[decoded])
    for i, run in enumerate(by_hand):
        assert decoded[i, : min(run + 1, suffix)].all(), i
    batches = [range(0, 3), range(3, 6), range(6, 7)]
    for rows in batches:
        steps = min(suffix, max(by_hand[i] + 1 for i in rows))
        assert decoded[list(rows)].sum(1).tolist() == [steps] * len(rows), list(rows)
    assert r.extracted_tokens.tolist() == by_hand
    assert r.extracted.tolist() == [t == suffix for t in by_hand]
    assert r.extracted[:3].all() and r.extracted_tokens[3] == 4
    assert r.rate == pytest.approx(np.mean([t == suffix for t in by_hand]))
    assert r.tokens_per_second > 0


def test_decoding_stops_once_every_sequence_has_diverged():
    """Rows whose first greedy token already differs from the text need one forward (the
    prefix) and no decoding steps: extracted_tokens is 0 and nothing else is decoded."""
    model, _ = tiny_model("gpt2")
    ids = torch.randint(3, 500, (4, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        first = model(input_ids=ids[:, :6]).logits[:, -1].argmax(-1)
    ids[:, 6] = (first + 1) % 500  # every row diverges at its first suffix token
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        r = extract(model, ids, torch.ones_like(ids), prefix=6, suffix=6, batch_size=4,
                    progress=False)  # fmt: skip
    finally:
        hook.remove()
    assert len(calls) == 1  # the prefix forward alone
    whole = extract(model, ids, torch.ones_like(ids), prefix=6, suffix=6, progress=False,
                    full=True)  # fmt: skip
    assert (whole.generated != NOT_DECODED).all()  # full=True: the whole greedy continuation
    assert whole.extracted_tokens.tolist() == r.extracted_tokens.tolist()
    assert r.extracted_tokens.tolist() == [0, 0, 0, 0] and not r.extracted.any()
    np.testing.assert_array_equal(r.generated[:, 0], first.numpy())
    assert (r.generated[:, 1:] == NOT_DECODED).all()


def test_decoding_under_autocast_runs_in_bfloat16_and_gives_the_weights_back():
    """extract(autocast=bfloat16) runs every product of the decoding in bfloat16 (the
    numerics of an audit's capture there), the model as it is without, and leaves the model's
    float32 weights as they were."""
    model, _ = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    seen = []
    hook = linear.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    ids = torch.randint(3, 500, (5, 14), generator=torch.Generator().manual_seed(4))
    try:
        for amp, want in ((torch.bfloat16, torch.bfloat16), (None, torch.float32)):
            seen.clear()
            r = extract(model, ids, torch.ones_like(ids), prefix=6, suffix=8, progress=False,
                        autocast=amp)  # fmt: skip
            assert seen and set(seen) == {want}, (amp, set(seen))
            match = (r.generated == ids[:, 6:14].numpy()).astype(int)
            assert r.extracted_tokens.tolist() == match.cumprod(1).sum(1).tolist()
    finally:
        hook.remove()
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k


def test_training_flags_come_back():
    model, _ = tiny_model("gpt2")
    model.train()
    ids = torch.randint(3, 500, (2, 12))
    extract(model, ids, torch.ones_like(ids), prefix=4, suffix=4, progress=False)
    assert model.training and all(m.training for m in model.modules())


def test_audit_extraction_columns_and_rates():
    model, _ = tiny_model("gpt2")
    tok = tiny_tokenizer()
    a = hopaudit.audit(
        model,
        random_texts(12, words=40),
        tokenizer=tok,
        heldout=random_texts(6, words=40, seed=4),
        max_length=16,
        progress=False,
        umap_layers=[],
        extraction={"prefix": 6, "suffix": 5},
        bootstrap=0,
    )
    s = a.samples
    cap = a.capture
    # the standalone function on the same tokens gives the same columns
    from hopaudit.data import prepare_data

    tokens = prepare_data(random_texts(12, words=40), tok, max_length=16, model=model)
    # the audit decodes in its capture's numerics: bfloat16 autocast where the CPU has it
    amp = str(cap.compute_dtype).startswith("bfloat16 autocast")
    assert a.extraction["compute_dtype"] == cap.compute_dtype
    direct = extract(
        model, tokens.input_ids, tokens.attention_mask, prefix=6, suffix=5, progress=False,
        autocast=torch.bfloat16 if amp else None,
    )  # fmt: skip
    assert s["extracted_tokens"].tolist() == direct.extracted_tokens.tolist()
    assert s["extracted"].dtype == bool
    assert a.summary()["extraction_rate"] == pytest.approx(direct.rate)
    assert a.summary()["extraction_rate_heldout"] is not None
    assert "extracted" in a.heldout_samples
    assert cap.seq_extracted_tokens is not None
    assert a.extraction["method"] == "teacher-forced"  # read off the capture, no decoding
    # and the public function on texts
    r = hopaudit.extraction(
        model,
        random_texts(12, words=40),
        tokenizer=tok,
        max_length=16,
        prefix=6,
        suffix=5,
        progress=False,
    )
    float32 = extract(
        model, tokens.input_ids, tokens.attention_mask, prefix=6, suffix=5, progress=False
    )
    assert r.extracted_tokens.tolist() == float32.extracted_tokens.tolist()  # the model as it is


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_audit_reads_extraction_off_its_capture_as_greedy_decoding_gives_it(arch):
    """The audit's extracted tokens (the capture's top-1 hits, no decoding) against the
    oracle (one sequence at a time, no cache) on sequences that hold the model's own greedy
    continuation in full, in part, or not at all; float64, so no near-tie can differ."""
    model, _ = tiny_model(arch)
    model = model.double()
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 500, (12, 18), generator=gen)
    prefix, suffix = 6, 8
    expected = _plain_greedy(model, ids[:, :prefix], suffix)
    ids[:5, prefix : prefix + suffix] = expected[:5]  # extracted
    # a run of `run` tokens, then a miss
    for i, run in zip(range(5, 10), (1, 3, 4, 6, 7), strict=True):
        ids[i, prefix : prefix + run] = expected[i, :run]
        ids[i, prefix + run] = (expected[i, run] + 1) % 500
    a = hopaudit.audit(model, ids, progress=False, umap_layers=[], bootstrap=0,
                       extraction={"prefix": prefix, "suffix": suffix})  # fmt: skip
    match = (expected == ids[:, prefix : prefix + suffix]).numpy()
    by_hand = [next((j for j, m in enumerate(row) if not m), suffix) for row in match]
    assert by_hand[:10] == [8] * 5 + [1, 3, 4, 6, 7]
    assert a.samples["extracted_tokens"].tolist() == by_hand
    assert a.extraction["method"] == "teacher-forced"
    assert a.summary()["extraction_rate"] == pytest.approx(np.mean(np.array(by_hand) == suffix))


def test_greedy_runs_against_a_loop_over_sequences():
    """greedy_runs on ragged sequences (1 to 12 predictions each) against a plain loop."""
    from hopaudit.evidence.scores import greedy_runs

    rng = np.random.default_rng(5)
    counts = rng.integers(0, 13, size=40)
    seq = np.repeat(np.arange(40), counts)
    hit = rng.random(seq.size) < 0.8
    for prefix, suffix in ((1, 1), (3, 4), (5, 20)):
        got, compared = greedy_runs(seq, hit, 41, prefix, suffix)  # sequence 40 has none
        for i in range(41):
            own = hit[seq == i][prefix - 1 : prefix - 1 + suffix]
            assert compared[i] == own.size, (prefix, suffix, i)
            run = 0
            while run < own.size and own[run]:
                run += 1
            assert got[i] == run, (prefix, suffix, i)


def test_prefix_plus_suffix_longer_than_sequences_is_refused_before_any_forward(monkeypatch):
    model, _ = tiny_model("gpt2")
    calls = []
    monkeypatch.setattr("hopaudit.engines.local.capture", lambda *a, **k: calls.append(1))
    with pytest.raises(DataError, match=r"prefix \+ suffix = 32 \+ 32 = 64 tokens"):
        hopaudit.audit(
            model,
            random_texts(10, words=40),
            tokenizer=tiny_tokenizer(),
            max_length=16,
            progress=False,
            extraction=True,
        )
    assert calls == []
    with pytest.raises(DataError, match="not understood"):
        hopaudit.audit(
            model, random_texts(10, words=40), tokenizer=tiny_tokenizer(), extraction="yes"
        )
    with pytest.raises(DataError, match="positive number of tokens"):
        hopaudit.extraction(model, torch.zeros(2, 8, dtype=torch.long), prefix=0)


def test_encoder_gets_none_with_a_reason():
    model, _ = tiny_model("bert")
    tok = tiny_tokenizer()
    with pytest.warns(UserWarning, match="no LM head"):
        assert (
            hopaudit.extraction(model, random_texts(4, words=40), tokenizer=tok, max_length=16)
            is None
        )
    masked, _ = tiny_model("bert", kind="masked")
    with pytest.warns(UserWarning, match="masked LM"):
        assert (
            hopaudit.extraction(masked, random_texts(4, words=40), tokenizer=tok, max_length=16)
            is None
        )
    a = hopaudit.audit(
        model,
        random_texts(10, words=40),
        tokenizer=tok,
        max_length=16,
        progress=False,
        umap_layers=[],
        extraction=True,
    )
    summary = a.summary()
    assert summary["extraction_rate"] is None
    assert "no LM head" in summary["extraction_note"]
    assert "extracted" not in a.samples
