"""hopaudit.precision: which forward precision is chosen, and what bfloat16 autocast changes.

The bfloat16 run is checked against float32 references computed by transformers itself
(``output_hidden_states`` and its ``labels=`` loss), not against hopaudit's own float32 run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from capture_helpers import _data, _reference, _run
from tiny_models import tiny_model

import hopaudit
from hopaudit.errors import DataError
from hopaudit.model import precision

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_uses_bfloat16_only_where_native_and_the_model_is_float32(monkeypatch, native):
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    model, _ = tiny_model("llama")
    assert precision.compute_dtype(model, CPU, "auto") == (torch.bfloat16 if native else None)
    assert precision.compute_dtype(model, CPU, "off") is None
    assert precision.compute_dtype(model, CPU, "bfloat16") == torch.bfloat16
    # a model already in half precision runs as it is
    assert precision.compute_dtype(model.to(torch.bfloat16), CPU, "auto") is None
    # autocast exists for CPU and CUDA only: elsewhere the model runs as it is
    assert precision.compute_dtype(model, torch.device("meta"), "bfloat16") is None


def test_describe_names_what_ran():
    model, _ = tiny_model("llama")
    assert precision.describe(torch.bfloat16, model) == "bfloat16 autocast"
    assert precision.describe(None, model) == "float32"


def test_bad_autocast_is_refused_before_any_work():
    model, _ = tiny_model("llama")
    with pytest.raises(DataError, match="autocast must be one of"):
        precision.compute_dtype(model, CPU, "fp8")
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(DataError, match="autocast"):
        hopaudit.audit(model, _data([8] * 6).input_ids, autocast="half", progress=False)
    assert calls == []


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bfloat16_capture_stays_close_to_the_float32_model(arch):
    model, info = tiny_model(arch)
    data = _data([16] * 6, seed=4)
    ref, _ = _reference(model, info, data)  # float32, by transformers
    with torch.no_grad():
        loss = model(input_ids=data.input_ids, labels=data.input_ids).loss.item()
    res = _run(model, info, data, positions="all", autocast="bfloat16")
    assert res.compute_dtype == "bfloat16 autocast, weights cast once"
    # autocast left no trace on the model: its weights are still float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for name in res.layer_names:
        got = res.store.get(name).astype(np.float32).reshape(ref[name].shape)
        rel = np.linalg.norm(got - ref[name], axis=-1) / np.linalg.norm(ref[name], axis=-1)
        # bfloat16 keeps 8 bits of mantissa (relative step 2^-8 = 0.4 %)
        assert np.median(rel) < 0.03, (name, float(np.median(rel)))
        assert np.median(rel) > 0, "bfloat16 made no difference: autocast did not run"
    assert abs(res.cross_entropy - loss) < 0.05

    off = _run(model, info, data, positions="all", autocast="off")
    assert off.compute_dtype == "float32"
    assert abs(off.cross_entropy - loss) < 1e-4


def _autocast_forward(model, data):
    """Hidden states and logits under plain torch.autocast, as transformers computes them."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(
            input_ids=data.input_ids, attention_mask=data.attention_mask, output_hidden_states=True
        )
    return [h.clone() for h in out.hidden_states], out.logits.clone()


@pytest.mark.parametrize(
    ("arch", "overrides"), [("gpt2", {}), ("llama", {}), ("llama", {"tie_word_embeddings": True})]
)
def test_weights_cast_once_give_autocasts_results_bit_for_bit(arch, overrides):
    """The products see the same bfloat16 weights autocast would cast at every call: every
    hidden state and the logits are equal, not close; the model gets its own float32
    parameters back (the same objects), and a tied weight is cast once."""
    model, _ = tiny_model(arch, **overrides)
    data = _data([16, 11, 16, 9], seed=2)
    before = {n: p for n, p in model.named_parameters(remove_duplicate=False)}
    want_h, want_logits = _autocast_forward(model, data)
    with (
        torch.inference_mode(),
        torch.autocast("cpu", dtype=torch.bfloat16),
        precision.cast_weights_once(model, torch.bfloat16) as n,
    ):
        out = model(
            input_ids=data.input_ids, attention_mask=data.attention_mask, output_hidden_states=True
        )
        head = model.get_output_embeddings().weight
        assert head.dtype == torch.bfloat16
        tied = any(
            p is head for m in model.modules() if m is not model.get_output_embeddings()
            for p in m._parameters.values()
        )  # fmt: skip
    linears = [m for m in model.modules() if type(m).__name__ in ("Linear", "Conv1D")]
    assert n == sum(m.weight is not None for m in linears) + sum(
        getattr(m, "bias", None) is not None for m in linears
    )
    assert not tied  # the embedding keeps its float32 weight; only the head's product is cast
    for got, want in zip(out.hidden_states, want_h, strict=True):
        assert torch.equal(got, want)
    assert torch.equal(out.logits, want_logits)
    after = {n: p for n, p in model.named_parameters(remove_duplicate=False)}
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] and after[k].dtype == torch.float32 for k in before)


