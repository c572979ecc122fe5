"""audit()'s options: every one checked before the forward pass, store_dtype in all its forms
("auto" within a budget), and a failed audit removing the store it created (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import random_texts, tiny_model, tiny_tokenizer

import hopaudit
import hopaudit.capture.dtype as store_dtype_module
import hopaudit.engines.local as local
from hopaudit.errors import DataError


@pytest.fixture
def counted():
    """A tiny GPT-2 that records the inputs of its forward passes (their token counts)."""
    model, _ = tiny_model("gpt2")
    calls = []

    def hook(module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        calls.append(tuple(ids.shape))

    model.register_forward_hook(hook, with_kwargs=True)
    return model, calls


BAD = [
    (dict(umap_max_points=10, k=15), "umap_max_points=10"),
    (dict(umap_max_points=-1), "umap_max_points"),
    (dict(k=1), "k must be"),
    (dict(k=2.5), "k must be"),
    (dict(store_dtype="int8"), "store_dtype must be"),
    (dict(store_dtype=torch.int32), "store_dtype must be"),
    (dict(batch_size=0), "batch_size"),
    (dict(max_sequences=-3), "max_sequences"),
    (dict(max_length=0), "max_length"),
    (dict(chunking="page"), "chunking"),
    (dict(positions="first"), "positions"),
    (dict(umap_layers=["no.such.layer"]), "no layer named"),
    (dict(umap_layers=[99]), "out of range"),
    (dict(seed="x"), "seed"),
    (dict(store=3), "store must be"),
]


@pytest.mark.parametrize(("options", "message"), BAD)
def test_bad_options_fail_before_the_forward_pass(counted, options, message):
    model, calls = counted
    with pytest.raises(DataError, match=message):
        hopaudit.audit(
            model, random_texts(30, words=20), tokenizer=tiny_tokenizer(), progress=False, **options
        )
    # no forward pass over the data was spent (find_final_norm's 3-token probe may run)
    assert all(shape[-1] <= 3 for shape in calls), calls


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (torch.float16, np.float16),
        (torch.float32, np.float32),
        ("half", np.float16),
        ("float32", np.float32),
        (torch.bfloat16, np.float32),  # numpy has no bfloat16: rounded to it, kept as float32
        (np.float16, np.float16),
    ],
)
def test_store_dtype_takes_strings_and_torch_dtypes(given, stored):
    model, _ = tiny_model("gpt2")
    a = hopaudit.audit(
        model,
        random_texts(30, words=20),
        tokenizer=tiny_tokenizer(),
        max_length=8,
        store_dtype=given,
        progress=False,
        umap_layers=[],
    )
    assert a.activations(0).dtype == stored
    assert a.summary()["store_dtype"] in ("float16", "float32", "bfloat16")


def test_auto_store_dtype_switches_to_float16_beyond_the_budget(monkeypatch):
    """float32 while rows x hidden x layers x 4 bytes fit the budget, float16 beyond it."""
    model, info = tiny_model("gpt2")
    texts = random_texts(20, words=20)
    opts = dict(tokenizer=tiny_tokenizer(), max_length=8, progress=False, umap_layers=[])
    n_seq = len(hopaudit.prepare_data(texts, opts["tokenizer"], max_length=8).texts)
    need = n_seq * info.hidden_size * (info.num_blocks + 1) * 4  # one row (last) per sequence
    monkeypatch.setattr(store_dtype_module, "STORE_BUDGET_BYTES", need)
    a = hopaudit.audit(model, texts, **opts)
    assert len(a.texts) == n_seq
    assert a.summary()["store_dtype"] == "float32" and a.activations(0).dtype == np.float32
    monkeypatch.setattr(store_dtype_module, "STORE_BUDGET_BYTES", need - 1)
    b = hopaudit.audit(model, texts, **opts)
    assert b.summary()["store_dtype"] == "float16" and b.activations(0).dtype == np.float16
    assert "auto: float16" in b.options["store_dtype_note"]


def test_activations_beyond_float16_are_kept_by_default_and_named_otherwise():
    """A block whose output exceeds 65504: the default store keeps it (float32 within the
    budget); float16 storage warns with a value audit() accepts, which then works."""
    model, _ = tiny_model("gpt2")
    with torch.no_grad():
        model.transformer.h[0].mlp.c_proj.bias.fill_(1e5)
    opts = dict(tokenizer=tiny_tokenizer(), max_length=8, progress=False, umap_layers=[])
    a = hopaudit.audit(model, random_texts(30, words=20), **opts)
    assert np.isfinite(a.activations(0)).all() and np.abs(a.activations(0)).max() > 65504
    with pytest.warns(RuntimeWarning, match=r"store_dtype=torch\.float32") as caught:
        hopaudit.audit(model, random_texts(30, words=20), store_dtype="float16", **opts)
    advice = next(str(w.message) for w in caught if "store_dtype=" in str(w.message))
    value = advice.split("store_dtype=")[1].split()[0].rstrip(".;,)")
    b = hopaudit.audit(
        model, random_texts(30, words=20), store_dtype=eval(value, {"torch": torch}), **opts
    )
    assert np.isfinite(b.activations(0)).all()


@pytest.mark.parametrize("when", ["measure", "umap"])
def test_a_failed_audit_removes_the_store_it_created(tmp_path, monkeypatch, when):
    model, _ = tiny_model("gpt2")
    store = tmp_path / "store"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(local, "measure" if when == "measure" else "lay_out", interrupt)
    with pytest.raises(KeyboardInterrupt):
        hopaudit.audit(
            model,
            random_texts(30, words=20),
            heldout=random_texts(8, words=20, seed=1),
            tokenizer=tiny_tokenizer(),
            max_length=8,
            store=str(store),
            progress=False,
            umap_layers=["final"],
        )
    assert not store.exists()
    assert list(tmp_path.iterdir()) == []
