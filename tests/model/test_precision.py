"""hopaudit.precision: which forward precision is chosen, and what bfloat16 autocast changes.

The bfloat16 run is checked against float32 references computed by transformers itself
(``output_hidden_states`` and its ``labels=`` loss), not against hopaudit's own float32 run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_capture import _data, _reference, _run
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
    assert res.compute_dtype == "bfloat16 autocast"
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