def test_weights_come_back_on_an_error_and_stay_when_memory_is_short(monkeypatch):
    model, _ = tiny_model("llama")
    before = list(model.parameters())
    with pytest.raises(KeyboardInterrupt), precision.cast_weights_once(model, torch.bfloat16) as n:
        assert n > 0 and model.lm_head.weight.dtype == torch.bfloat16
        raise KeyboardInterrupt
    assert all(a is b for a, b in zip(model.parameters(), before, strict=True))
    monkeypatch.setattr(precision, "_free_bytes", lambda device: 1000)  # copies would not fit
    with precision.cast_weights_once(model, torch.bfloat16) as n:
        assert n == 0 and model.lm_head.weight.dtype == torch.float32
    with precision.cast_weights_once(model, None) as n:
        assert n == 0


def test_capture_runs_its_products_on_weights_cast_once():
    model, info = tiny_model("llama")
    seen = []
    model.lm_head.register_forward_pre_hook(lambda m, a: seen.append(m.weight.dtype))
    res = _run(model, info, _data([8] * 4), autocast="bfloat16")
    assert res.compute_dtype == "bfloat16 autocast, weights cast once"
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    seen.clear()
    _run(model, info, _data([8] * 4), autocast="off")
    assert set(seen) == {torch.float32}


def _products(model):
    """Every Linear of ``model`` with the bytes of its weight and bias in bfloat16."""
    return [
        (m, sum(p.numel() * 2 for p in (m.weight, m.bias) if p is not None))
        for m in model.modules()
        if type(m).__name__ == "Linear"
    ]


def test_a_budget_casts_the_head_and_then_the_products_in_order_that_fit():
    """``first`` (the head) is cast whatever the budget; then the model's products in order
    while the copies, the head's among them, fit; the rest left to autocast: the logits and
    every hidden state are still autocast's bit for bit (the same rounding, once or at each
    call)."""
    model, _ = tiny_model("llama")
    head = model.get_output_embeddings()
    body = [(m, b) for m, b in _products(model) if m is not head]
    head_bytes = dict(_products(model))[head]
    # the head's copy counts: then two products and half of a third
    budget = head_bytes + body[0][1] + body[1][1] + body[2][1] // 2
    # the greedy fill in the model's order: products that fit the room left are cast
    left, fits = budget - head_bytes, set()
    for m, b in body:
        if b <= left:
            fits.add(id(m))
            left -= b
    data = _data([16, 11, 16, 9], seed=5)
    want_h, want_logits = _autocast_forward(model, data)
    with (
        torch.inference_mode(),
        torch.autocast("cpu", dtype=torch.bfloat16),
        precision.cast_weights_once(model, torch.bfloat16, budget=budget, first=[head]) as n,
    ):
        cast = {id(m) for m, _ in body if m.weight.dtype == torch.bfloat16}
        assert head.weight.dtype == torch.bfloat16
        out = model(
            input_ids=data.input_ids, attention_mask=data.attention_mask, output_hidden_states=True
        )
    assert cast == fits and 2 <= len(cast) < len(body)
    assert n == 1 + len(cast)  # the tiny models' products have no bias
    for got, want in zip(out.hidden_states, want_h, strict=True):
        assert torch.equal(got, want)
    assert torch.equal(out.logits, want_logits)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with precision.cast_weights_once(model, torch.bfloat16, budget=0, first=[head]) as n:
        assert n == 1 and head.weight.dtype == torch.bfloat16
    with precision.cast_weights_once(model, torch.bfloat16, budget=0) as n:
        assert n == 0


