"""The GPU path: capture and audit on CUDA against transformers' own outputs and the CPU.

Tests marked ``cuda`` need an NVIDIA GPU: ``pytest -m cuda`` runs them there, and everywhere
else they are skipped with the reason (tests/conftest.py). They were written without a GPU
(issue 17); ``benchmarks/gpu.py`` checks the same at full size. The last test has no marker: it
checks on the CPU that the copy-out path (pinned buffers, asynchronous copies) leaves the rows
right and touches no CUDA call there.

Float32 tolerances are 1e-3: enough for TF32 matmuls, should a GPU run with them, and far
below what a wrong row or layer gives (order 1 on these models).
"""

from __future__ import annotations

import copy
import gc
import warnings

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

import hopaudit
from hopaudit.capture import capture
from hopaudit.capture import forward as capture_module
from hopaudit.data import TokenData
from hopaudit.errors import CaptureError
from hopaudit.model.precision import compute_dtype

GPU = torch.device("cuda", 0)
TOL = dict(rtol=1e-3, atol=1e-3)


def _data(n: int = 8, seq: int = 24, *, ragged: bool = True, seed: int = 0) -> TokenData:
    """Random ids in the tiny vocabulary, right-padded (pad 0) to lengths seq/2..seq."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 512, (n, seq), generator=g)
    mask = torch.ones_like(ids)
    if ragged:
        lengths = torch.randint(seq // 2, seq + 1, (n,), generator=g)
        mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
        ids[mask == 0] = 0
    return TokenData(ids, mask, [""] * n, pad_token_id=0)


def _parts(model, info):
    blocks = [(p, model.get_submodule(p)) for p in info.block_paths]
    return blocks, (info.final_norm, model.get_submodule(info.final_norm))


def _hooks(model) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._forward_hooks_with_kwargs)
        for m in model.modules()
    )


def _reference(model, info, data) -> dict[str, np.ndarray]:
    """Per layer: (batch, seq, hidden) activations from transformers on the CPU, float32:
    output_hidden_states, and the final norm's input for the last block (hidden_states' last
    entry is after the norm)."""
    cpu = copy.deepcopy(model).cpu().float()
    seen = {}
    norm = cpu.get_submodule(info.final_norm)
    handle = norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("pre", a[0]))
    try:
        with torch.no_grad():
            out = cpu(input_ids=data.input_ids, attention_mask=data.attention_mask,
                      output_hidden_states=True)  # fmt: skip
    finally:
        handle.remove()
    hs = out.hidden_states
    ref = {n: hs[i + 1] for i, n in enumerate(info.block_paths[:-1])}
    ref[info.block_paths[-1]] = seen["pre"]
    ref["final"] = hs[-1]
    return {k: v.float().numpy() for k, v in ref.items()}


def _check_rows(res, ref) -> None:
    seq, pos = res.row_sequence, res.row_position
    for name, acts in ref.items():
        np.testing.assert_allclose(res.store.get(name), acts[seq, pos], **TOL, err_msg=name)


# ------------------------------------------------------------------------ on the GPU
@pytest.mark.cuda
@pytest.mark.parametrize("async_copy", [True, False])
def test_capture_on_cuda_equals_transformers_on_the_cpu(monkeypatch, async_copy):
    monkeypatch.setattr(capture_module, "ASYNC_COPY", async_copy)
    model, info = tiny_model("llama")
    data = _data(10, 24)
    ref = _reference(model, info, data)
    model.to(GPU)
    blocks, final = _parts(model, info)
    res = capture(model, data, blocks, final=final, positions="all", store_dtype=torch.float32,
                  batch_size=3, progress=False)  # fmt: skip
    lengths = data.attention_mask.sum(1)
    assert len(res.row_sequence) == int(lengths.sum())  # every real token, once
    _check_rows(res, ref)
    # the same cross-entropy as transformers' loss on the CPU (unpadded data: same definition)
    flat = _data(6, 24, ragged=False)
    res = capture(model, flat, blocks, final=final, batch_size=4, progress=False)
    cpu = copy.deepcopy(model).cpu()
    with torch.no_grad():
        loss = cpu(input_ids=flat.input_ids, labels=flat.input_ids).loss.item()
    assert res.cross_entropy == pytest.approx(loss, abs=1e-4)


@pytest.mark.cuda
def test_stored_rows_are_not_left_in_pinned_memory():
    """Pinned buffers are page-locked and torch rounds them up to a power of two: the store
    keeps pageable copies. One batch, so the store would keep the buffer itself."""
    model, info = tiny_model("llama")
    model.to(GPU)
    blocks, final = _parts(model, info)
    data = _data(6)
    res = capture(model, data, blocks, final=final, batch_size=6, progress=False)
    ref = _reference(model, info, data)
    for name in res.layer_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns that the array is read-only
            assert not torch.from_numpy(res.store.get(name)).is_pinned(), name
        rows = ref[name][res.row_sequence, res.row_position]
        np.testing.assert_allclose(res.store.get(name), rows, rtol=2e-3, atol=2e-3)  # float16


@pytest.mark.cuda
@pytest.mark.parametrize("exc", [RuntimeError("boom on the GPU"), KeyboardInterrupt()])
def test_hooks_are_removed_after_an_exception_on_cuda(exc):
    model, info = tiny_model("llama")
    model.to(GPU)
    blocks, final = _parts(model, info)
    calls = {"n": 0}

    def fail_on_second_batch(module, args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise exc

    handle = model.model.layers[1].register_forward_pre_hook(fail_on_second_batch)
    expected = KeyboardInterrupt if isinstance(exc, KeyboardInterrupt) else CaptureError
    try:
        with pytest.raises(expected):
            capture(model, _data(6), blocks, final=final, batch_size=2, progress=False)
    finally:
        handle.remove()
    assert calls["n"] == 2  # it failed mid-capture, after a batch went through
    assert _hooks(model) == 0
    res = capture(model, _data(6), blocks, final=final, batch_size=2, progress=False)
    assert res.store.get("final").shape == (6, info.hidden_size)  # and the model still runs


@pytest.mark.cuda
def test_no_cuda_memory_left_growing_across_ten_audits():
    model, _ = tiny_model("llama")
    model.to(GPU)
    data = _data(64, 32, ragged=False)
    after = []
    for _ in range(10):
        a = hopaudit.audit(model, data, umap_layers=[], progress=False)
        index = a.layer_report("final").index
        assert (index.kind, index.device.type) == ("exact", "cuda")  # the search ran on the GPU
        del a, index
        gc.collect()
        after.append(torch.cuda.memory_allocated(GPU))
    # the first audit may leave handles and workspaces behind; nothing may pile up after it
    assert max(after[1:]) <= after[0], after


@pytest.mark.cuda
def test_bf16_autocast_is_chosen_only_where_the_gpu_has_it(monkeypatch):
    model, info = tiny_model("llama")
    model.to(GPU)
    blocks, final = _parts(model, info)
    seen = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda m, a, out: seen.append(out.dtype)
    )

    def run():
        seen.clear()
        return capture(model, _data(4), blocks, final=final, progress=False, autocast="auto")

    native = torch.cuda.is_bf16_supported()
    assert compute_dtype(model, GPU, "auto") == (torch.bfloat16 if native else None)
    res = run()
    want = "bfloat16 autocast, weights cast once" if native else "float32"
    assert res.compute_dtype == want
    assert set(seen) == {torch.bfloat16 if native else torch.float32}  # what the matmuls ran in

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert compute_dtype(model, GPU, "auto") is None
    res = run()
    assert res.compute_dtype == "float32"
    assert set(seen) == {torch.float32}
    monkeypatch.undo()
    model.half()  # a model already in half precision is run as it is
    assert compute_dtype(model, GPU, "auto") is None


def _device_map(info, layout: str) -> dict[str, object]:
    """``spread``: the embedding and first blocks run on the GPU, the rest on the CPU.
    ``offload``: the middle blocks' weights live on the CPU and run on the GPU (accelerate's
    CPU offload)."""
    blocks = info.block_paths
    if layout == "spread":
        half = len(blocks) // 2
        gpu = ["model.embed_tokens", "model.rotary_emb", *blocks[:half]]
        cpu = [*blocks[half:], "model.norm", "lm_head"]
    else:
        gpu = ["model.embed_tokens", "model.rotary_emb", blocks[0], "model.norm", "lm_head"]
        cpu = blocks[1:]
    return {**dict.fromkeys(gpu, 0), **dict.fromkeys(cpu, "cpu")}


@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["spread", "offload"])
def test_audit_of_a_model_spread_over_cuda_and_cpu_by_accelerate(layout):
    from accelerate import dispatch_model

    model, info = tiny_model("llama", num_hidden_layers=4)
    data = _data(40, 24, ragged=False)
    options = dict(autocast="off", store_dtype="float32", umap_layers=[], progress=False)
    on_cpu = hopaudit.audit(copy.deepcopy(model), data, **options)
    device_map = _device_map(info, layout)
    dispatch_model(model, device_map, main_device="cpu" if layout == "spread" else 0)
    where = {p.device.type for p in model.parameters()}
    assert "cuda" in where  # the model really is spread
    spread = hopaudit.audit(model, data, **options)
    assert spread.layer_names == on_cpu.layer_names
    for name in on_cpu.layer_names:
        np.testing.assert_allclose(
            spread.activations(name), on_cpu.activations(name), **TOL, err_msg=name
        )
        a, b = np.median(spread.layer_report(name).nn), np.median(on_cpu.layer_report(name).nn)
        assert a == pytest.approx(b, rel=1e-3), name
    assert spread.capture.cross_entropy == pytest.approx(on_cpu.capture.cross_entropy, abs=1e-4)


# --------------------------------------------------------------------------- on the CPU
@pytest.mark.parametrize("async_copy", [True, False])
def test_copy_out_leaves_cpu_rows_right_and_calls_no_cuda(monkeypatch, async_copy):
    """The copy-out path is a no-op on the CPU: rows equal transformers' hidden states, in
    batches of unequal sizes, and no CUDA synchronization is attempted."""

    def no_cuda(*a, **k):
        raise AssertionError("a CPU capture called torch.cuda.synchronize")

    monkeypatch.setattr(capture_module, "ASYNC_COPY", async_copy)
    monkeypatch.setattr(torch.cuda, "synchronize", no_cuda)
    model, info = tiny_model("llama")
    data = _data(7, 20)
    ref = _reference(model, info, data)
    blocks, final = _parts(model, info)
    res = capture(model, data, blocks, final=final, positions="all", store_dtype=torch.float32,
                  batch_size=3, progress=False)  # fmt: skip
    assert len(res.row_sequence) == int(data.attention_mask.sum())
    seq, pos = res.row_sequence, res.row_position
    for name, acts in ref.items():  # on the CPU the float32 rows are the same computation
        np.testing.assert_allclose(res.store.get(name), acts[seq, pos], rtol=1e-5, atol=1e-5)


def test_rows_held_to_the_batch_end_as_a_gpu_s_are_stored_the_same(monkeypatch):
    """A GPU's rows (copied asynchronously into pinned memory) are held until the batch's
    synchronization and stored then; a CPU's go to the store as each block ends. Held on the
    CPU too (no writer), every layer's rows are the same, in the same order."""
    model, info = tiny_model("llama")
    data = _data(7, 20)
    blocks, final = _parts(model, info)
    kw = dict(final=final, positions="all", store_dtype=torch.float32, batch_size=3,
              progress=False)  # fmt: skip
    written = capture(model, data, blocks, **kw)

    class Held(capture_module._Batch):
        def __init__(self, *args):
            super().__init__(*args[:7])  # no writer: every layer's rows kept to the batch's end

    monkeypatch.setattr(capture_module, "_Batch", Held)
    held = capture(model, data, blocks, **kw)
    ref = _reference(model, info, data)
    seq, pos = held.row_sequence, held.row_position
    for name, acts in ref.items():
        np.testing.assert_array_equal(held.store.get(name), written.store.get(name))
        np.testing.assert_allclose(held.store.get(name), acts[seq, pos], rtol=1e-5, atol=1e-5)
