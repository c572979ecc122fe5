"""capture(): activations against output_hidden_states, positions against manual indexing,
scores against transformers' loss and a float64 numpy computation from the logits, and the
hooks, training flags and stores left behind on success, errors and KeyboardInterrupt.

The oracle for where blocks are is tiny_models.TinyInfo (written by hand per architecture), so
these tests do not depend on hopaudit.blocks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from capture_helpers import _data, _parts, _reference, _run
from tiny_models import NanoGPT, tiny_model
from torch import nn

from hopaudit.capture import TraceBlocks, capture, select_positions
from hopaudit.capture.store import ActivationStore
from hopaudit.data import TokenData
from hopaudit.errors import CaptureError, DataError, FormatError, ModelError
from hopaudit.model.blocks import find_stacks


# ------------------------------------------------------------------------------- helpers
def _hooks(model):
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._forward_hooks_with_kwargs)
        for m in model.modules()
    )


def _expected_rows(data, positions):
    """(sequence, position) of every row, by hand, for right-padded data."""
    rows = []
    for b, n in enumerate(data.attention_mask.sum(1).tolist()):
        kind = positions if isinstance(positions, str) else "ints"
        if kind == "last":
            ps = [n - 1]
        elif kind == "all":
            ps = list(range(n))
        elif kind == "mean":
            ps = [-1]
        else:
            ps = sorted({p if p >= 0 else n + p for p in np.atleast_1d(positions).tolist()})
        rows += [(b, p) for p in ps]
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def _manual(ref, data, positions):
    lengths = data.attention_mask.sum(1).tolist()
    if isinstance(positions, str) and positions == "mean":
        return np.stack([ref[b, :n].astype(np.float64).mean(0) for b, n in enumerate(lengths)])
    rows = _expected_rows(data, positions)
    return ref[rows[:, 0], rows[:, 1]]


# -------------------------------------------------------------------- activations are right
@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox", "bert", "opt", "phi"])
def test_blocks_match_hidden_states(arch):
    model, info = tiny_model(arch)
    data = _data([11, 7, 11, 4, 9])
    ref, _ = _reference(model, info, data)
    res = _run(model, info, data, positions="all", batch_size=2)
    expected_names = info.block_paths + (["final"] if info.has_lm_head else [])
    assert res.layer_names == expected_names
    rows = _expected_rows(data, "all")
    np.testing.assert_array_equal(np.c_[res.row_sequence, res.row_position], rows)
    for name in expected_names:
        got = res.store.get(name)
        assert got.dtype == np.float16
        want = ref[name][rows[:, 0], rows[:, 1]]
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-3, atol=2e-3)
    assert res.n_tokens == 42
    assert res.nonfinite == dict.fromkeys(expected_names, 0)


@pytest.mark.parametrize(
    "positions", ["last", "all", "mean", 0, -2, [0, -1], [1, 3, -1, -4], np.array([2, 0])]
)
def test_every_positions_mode_against_manual_indexing(positions):
    model, info = tiny_model("gpt2")
    data = _data([9, 4, 12, 6, 4])  # document mode: right padding, unequal lengths
    ref, _ = _reference(model, info, data)
    res = _run(model, info, data, positions=positions, batch_size=3, store_dtype=torch.float32)
    rows = _expected_rows(data, positions)
    np.testing.assert_array_equal(res.row_sequence, rows[:, 0])
    np.testing.assert_array_equal(res.row_position, rows[:, 1])
    for name in [*info.block_paths, "final"]:
        got = res.store.get(name)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, _manual(ref[name], data, positions), rtol=1e-4, atol=1e-4)


def test_select_positions_handles_any_mask_layout():
    mask = torch.tensor([[0, 1, 1, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 0]])
    b, t = select_positions(mask, "last")
    assert t.tolist() == [4, 4, 3]
    b, t = select_positions(mask, [0, -1])
    assert list(zip(b.tolist(), t.tolist(), strict=True)) == [
        (0, 1), (0, 4), (1, 0), (1, 4), (2, 3),
    ]  # fmt: skip
    with pytest.raises(DataError, match="beyond sequence 2, which has 1 tokens"):
        select_positions(mask, [0, -2])
    b, t = select_positions(mask, "all")
    assert t.tolist() == [1, 2, 4, 0, 1, 2, 3, 4, 3]


def test_batch_size_does_not_change_results():
    model, info = tiny_model("llama")
    data = _data([8, 3, 8, 6, 5, 8, 2])
    a = _run(model, info, data, positions="all", batch_size=1)
    b = _run(model, info, data, positions="all")  # chosen batch size: all at once here
    assert b.batch_size == 7
    for name in a.layer_names:
        np.testing.assert_allclose(
            a.store.get(name).astype(np.float32), b.store.get(name).astype(np.float32),
            rtol=2e-3, atol=2e-3,
        )  # fmt: skip
    np.testing.assert_allclose(a.seq_nll, b.seq_nll, rtol=1e-5)


# ---------------------------------------------------------------------------------- scores
@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_cross_entropy_equals_transformers_loss(arch):
    model, info = tiny_model(arch)
    data = _data([16] * 5, seed=3)
    res = _run(model, info, data, batch_size=2)
    with torch.no_grad():
        loss = model(input_ids=data.input_ids, labels=data.input_ids).loss.item()
    assert abs(res.cross_entropy - loss) < 1e-4
    assert res.n_predicted == 5 * 15
    assert res.loss_note is None


def _numpy_scores(logits, data, min_k):
    """NLL, Min-K% and top-1 per sequence in float64 from full logits, written from scratch."""
    logits = logits.astype(np.float64)
    out = []
    for b, n in enumerate(data.attention_mask.sum(1).tolist()):
        x = logits[b, : n - 1]
        logp = x - x.max(1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
        nxt = data.input_ids[b, 1:n].numpy()
        tok = logp[np.arange(n - 1), nxt]
        k = max(1, int(len(tok) * min_k))
        out.append((-tok.mean(), np.sort(tok)[:k].mean(), (x.argmax(1) == nxt).mean(), -tok.sum()))
    return np.array(out)


@pytest.mark.parametrize("min_k", [0.2, 0.35, 1.0])
def test_min_k_top1_and_nll_against_numpy(min_k):
    model, info = tiny_model("gpt2")
    data = _data([12, 2, 7, 12, 9, 3], seed=5)
    with torch.no_grad():
        logits = model(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
    want = _numpy_scores(logits.numpy(), data, min_k)
    res = _run(model, info, data, batch_size=4, min_k=min_k)
    np.testing.assert_allclose(res.seq_nll, want[:, 0], rtol=1e-5)
    np.testing.assert_allclose(res.seq_min_k, want[:, 1], rtol=1e-5)
    np.testing.assert_allclose(res.seq_top1, want[:, 2], rtol=1e-12)
    assert (res.seq_min_k <= -res.seq_nll + 1e-9).all()  # lowest k% sit below the mean
    n_pred = int((data.attention_mask.sum(1) - 1).sum())
    assert res.n_predicted == n_pred
    np.testing.assert_allclose(res.cross_entropy, want[:, 3].sum() / n_pred, rtol=1e-5)


def test_top1_is_one_for_a_model_that_predicts_the_next_token():
    """An LM whose logits put all mass on token (id + 1) % V, fed counting sequences."""

    class Counter(nn.Module):
        def __init__(self, vocab=50):
            super().__init__()
            self.emb = nn.Embedding(vocab, vocab)
            self.block = nn.Identity()
            with torch.no_grad():
                self.emb.weight.copy_(20 * torch.roll(torch.eye(vocab), 1, dims=1))

        def get_input_embeddings(self):
            return self.emb

        def forward(self, input_ids, attention_mask=None):
            return self.block(self.emb(input_ids))

    model = Counter()
    ids = torch.arange(40).reshape(4, 10) % 50
    data = TokenData(ids, torch.ones_like(ids), [""] * 4)
    res = capture(model, data, [("block", model.block)], final=None, progress=False)
    np.testing.assert_array_equal(res.seq_top1, np.ones(4))
    assert np.all(res.seq_nll < 1e-6) and res.cross_entropy < 1e-6


def test_nanogpt_plain_logits_are_scored():
    model = NanoGPT().eval()
    data = _data([10, 10, 10], seed=2)
    res = capture(model, data, [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)],
                  final=("ln_f", model.ln_f), progress=False)  # fmt: skip
    with torch.no_grad():
        logits = model(data.input_ids)
    ce = nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), data.input_ids[:, 1:].reshape(-1)
    )
    assert abs(res.cross_entropy - ce.item()) < 1e-4


def test_encoder_has_no_loss_and_says_why():
    model, info = tiny_model("bert")
    res = _run(model, info, _data([5, 8]))
    assert res.seq_nll is None and res.seq_min_k is None and res.seq_top1 is None
    assert res.cross_entropy is None
    assert "encoder without an LM head" in res.loss_note
    masked, minfo = tiny_model("bert", kind="masked")
    res = _run(masked, minfo, _data([5, 8]))
    assert res.cross_entropy is None and "masked-LM" in res.loss_note


# ------------------------------------------------------------------ nothing left behind
def _raise_on_call(module, exc, on_call=1):
    calls = {"n": 0}

    def hook(m, a, out):
        calls["n"] += 1
        if calls["n"] >= on_call:
            raise exc

    return module.register_forward_hook(hook)


def test_no_hooks_after_normal_run_and_flags_restored():
    model, info = tiny_model("gpt2")
    model.train()
    model.transformer.h[1].eval()  # a mixed state must come back as it was
    before = {n: m.training for n, m in model.named_modules()}
    assert _hooks(model) == 0
    _run(model, info, _data([5, 5, 5]))
    assert _hooks(model) == 0
    assert {n: m.training for n, m in model.named_modules()} == before


def test_no_hooks_after_exception_inside_forward(tmp_path):
    model, info = tiny_model("llama")
    model.train()
    handle = _raise_on_call(model.model.layers[1].mlp, RuntimeError("boom"))
    try:
        with pytest.raises(CaptureError, match="boom"):
            _run(model, info, _data([6, 6]), store=tmp_path / "acts")
    finally:
        handle.remove()
    assert _hooks(model) == 0
    assert all(m.training for m in model.modules())
    assert not (tmp_path / "acts").exists()  # the store it created is gone


def test_no_hooks_after_keyboard_interrupt_mid_capture(tmp_path):
    model, info = tiny_model("gpt2")
    handle = _raise_on_call(model.transformer.h[0], KeyboardInterrupt(), on_call=2)
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(model, info, _data([6, 6, 6]), batch_size=1, store=tmp_path / "acts")
    finally:
        handle.remove()
    assert _hooks(model) == 0
    assert not model.training
    assert not (tmp_path / "acts").exists()


def test_trace_blocks_removes_hooks_and_never_swallows():
    model, info = tiny_model("gpt2")
    blocks, _ = _parts(model, info)
    got = {}
    with pytest.raises(ValueError, match="inside"), TraceBlocks(
        dict(blocks), lambda n, t: got.__setitem__(n, t.shape)
    ):  # fmt: skip
        model(input_ids=torch.ones(2, 4, dtype=torch.long))
        assert _hooks(model) == len(blocks)
        raise ValueError("inside")
    assert got == {p: torch.Size([2, 4, 32]) for p in info.block_paths}
    assert _hooks(model) == 0


def test_positions_beyond_sequence_is_a_clear_error():
    model, info = tiny_model("gpt2")
    data = _data([8, 3, 8])
    for bad in (3, -4, [0, 5]):
        with pytest.raises(DataError, match="beyond sequence 1, which has 3 tokens"):
            _run(model, info, data, positions=bad)
        assert _hooks(model) == 0
    for bad in ("first", [], 1.5, [True]):
        with pytest.raises(DataError, match="positions"):
            _run(model, info, data, positions=bad)


def test_not_a_block_names_module_and_shape():
    model = NanoGPT().eval()
    data = _data([7, 7])
    with pytest.raises(ModelError, match=r"'wpe'.*shape \(7, 32\).*blocks="):
        capture(model, data, [("wpe", model.wpe)], final=None, progress=False)
    assert _hooks(model) == 0
    gpt, _ = tiny_model("gpt2")
    mixed = [("transformer.h.0", gpt.transformer.h[0]), ("h0.fc", gpt.transformer.h[0].mlp.c_fc)]
    with pytest.raises(ModelError, match=r"'h0\.fc'.*hidden size 128"):
        capture(gpt, data, mixed, final=None, progress=False)
    assert _hooks(gpt) == 0


def test_bad_data_errors():
    model, info = tiny_model("gpt2")
    data = _data([4, 4])
    data.input_ids[0, 1] = 512
    with pytest.raises(DataError, match="vocabulary has 512"):
        _run(model, info, data)
    empty = _data([4, 4])
    empty.attention_mask[1] = 0
    with pytest.raises(DataError, match="sequence 1 has no real tokens"):
        _run(model, info, empty)
    with pytest.raises(DataError, match="min_k"):
        _run(model, info, _data([4]), min_k=0)
    with pytest.raises(DataError, match="TokenData"):
        _run(model, info, [[1, 2, 3]])


def test_store_path_not_empty_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    model, info = tiny_model("gpt2")
    with pytest.raises(FormatError, match="not an activation store"):
        _run(model, info, _data([4]), store=tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    assert _hooks(model) == 0


# ------------------------------------------------------------------------------- nonfinite
def test_nan_and_inf_are_counted_for_their_layer():
    model, info = tiny_model("gpt2")
    data = _data([6, 5, 6, 4])

    def poison(m, a, out):
        h = out[0] if isinstance(out, tuple) else out
        h = h.clone()
        h[1, 4, 3] = float("nan")  # last token of sequence 1
        h[3, 0, :] = float("inf")  # first token of sequence 3
        h[2, 5, 0] = 1e6  # finite in float32, inf in float16 storage
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = model.transformer.h[1].register_forward_hook(poison)
    try:
        with pytest.warns(RuntimeWarning, match="overflowed") as caught:
            res = _run(model, info, data, positions="all", batch_size=4)
        assert _hooks(model) == 1  # only the poison hook
    finally:
        handle.remove()
    assert any("1 rows of layer 'transformer.h.1' overflowed" in str(w.message) for w in caught)
    assert res.nonfinite["transformer.h.0"] == 0
    assert res.nonfinite["transformer.h.1"] == 3
    assert res.overflow.get("transformer.h.1") == 1  # (the residual carries 1e6 onwards)
    assert "transformer.h.0" not in res.overflow
    rows = res.store.get("transformer.h.1")
    bad = ~np.isfinite(rows).all(1)
    pos = list(zip(res.row_sequence[bad].tolist(), res.row_position[bad].tolist(), strict=True))
    assert pos == [(1, 4), (2, 5), (3, 0)]  # kept in the store, at their rows
    assert len(rows) == 21
    res32 = _run(model, info, data, positions="last", store_dtype=torch.float32)
    assert res32.overflow == {}


# ------------------------------------------------------------------------------- the store
def test_memory_mapped_store_round_trips(tmp_path):
    model, info = tiny_model("gpt2")
    data = _data([9, 6, 9, 3, 7])
    ram = _run(model, info, data, positions="all", batch_size=2)
    disk = _run(model, info, data, positions="all", batch_size=2, store=tmp_path / "acts")
    assert ram.store.path is None and disk.store.path == tmp_path / "acts"
    again = ActivationStore.open(tmp_path / "acts")
    for name in ram.layer_names:
        assert isinstance(disk.store.get(name), np.memmap)
        np.testing.assert_array_equal(disk.store.get(name), ram.store.get(name))
        np.testing.assert_array_equal(again.get(name), ram.store.get(name))
    assert again.nbytes == ram.store.nbytes == 4 * 34 * 32 * 2
    np.testing.assert_array_equal(disk.seq_nll, ram.seq_nll)


def test_bfloat16_storage_rounds_and_stores_float32():
    model, info = tiny_model("gpt2")
    data = _data([5, 5])
    ref, _ = _reference(model, info, data)
    res = _run(model, info, data, store_dtype=torch.bfloat16)
    got = res.store.get("final")
    assert got.dtype == np.float32
    want = torch.from_numpy(_manual(ref["final"], data, "last")).bfloat16().float().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)
    # values are bfloat16 numbers: the low 16 bits of every float32 are zero
    assert not (got.view(np.uint32) & 0xFFFF).any()


def test_forward_gets_ids_mask_and_use_cache_only_when_accepted():
    seen = []

    class Plain(nn.Module):
        def __init__(self, with_cache):
            super().__init__()
            self.emb = nn.Embedding(20, 8)
            self.block = nn.Identity()
            self.with_cache = with_cache

        def forward(self, input_ids, attention_mask=None, **kwargs):
            seen.append(sorted(kwargs))
            return self.block(self.emb(input_ids))

    class WithCache(Plain):
        def forward(self, input_ids, attention_mask=None, use_cache=None):
            seen.append(["use_cache"] if use_cache is False else [])
            return self.block(self.emb(input_ids))

    ids = torch.ones(2, 3, dtype=torch.long)
    data = TokenData(ids, torch.ones_like(ids), ["", ""])
    for cls in (Plain, WithCache):
        model = cls(True)
        res = capture(model, data, [("block", model.block)], final=None, progress=False)
        assert res.cross_entropy is None and "no logits" in res.loss_note
    assert seen == [[], ["use_cache"]]


def test_chosen_batch_size_follows_its_documented_budgets():
    from hopaudit.capture import LOGITS_BUDGET_BYTES, choose_batch_size

    model, _ = tiny_model("llama")  # vocab 512
    assert choose_batch_size(model, 128, 1000, "cpu") == 8192 // 128  # tokens per batch
    assert choose_batch_size(model, 128, 10, "cpu") == 10  # never more than the data
    assert choose_batch_size(model, 4096, 1000, "cpu") == 1  # long sequences: one at a time
    big, _ = tiny_model("llama", vocab_size=200_000)
    bs = choose_batch_size(big, 128, 1000, "cpu")
    assert bs * 128 * 200_000 * 4 <= LOGITS_BUDGET_BYTES < (bs + 1) * 128 * 200_000 * 4


def test_batch_logits_stay_within_one_layer_of_the_audit():
    """A CPU batch's float32 logits stay within one layer's float32 rows (clamped to the floor
    and the cap), so the capture's peak follows the audit's size (benchmarks/many_layers.py:
    with the cap alone a GPT-2's 400 x 64 positions held 7 layers of logits at once)."""
    from hopaudit.capture import (
        LOGITS_BUDGET_BYTES,
        LOGITS_FLOOR_BYTES,
        choose_batch_size,
        layer_bytes,
        layer_rows,
        logits_budget,
    )

    assert logits_budget(None) == LOGITS_BUDGET_BYTES
    assert logits_budget(1) == LOGITS_FLOOR_BYTES
    assert logits_budget(300 * 2**20) == 300 * 2**20
    assert logits_budget(10 * 2**30) == LOGITS_BUDGET_BYTES
    big, _ = tiny_model("llama", vocab_size=200_000)
    hidden, seq_len = big.config.hidden_size, 16
    n = 300_000  # 3.6 M positions: one layer (hidden 32) is 440 MiB, between floor and cap
    ids = torch.ones(n, seq_len, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[:, 12:] = 0  # 12 real tokens a sequence
    data = TokenData(ids, mask, [""] * n)
    assert layer_rows(data, "all") == n * 12
    assert layer_rows(data, "last") == n and layer_rows(data, [0, -1]) == 2 * n
    for positions, rows in (("all", n * 12), ("last", n), ([0, 1, 2], 3 * n)):
        one = layer_bytes(big, data, positions)
        assert one == rows * hidden * 4
        budget = min(LOGITS_BUDGET_BYTES, max(LOGITS_FLOOR_BYTES, one))
        assert logits_budget(one) == budget
        per_seq = seq_len * 200_000 * 4
        bs = choose_batch_size(big, seq_len, n, "cpu", one)
        assert bs == max(1, min(8192 // seq_len, budget // per_seq)), positions
    assert LOGITS_FLOOR_BYTES < layer_bytes(big, data, "all") < LOGITS_BUDGET_BYTES
    # what capture() chooses: the same formula on its own data
    small = TokenData(ids[:40], mask[:40], [""] * 40)
    res = capture(big, small, find_stacks(big), positions="all", progress=False)
    per_seq = seq_len * 200_000 * 4
    assert res.batch_size == logits_budget(40 * 12 * hidden * 4) // per_seq
    assert res.batch_size == LOGITS_FLOOR_BYTES // per_seq  # the floor


def test_progress_bar_reports_tokens_per_second(monkeypatch):
    import hopaudit.capture.forward

    bars = []

    class Recorder:
        def __init__(self, *, total, disable, **kw):
            self.total, self.disable = total, disable
            self.done, self.postfix, self.closed = 0, [], 0
            bars.append(self)

        def update(self, n):
            self.done += n

        def set_postfix_str(self, text, refresh=True):
            self.postfix.append(text)

        def close(self):
            self.closed += 1

    model, info = tiny_model("gpt2")
    monkeypatch.setattr(hopaudit.capture.forward, "tqdm", Recorder)
    _run(model, info, _data([6, 6, 6]), batch_size=1, progress=True)
    _run(model, info, _data([6, 6, 6]), batch_size=2, progress=False)
    (on, off) = bars
    assert (on.total, on.done, on.disable, on.closed) == (3, 3, False, 1)
    assert len(on.postfix) == 3 and all(p.endswith(" tok/s") for p in on.postfix)
    assert off.disable is True and off.closed == 1


def test_inputs_go_to_the_input_embedding_device():
    from hopaudit.capture import model_device

    class Split(nn.Module):  # first parameter elsewhere (meta), embedding on the CPU
        def __init__(self):
            super().__init__()
            self.early = nn.Linear(2, 2, device="meta")
            self.emb = nn.Embedding(10, 4)

        def get_input_embeddings(self):
            return self.emb

    assert model_device(Split()) == torch.device("cpu")
    assert model_device(nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert model_device(nn.Identity()) == torch.device("cpu")


def test_a_fresh_store_object_can_be_given(tmp_path):
    model, info = tiny_model("gpt2")
    names = [*info.block_paths, "final"]
    store = ActivationStore(names, path=tmp_path / "s")
    res = _run(model, info, _data([5, 4]), store=store)
    assert res.store is store and store.finalized and store.get("final").shape == (2, 32)
    with pytest.raises(DataError, match="fresh ActivationStore"):
        _run(model, info, _data([5, 4]), store=store)  # finalized already
    with pytest.raises(DataError, match="fresh ActivationStore"):
        _run(model, info, _data([5, 4]), store=ActivationStore(["x"]))
    assert _hooks(model) == 0
