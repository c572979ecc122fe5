"""The local engine holds one layer's work at a time (issue 25: memory across many layers)."""

from __future__ import annotations

import gc
import weakref

import torch
from tiny_models import tiny_model

import hopaudit


def test_each_layer_s_index_and_patterns_are_gone_before_the_next_layer(tmp_path, monkeypatch):
    # with a store, a measured layer keeps only its scalars and arrays of one value per
    # pattern: its index goes to a LazyIndex and its normalized patterns are dropped, so the
    # next layer starts without them (weak references to each must be dead)
    import hopaudit.engines.local as local
    from hopaudit.layer import measuring

    model, _ = tiny_model("gpt2")
    ids = torch.randint(
        0, model.config.vocab_size, (12, 16), generator=torch.Generator().manual_seed(0)
    )
    built, normalized, seen = [], [], []
    real_build, real_normalize = measuring.build_index, measuring.geometry.normalize_rows
    real_measure = local.measure

    def build(data, *args, **kwargs):
        index = real_build(data, *args, **kwargs)
        built.append(weakref.ref(index))
        return index

    def normalize(x, mode="rms"):
        out = real_normalize(x, mode)
        normalized.append(weakref.ref(out))
        return out

    def measure(*args, **kwargs):
        gc.collect()
        seen.append((sum(r() is not None for r in built), sum(r() is not None for r in normalized)))
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(measuring, "build_index", build)
    monkeypatch.setattr(measuring.geometry, "normalize_rows", normalize)
    monkeypatch.setattr(local, "measure", measure)
    audit = hopaudit.audit(
        model, ids, positions="all", store=str(tmp_path / "store"), progress=False,
        bootstrap=0, umap_layers=[],
    )  # fmt: skip
    assert len(seen) == len(audit.layer_names) >= 3
    assert seen == [(0, 0)] * len(seen)  # nothing of the layers before
