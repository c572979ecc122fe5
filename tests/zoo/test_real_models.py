"""The embedded real models, captured and measured for real (SmolLM2-135M, all-MiniLM-L6-v2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hopaudit
from hopaudit.data import prepare_data
from hopaudit.search import build_index

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(smollm2_shared):
    return smollm2_shared


@pytest.fixture(scope="module")
def pydoc():
    return hopaudit.zoo.corpus("pydoc")


def test_smollm2_audit_of_a_few_dozen_sequences(smollm2, pydoc):
    model, tok = smollm2
    data = prepare_data(pydoc, tok, max_length=48, max_sequences=40)
    a = hopaudit.audit(model, data, progress=False, umap_layers=[])
    layers = a.layers
    assert len(layers) == 31 and layers["name"].iloc[-1] == "final"
    assert list(layers["name"][:30]) == [f"model.layers.{i}" for i in range(30)]
    assert (layers["n"] == 576).all()
    assert layers["r_star"].iloc[0] == pytest.approx(5.8073, abs=1e-4)  # docs/theory.md's table
    # The same pass's cross-entropy is transformers' own loss on the same sequences, computed
    # in the precision the audit says it ran in (bfloat16 autocast where the CPU has it) and
    # in the audit's batches (bfloat16 products round differently in other shapes).
    ran = a.summary()["compute_dtype"]
    assert ran in ("float32", "bfloat16 autocast, weights cast once")
    assert (data.attention_mask == 1).all()  # every sequence full: batch losses weigh alike
    ids, bs = data.input_ids, a.capture.batch_size
    with torch.inference_mode():
        loss32 = model(ids, labels=ids).loss.item()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ran != "float32"):
            parts = [
                (model(ids[s : s + bs], labels=ids[s : s + bs]).loss.item(), len(ids[s : s + bs]))
                for s in range(0, len(ids), bs)
            ]
    loss = sum(v * n for v, n in parts) / len(ids)
    assert a.summary()["cross_entropy"] == pytest.approx(loss, abs=1e-4)
    assert a.summary()["cross_entropy"] == pytest.approx(loss32, abs=5e-3)
    assert 1.0 < loss < 5.0
    # rms-normalized radii stay near r_star (docs/theory.md: between 4.8 and 7.1 on 800 chunks;
    # with 40 patterns the nearest other one is farther, so allow a wider band).
    assert layers["r_hat"].between(2.0, 12.0).all()


def test_hnsw_recall_on_20000_smollm2_activations(smollm2, pydoc):
    """hnswlib with hopaudit's defaults finds the nearest other pattern >= 99 % of the time."""
    model, tok = smollm2
    data = prepare_data(pydoc, tok, max_length=64, max_sequences=320)
    # Block 15's outputs at every real position; the pass stops there (the search is tested
    # here, not the capture: the 14 blocks after it and the 49 152-wide head are not needed).
    seen = []

    class Stop(Exception):
        pass

    def keep(module, args, out):
        seen.append(out[0] if isinstance(out, tuple) else out)
        raise Stop

    handle = model.model.layers[15].register_forward_hook(keep)
    try:
        for start in range(0, len(data.input_ids), 32):
            with torch.inference_mode(), pytest.raises(Stop):
                model.model(
                    input_ids=data.input_ids[start : start + 32],
                    attention_mask=data.attention_mask[start : start + 32],
                )
    finally:
        handle.remove()
    mask = data.attention_mask.bool()
    x = torch.cat(seen)[mask].float().numpy()[:20000]
    assert x.shape == (20000, 576)
    x = hopaudit.geometry.normalize_rows(np.asarray(x, np.float32), "rms")
    from hopaudit.search import knn_self

    ids_h, _ = knn_self(build_index(x, "hnsw"), x, 1)
    _, d_e = knn_self(build_index(x, "exact"), x, 1)
    # A tie (equal distance) counts as found: compare distances, not only ids.
    d_h = np.linalg.norm(x - x[ids_h[:, 0]], axis=1)
    recall = np.mean(d_h <= d_e[:, 0] * (1 + 1e-5) + 1e-6)
    assert recall >= 0.99, recall


def test_minilm_encoder_audit(minilm_shared):
    model, tok = minilm_shared
    texts = [f"Sentence number {i} is about {w}." for i, w in enumerate("abcdefghij" * 4)]
    a = hopaudit.audit(
        model,
        texts,
        tokenizer=tok,
        chunking="document",
        max_length=16,
        progress=False,
        umap_layers=[],
    )
    assert a.n_blocks == 6 and a.hidden_size == 384
    assert a.summary()["cross_entropy"] is None
    assert "encoder" in a.summary()["loss_note"]
    assert a.layers["r_hat"].notna().all()