def test_the_capture_casts_the_head_first_and_the_blocks_the_memory_allows(monkeypatch):
    """With room, a capture casts every product's weights; with half the free memory enough for
    the head's copy and about half the blocks', the head and the blocks that fit (before, none:
    the head cast again at every one of its calls)."""
    model, info = tiny_model("llama")
    head = model.get_output_embeddings()
    sizes = dict(_products(model))
    body = [m for m in sizes if m is not head]
    seen: dict[int, set] = {id(m): set() for m in sizes}
    for m in sizes:
        m.register_forward_pre_hook(lambda mod, a: seen[id(mod)].add(mod.weight.dtype))
    _run(model, info, _data([8] * 4), autocast="bfloat16")
    assert all(v == {torch.bfloat16} for v in seen.values())
    for v in seen.values():
        v.clear()
    room = sizes[head] + sum(sizes[m] for m in body) // 2
    monkeypatch.setattr(precision, "_free_bytes", lambda device: 2 * room)
    res = _run(model, info, _data([8] * 4), autocast="bfloat16")
    assert seen[id(head)] == {torch.bfloat16}
    cast = [m for m in body if seen[id(m)] == {torch.bfloat16}]
    assert 0 < len(cast) < len(body)
    assert sizes[head] + sum(sizes[m] for m in cast) <= room
    assert all(seen[id(m)] == {torch.float32} for m in body if m not in cast)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # the summary names the trade (the tiny models' products have weights and no biases)
    want = f"bfloat16 autocast, {1 + len(cast)} of {len(sizes)} weights cast once (memory)"
    assert res.compute_dtype == want


def test_a_capture_into_a_store_on_disk_holds_copies_within_one_layer(monkeypatch, tmp_path):
    """``store=PATH`` keeps the audit's memory to about a layer's: the weights' copies then stay
    within one layer's float32 rows (every real token x hidden x 4 bytes with
    positions="all"), the head's first; in RAM the memory alone bounds them."""
    model, info = tiny_model("llama")
    head = model.get_output_embeddings()
    sizes = dict(_products(model))
    budgets = []
    real = precision.weights_to_cast

    def spy(model, dtype, budget=None, first=(), room=None):
        budgets.append(budget)
        return real(model, dtype, budget, first, room)

    monkeypatch.setattr(precision, "weights_to_cast", spy)
    seen: dict[int, set] = {id(m): set() for m in sizes}
    for m in sizes:
        m.register_forward_pre_hook(lambda mod, a: seen[id(mod)].add(mod.weight.dtype))
    lengths = [16, 11, 16, 9] * 6
    one_layer = sum(lengths) * model.config.hidden_size * 4
    assert sizes[head] < one_layer < sum(sizes.values())  # room for some of the blocks, not all
    kw = dict(autocast="bfloat16", positions="all", store_dtype=torch.float32)
    res = _run(model, info, _data(lengths), store=str(tmp_path / "s"), **kw)
    assert budgets == [one_layer]
    cast = [m for m in sizes if seen[id(m)] == {torch.bfloat16}]
    assert head in cast and 1 < len(cast) < len(sizes)
    assert sum(sizes[m] for m in cast) <= one_layer
    assert res.compute_dtype.endswith(f"{len(cast)} of {len(sizes)} weights cast once (memory)")
    _run(model, info, _data(lengths), **kw)
    assert budgets == [one_layer, None]


def test_the_capture_trims_after_its_pass_only_when_weights_were_cast(monkeypatch):
    """The kept heap trims as the pass ends; the weights' bfloat16 copies are freed after that,
    so a capture trims once more then, and only then (a float32 capture has nothing more)."""
    import hopaudit.capture.forward as forward

    trims = []
    monkeypatch.setattr(forward, "release_freed_memory", lambda: trims.append(1))
    model, info = tiny_model("llama")
    _run(model, info, _data([8] * 4), autocast="off")
    assert trims == []
    _run(model, info, _data([8] * 4), autocast="bfloat16")
    assert trims == [1]
