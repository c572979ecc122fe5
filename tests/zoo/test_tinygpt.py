"""train_tiny_gpt2: the loss goes down, fractions keep less (nested) data, seeds reproduce.

Oracles are independent of the module: the first loss of a random model is about ln(V); the
held-out loss is computed here by hand with the model's own ``labels=`` loss against a fresh
untrained model of the same config; the sequence counts are recomputed from the tokenizer.
"""

from __future__ import annotations

import math
from pydoc_data.topics import topics

import numpy as np
import pytest
import torch

from hopaudit.errors import DataError, ModelError
from hopaudit.zoo.tinygpt import EOS_TOKEN, train_tiny_gpt2

DOCS = [topics[k] for k in sorted(topics)]
TRAIN_DOCS = DOCS[:20]  # about 60 KB
HELDOUT_DOCS = [d[:2000] for d in DOCS[60:70]]  # about 20 KB, never trained on
TINY = dict(n_layer=1, n_embd=32, n_head=2, seq_len=32, vocab_size=400, batch_size=8, threads=1,
            progress=False)  # fmt: skip


def _sequences(tokenizer, docs, seq_len):
    """The stream cut by hand: each document's ids, then EOS; full sequences only."""
    ids: list[int] = []
    for doc in docs:
        ids += tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"]
        ids.append(tokenizer.eos_token_id)
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def _mean_loss(model, ids):
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """One intra-op thread for every test here (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def full_run():
    return train_tiny_gpt2(TRAIN_DOCS, steps=60, lr=1e-2, **TINY)


def test_loss_goes_down_from_ln_vocab(full_run):
    losses = full_run.losses
    assert len(losses) == 60 and all(math.isfinite(x) for x in losses)
    vocab = full_run.model.config.vocab_size
    assert abs(losses[0] - math.log(vocab)) < 0.5  # a random model is near-uniform
    assert np.mean(losses[-10:]) < losses[0] - 0.8


def test_heldout_loss_beats_an_untrained_model(full_run):
    model = full_run.model
    ids = _sequences(full_run.tokenizer, HELDOUT_DOCS, 32)
    assert ids.shape[0] >= 100
    torch.manual_seed(123)
    untrained = type(model)(model.config).eval()
    trained_loss, untrained_loss = _mean_loss(model, ids), _mean_loss(untrained, ids)
    assert trained_loss < untrained_loss - 0.5
    assert full_run.loss_on(HELDOUT_DOCS) == pytest.approx(trained_loss, rel=1e-4)


def test_fraction_keeps_fewer_nested_sequences_and_memorizes(full_run):
    small = train_tiny_gpt2(TRAIN_DOCS, fraction=0.05, steps=60, lr=1e-2, **TINY)
    all_seqs = _sequences(small.tokenizer, TRAIN_DOCS, 32)
    n = all_seqs.shape[0]
    k = max(1, round(0.05 * n))
    assert len(small.train_texts) == k < n
    assert len(full_run.train_texts) == n and full_run.heldout_texts == []
    assert small.config["n_train_tokens"] == k * 32 and len(small.heldout_texts) == n - k
    # The kept sequences are real sequences of the stream, and a subset of the full run's.
    stream_rows = {tuple(r) for r in all_seqs.tolist()}
    assert {tuple(r) for r in small.train_ids.tolist()} <= stream_rows
    assert set(small.train_texts) <= set(full_run.train_texts)
    joined = EOS_TOKEN.join(TRAIN_DOCS)
    clean = [t for t in small.train_texts if "\ufffd" not in t]
    assert clean and all(t in joined for t in clean)
    # Same steps on 5% of the data: it is memorized, so the training loss ends lower.
    assert np.mean(small.losses[-10:]) < np.mean(full_run.losses[-10:]) - 0.5
    assert small.loss_on(small.train_ids) < full_run.loss_on(full_run.train_ids)


def test_smallest_fraction_keeps_one_sequence():
    run = train_tiny_gpt2(DOCS[:3], fraction=1e-9, steps=2, **TINY)
    assert len(run.train_texts) == 1 and run.train_ids.shape == (1, 32)


def test_same_seed_same_run_other_seed_other_run():
    before = torch.get_rng_state()
    a = train_tiny_gpt2(TRAIN_DOCS[:8], fraction=0.5, steps=6, seed=3, **TINY)
    b = train_tiny_gpt2(TRAIN_DOCS[:8], fraction=0.5, steps=6, seed=3, **TINY)
    c = train_tiny_gpt2(TRAIN_DOCS[:8], fraction=0.5, steps=6, seed=4, **TINY)
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is left alone
    threads = torch.get_num_threads()
    train_tiny_gpt2(TRAIN_DOCS[:2], steps=1, **{**TINY, "threads": threads + 1})
    assert torch.get_num_threads() == threads  # the thread setting is restored
    assert a.losses == b.losses and a.train_texts == b.train_texts
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[key], sb[key]) for key in sa)
    assert a.losses != c.losses and a.train_texts != c.train_texts


def test_model_and_tokenizer_are_ready_to_audit(full_run):
    model, tok = full_run.model, full_run.tokenizer
    assert not model.training
    assert model.hopaudit_tokenizer is tok
    assert model.hopaudit_name == "tiny-gpt2 L1 d32 (100.0% of data)"
    assert tok.eos_token == EOS_TOKEN and tok.pad_token is not None
    assert tok.pad_token_id != tok.eos_token_id
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.config.vocab_size == len(tok) <= 400
    text = "def f(x):\n    return x ** 2  # naïve — ok"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert full_run.config["n_params"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(text=DOCS[:2], fraction=0.0), DataError, "fraction"),
        (dict(text=DOCS[:2], fraction=1.5), DataError, "fraction"),
        (dict(text=[]), DataError, "empty"),
        (dict(text=["ok", 3]), DataError, "list of str"),
        (dict(text=DOCS[:2], n_embd=30, n_head=4), ModelError, "divisible"),
        (dict(text=DOCS[:2], vocab_size=100), ModelError, "vocab_size"),
        (dict(text=DOCS[:2], threads=0), ModelError, "threads"),
        (dict(text="short", seq_len=64), DataError, "shorter than one sequence"),
    ],
)
def test_bad_arguments_say_what_is_wrong(kwargs, error, match):
    opts = {**TINY, **kwargs}
    text = opts.pop("text")
    with pytest.raises(error, match=match):
        train_tiny_gpt2(text, steps=1, **opts)


def test_logged_loss_is_the_loss_on_the_kept_sequences():
    """The training batches are the kept sequences themselves, uniformly: the last logged losses
    and a separate evaluation on exactly those sequences agree."""
    import hopaudit

    run = hopaudit.zoo.train_tiny_gpt2(
        hopaudit.zoo.corpus(max_chars=60_000), fraction=0.2, steps=120, seq_len=16, progress=False
    )
    logged = float(np.mean(run.losses[-10:]))
    assert logged == pytest.approx(run.loss_on(run.train_ids), rel=0.1)


def test_checkpoints_see_the_model_as_it_trains_and_change_nothing():
    """on_checkpoint is called after each listed step with the model as it is then (in eval
    mode, the losses so far); the calls, even ones that draw from torch's global RNG and run
    the model, leave the training exactly as a run without them."""
    seen = []

    def look(step, run):
        seen.append(
            {
                "step": step,
                "config_step": run.config["step"],
                "n_losses": len(run.losses),
                "training": run.model.training,
                "state": {k: v.clone() for k, v in run.model.state_dict().items()},
                "loss": run.loss_on(run.train_ids),
                "n_train": len(run.train_ids),
            }
        )
        torch.rand(100)  # the global RNG: training must not depend on it
        run.model(input_ids=run.train_ids[:2])

    opts = dict(fraction=0.5, steps=6, seed=2, **TINY)
    plain = train_tiny_gpt2(TRAIN_DOCS[:8], **opts)
    hooked = train_tiny_gpt2(TRAIN_DOCS[:8], checkpoints=[6, 2, 4], on_checkpoint=look, **opts)
    assert [s["step"] for s in seen] == [2, 4, 6]
    assert all(s["config_step"] == s["step"] == s["n_losses"] for s in seen)
    assert not any(s["training"] for s in seen)
    assert all(s["n_train"] == len(plain.train_ids) for s in seen)
    assert hooked.losses == plain.losses and hooked.config["step"] == 6
    final = plain.model.state_dict()
    assert all(torch.equal(final[k], hooked.model.state_dict()[k]) for k in final)
    assert all(torch.equal(final[k], seen[-1]["state"][k]) for k in final)
    # earlier checkpoints hold earlier weights: the model moved, and its loss went down
    assert not all(torch.equal(final[k], seen[0]["state"][k]) for k in final)
    assert seen[0]["loss"] > seen[-1]["loss"]
    assert seen[-1]["loss"] == pytest.approx(plain.loss_on(plain.train_ids), rel=1e-6)


@pytest.mark.parametrize(
    ("checkpoints", "hook", "match"),
    [
        ([0], print, r"1\.\.3"),
        ([4], print, r"1\.\.3"),
        ([1.5], print, r"1\.\.3"),
        ("12", print, "list of steps"),
        ([2], None, "without on_checkpoint"),
        ([2], "print", "callable"),
    ],
)
def test_bad_checkpoints_say_what_is_wrong(checkpoints, hook, match):
    with pytest.raises(ModelError, match=match):
        train_tiny_gpt2(DOCS[:2], steps=3, checkpoints=checkpoints, on_checkpoint=hook, **TINY)
