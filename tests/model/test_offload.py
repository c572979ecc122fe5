"""Models spread by accelerate: ``cpu_offload`` and a device map with disk-offloaded blocks.

Their weights sit on the meta device between forwards; the audit must send inputs to the
execution device accelerate's hooks name, find the same blocks and final norm, and give the
same activations, cross-entropy and per-layer numbers as the same model undispatched.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import TOKENIZER_TEXT, tiny_model, tiny_tokenizer
from torch import nn

import hopaudit
from hopaudit.model.blocks import execution_device, find_stacks

accelerate = pytest.importorskip("accelerate")


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """One intra-op thread (see conftest.one_torch_thread)."""


def _texts():
    words = TOKENIZER_TEXT.split()
    return [" ".join(words[i : i + 9]) for i in range(0, len(words) - 9, 4)]


def _audit(model):
    return hopaudit.audit(
        model,
        _texts(),
        tokenizer=tiny_tokenizer(),
        chunking="document",
        positions="all",
        store_dtype="float32",
        umap_layers=[],
        progress=False,
        index="exact",
        k=3,
        autocast="off",
    )


@pytest.fixture(scope="module")
def reference():
    model, _ = tiny_model("llama")
    return _audit(model)


def _same_audit(got, want):
    assert got.layer_names == want.layer_names == [
        "model.layers.0", "model.layers.1", "model.layers.2", "final",
    ]  # fmt: skip
    assert got.options["final"] == "model.norm"
    for name in want.layer_names:
        np.testing.assert_array_equal(got.activations(name), want.activations(name))
    # an offloaded LM head keeps its logits whole (capture/head.py), the undispatched one is
    # made a slice of the vocabulary at a time: the same loss, its float sums in another order
    assert got.capture.cross_entropy == pytest.approx(want.capture.cross_entropy, rel=1e-7)
    cols = ["r_hat_mean", "r_star", "separated_frac", "floor_low", "twonn_id"]
    np.testing.assert_array_equal(got.layers[cols].to_numpy(), want.layers[cols].to_numpy())


def test_cpu_offload_equals_the_undispatched_audit(reference):
    model, _ = tiny_model("llama")
    accelerate.cpu_offload(model, execution_device=torch.device("cpu"))
    assert all(p.is_meta for p in model.model.layers.parameters())  # nothing to read there
    assert execution_device(model) == torch.device("cpu")
    _same_audit(_audit(model), reference)


def test_disk_offloaded_device_map_equals_the_undispatched_audit(reference, tmp_path):
    model, _ = tiny_model("llama")
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.layers.0": "disk",
        "model.layers.1": "cpu",
        "model.layers.2": "disk",
        "model.norm": "disk",
        "lm_head": "cpu",
    }
    accelerate.dispatch_model(model, device_map=device_map, offload_dir=tmp_path / "offload")
    assert model.model.layers[0].self_attn.q_proj.weight.is_meta
    assert next(p for p, _ in find_stacks(model)[0].blocks) == "model.layers.0"
    _same_audit(_audit(model), reference)


def test_the_execution_device_comes_from_the_hooks_not_the_parameters():
    class Hook:  # what accelerate's AlignDevicesHook exposes
        execution_device = torch.device("cpu")

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4, device="meta")
            self.emb._hf_hook = Hook()

        def get_input_embeddings(self):
            return self.emb

    assert execution_device(Model()) == torch.device("cpu")
