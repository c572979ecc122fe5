"""``compile=True`` (hopaudit/model/compiled.py): the compiled capture against transformers' own
hidden states and loss, the fallback to eager when the compiler fails, and the blocks' own
``forward`` back afterwards, also after Ctrl-C."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from capture_helpers import _data, _parts, _reference, _run
from tiny_models import tiny_model

import hopaudit
from hopaudit.errors import CaptureError, DataError
from hopaudit.model import compiled

needs_compiler = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="torch.compile on a CPU needs a C++ compiler (none on PATH)",
)


def _own_forward_everywhere(model) -> bool:
    return not any("forward" in m.__dict__ for m in model.modules())


def _fake_compile(calls):
    """A stand-in for torch.compile that counts its calls and runs the function as it is."""

    def fake(fn, **kwargs):
        calls.append(kwargs)

        def run(*a, **k):
            return fn(*a, **k)

        return run

    return fake


@needs_compiler
def test_compiled_capture_matches_transformers_hidden_states_and_loss():
    model, info = tiny_model("llama", num_hidden_layers=2)
    data = _data([12, 16, 9, 16], seq_len=16)
    ref, _ = _reference(model, info, data)
    cap = _run(model, info, data, positions="all", store_dtype=torch.float32, compile=True)
    assert cap.compiled == "torch.compile: 2 blocks"
    assert _own_forward_everywhere(model)
    mask = data.attention_mask.bool().numpy()
    for name in cap.layer_names:
        got = cap.store.get(name)
        want = ref[name][mask]
        # fused kernels round differently from eager: float32 agreement to 1e-4 relative
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # the loss transformers computes from its own logits (padding ignored)
    labels = data.input_ids.masked_fill(data.attention_mask == 0, -100)
    with torch.no_grad():
        want_ce = model(input_ids=data.input_ids, attention_mask=data.attention_mask,
                        labels=labels).loss.item()  # fmt: skip
    assert cap.cross_entropy == pytest.approx(want_ce, rel=1e-4)


def test_a_compiler_failure_leaves_the_pass_eager_with_a_warning(monkeypatch):
    def broken(fn, **kwargs):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    model, info = tiny_model("gpt2", n_layer=2)
    data = _data([10, 10, 7, 10, 10], seq_len=10)
    eager = _run(model, info, data, positions="all", store_dtype=torch.float32, batch_size=2)
    with pytest.warns(UserWarning, match="torch.compile failed.*no C\\+\\+ compiler"):
        cap = _run(
            model, info, data, positions="all", store_dtype=torch.float32, batch_size=2,
            compile=True,
        )  # fmt: skip
    assert cap.compiled.startswith("eager: torch.compile failed (RuntimeError: no C++ compiler")
    assert _own_forward_everywhere(model)
    # the failed batch ran again, once: the same rows as an eager capture, in the same order
    for name in cap.layer_names:
        np.testing.assert_array_equal(cap.store.get(name), eager.store.get(name))
    np.testing.assert_array_equal(cap.row_sequence, eager.row_sequence)
    # the retried pass scores from the whole logits (a failed batch stops the head's
    # interception) and eager from the head a slice at a time: float32 sums in another order
    assert cap.cross_entropy == pytest.approx(eager.cross_entropy, rel=1e-6)


def test_an_error_of_the_model_itself_is_still_a_capture_error(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", _fake_compile(calls))
    model, info = tiny_model("gpt2", n_layer=2)
    data = _data([8, 8], seq_len=8)

    def fail(module, args):
        raise ValueError("the model's own bug")

    model.transformer.h[1].register_forward_pre_hook(fail)
    with (
        pytest.warns(UserWarning, match="torch.compile failed"),
        pytest.raises(CaptureError, match="the model's own bug"),
    ):
        _run(model, info, data, compile=True)
    assert _own_forward_everywhere(model)
    assert [c["dynamic"] for c in calls] == [True, True]  # one per block, not the final norm


def test_blocks_get_their_forward_back_after_ctrl_c(monkeypatch):
    monkeypatch.setattr(torch, "compile", _fake_compile([]))
    model, info = tiny_model("gpt2", n_layer=2)
    data = _data([8] * 6, seq_len=8)
    seen = []

    def interrupt(module, args, output):
        seen.append(module.forward)
        if module.forward.__name__ == "run":  # not the eager check of the LM head before
            raise KeyboardInterrupt

    model.transformer.h[1].register_forward_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        _run(model, info, data, compile=True)
    assert seen and seen[-1].__name__ == "run"  # the block ran through the stand-in
    assert _own_forward_everywhere(model)
    assert not model._forward_hooks and not model.transformer.h[0]._forward_hooks


def test_blocks_whose_forward_is_already_wrapped_stay_eager(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", _fake_compile(calls))
    model, info = tiny_model("gpt2", n_layer=3)
    block = model.transformer.h[0]
    wrapped = block.forward  # as accelerate's offload hooks leave it: an instance attribute
    block.__dict__["forward"] = wrapped
    blocks, _ = _parts(model, info)
    with compiled.compiled_blocks([m for _, m in blocks], True) as state:
        assert state.note == (
            "torch.compile: 2 blocks (1 left eager: their forward was already wrapped, as by "
            "accelerate)"
        )
        assert block.__dict__["forward"] is wrapped
    assert block.__dict__["forward"] is wrapped  # never removed: it was not hopaudit's
    assert len(calls) == 2


def test_compile_off_touches_nothing(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", _fake_compile(calls))
    model, info = tiny_model("gpt2", n_layer=2)
    cap = _run(model, info, _data([8, 8], seq_len=8))
    assert cap.compiled is None and calls == []


def test_bad_compile_is_refused_before_any_forward():
    model, _ = tiny_model("gpt2", n_layer=2)
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(DataError, match="compile must be True or False"):
        hopaudit.audit(model, _data([8] * 6).input_ids, compile="yes", progress=False)
    assert calls == []


def test_the_audit_records_and_shows_what_was_compiled(monkeypatch):
    monkeypatch.setattr(torch, "compile", _fake_compile([]))
    model, _ = tiny_model("gpt2", n_layer=2)
    audit = hopaudit.audit(
        model, _data([8] * 40, vocab=500).input_ids, compile=True, umap_layers=[],
        progress=False, bootstrap=0,
    )  # fmt: skip
    assert audit.summary()["compiled"] == "torch.compile: 2 blocks"
    assert audit.options["compile"] is True


@needs_compiler
def test_past_dynamos_recompile_limit_the_pass_runs_eager_and_says_so(monkeypatch):
    # transformers wraps every layer class's forward in one shared function: each class
    # audited adds a compilation to its cache, and past the limit dynamo would run the blocks
    # eager while the note still said compiled
    monkeypatch.setattr(compiled, "RECOMPILE_LIMIT", 1)
    first, info = tiny_model("llama", num_hidden_layers=2)
    data = _data([8, 8, 6], seq_len=8)
    _run(first, info, data, compile=True)  # one entry in the shared function's cache
    second, info = tiny_model("gpt2", n_layer=2)
    with pytest.warns(UserWarning, match="torch.compile failed.*FailOnRecompileLimitHit"):
        cap = _run(second, info, data, compile=True, store_dtype=torch.float32)
    assert cap.compiled.startswith("eager: torch.compile failed (FailOnRecompileLimitHit")
    eager = _run(second, info, data, store_dtype=torch.float32)
    for name in cap.layer_names:
        np.testing.assert_array_equal(cap.store.get(name), eager.store.get(name))


def test_the_recompile_limit_is_set_under_the_names_this_torch_knows(monkeypatch):
    import types

    import torch._dynamo

    older = types.SimpleNamespace(cache_size_limit=8, fail_on_cache_limit_hit=False)
    monkeypatch.setattr(torch._dynamo, "config", older)  # torch before 2.6 named them so
    assert compiled._limit_settings() == {"cache_size_limit": 64, "fail_on_cache_limit_hit": True}
    monkeypatch.setattr(torch._dynamo, "config", types.SimpleNamespace())
    assert compiled._limit_settings() == {}
