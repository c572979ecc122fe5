"""hopaudit.audit end to end on tiny random models, checked against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import random_texts, tiny_model, tiny_tokenizer

import hopaudit
from hopaudit.errors import DataError, HopauditError, ModelError


@pytest.fixture(scope="module")
def gpt2_audit():
    model, info = tiny_model("gpt2")
    tok = tiny_tokenizer()
    a = hopaudit.audit(
        model, random_texts(120), tokenizer=tok, max_length=16, progress=False, umap_layers=[]
    )
    return model, info, tok, a


def _brute_nn(x: np.ndarray) -> np.ndarray:
    """Nearest other row by float64 brute force (the independent oracle)."""
    x = x.astype(np.float64)
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(sq, np.inf)
    return np.sqrt(sq.min(1))


def test_layers_table_has_one_row_per_block_plus_final(gpt2_audit):
    _, info, _, a = gpt2_audit
    layers = a.layers
    assert list(layers["layer"]) == list(range(info.num_blocks + 1))
    assert list(layers["name"]) == [*info.block_paths, "final"]
    assert layers["skipped_reason"].isna().all()
    assert (layers["normalize"] == "rms").all()
    assert (layers["n"] == info.hidden_size).all()
    assert a.activations("final").shape == (len(a.texts), info.hidden_size)
    # store_dtype="auto": float32 while the store fits the budget, and the summary says so
    assert a.activations(0).dtype == np.float32
    assert a.summary()["store_dtype"] == "float32"


def test_radii_match_brute_force_on_transformers_hidden_states(gpt2_audit):
    """r_hat of block i from hidden_states[i + 1] at the last position, rms-normalized."""
    model, info, _, a = gpt2_audit
    tokens = hopaudit.prepare_data(random_texts(120), tiny_tokenizer(), max_length=16)
    with torch.inference_mode():
        hs = model(tokens.input_ids, output_hidden_states=True).hidden_states
    for i in range(info.num_blocks - 1):  # the last hidden state is after ln_f
        x = hs[i + 1][:, -1].float().numpy()
        x = x * math.sqrt(x.shape[1]) / np.linalg.norm(x, axis=1, keepdims=True)
        nn = _brute_nn(x)
        row = a.layers.iloc[i]
        assert row.r_hat == pytest.approx(np.median(nn) / 2, rel=2e-2)
        assert row.nn_mean == pytest.approx(nn.mean(), rel=2e-2)
        assert row.r_star == pytest.approx(math.sqrt(info.hidden_size / (2 * math.pi * math.e)))
    x = hs[-1][:, -1].float().numpy()
    x = x * math.sqrt(x.shape[1]) / np.linalg.norm(x, axis=1, keepdims=True)
    assert a.layers.iloc[-1].r_hat == pytest.approx(np.median(_brute_nn(x)) / 2, rel=2e-2)


def test_cross_entropy_equals_transformers_loss(gpt2_audit):
    model, _, tok, a = gpt2_audit
    tokens = hopaudit.prepare_data(random_texts(120), tok, max_length=16)
    with torch.inference_mode():
        loss = model(tokens.input_ids, labels=tokens.input_ids).loss.item()
    s = a.summary()
    assert s["cross_entropy"] == pytest.approx(loss, abs=1e-4)
    assert s["n_tokens"] == tokens.num_tokens
    assert s["n_sequences"] == tokens.num_sequences == len(a.samples)
    assert s["log10_N"] == pytest.approx(math.log10(a.n_params_blocks))
    assert s["two_log10_D"] == pytest.approx(2 * math.log10(tokens.num_tokens))
    # Chinchilla's fit, computed here by hand.
    n, d = a.n_params_total, tokens.num_tokens
    assert s["chinchilla_loss"] == pytest.approx(1.69 + 406.4 / n**0.34 + 410.7 / d**0.28)


def test_samples_link_sequences_to_final_layer(gpt2_audit):
    _, _, _, a = gpt2_audit
    samples = a.samples
    rep = a.layer_report("final")
    with pytest.warns(DeprecationWarning, match="layer_report"):
        assert a.report("final") is rep
    assert list(samples["text"]) == a.texts
    # positions="last": one row per sequence, so the ratio is that row's nn / r_hat.
    np.testing.assert_allclose(samples["distance_ratio"], rep.nn / rep.r_hat, rtol=1e-6)
    assert samples["basin"].between(0, len(samples) - 1).all()
    assert (samples["basin"] != samples["sequence"]).all()  # no duplicates in random text


def test_saturation_table_per_layer_and_fraction(gpt2_audit):
    _, info, _, a = gpt2_audit
    sat = a.saturation
    assert len(sat) == (info.num_blocks + 1) * 4
    assert sorted(sat["fraction"].unique()) == [0.25, 0.5, 0.75, 1.0]
    # More stored patterns can only bring the nearest one closer, for the same queries.
    for _, g in sat.groupby("layer"):
        assert np.all(np.diff(g.sort_values("fraction")["mean"].to_numpy()) <= 1e-9)


def test_encoder_has_no_loss_and_says_why():
    model, info = tiny_model("bert")
    tok = tiny_tokenizer(template="cls_sep")
    a = hopaudit.audit(
        model, random_texts(40), tokenizer=tok, max_length=12, progress=False, umap_layers=[]
    )
    s = a.summary()
    assert s["cross_entropy"] is None
    assert "encoder" in s["loss_note"]
    assert s["below_floor"] is None
    assert list(a.layers["name"][: info.num_blocks]) == info.block_paths
    assert a.samples["cross_entropy"].isna().all()


def test_heldout_gives_containment():
    model, _ = tiny_model("llama")
    tok = tiny_tokenizer(template="bos")
    a = hopaudit.audit(
        model,
        random_texts(80, seed=1),
        tokenizer=tok,
        heldout=random_texts(30, seed=2),
        max_length=12,
        progress=False,
        umap_layers=[],
    )
    col = a.layers["contained_frac"]
    assert col.notna().all() and col.between(0, 1).all()
    assert (a.layers["n_queries"] > 0).all()


def test_umap_default_layers_first_middle_last_final():
    model, info = tiny_model("gpt2")
    tok = tiny_tokenizer()
    a = hopaudit.audit(model, random_texts(60), tokenizer=tok, max_length=12, progress=False)
    blocks = info.block_paths
    expected = list(dict.fromkeys([blocks[0], blocks[len(blocks) // 2], blocks[-1], "final"]))
    assert list(a.embeddings) == expected
    emb = a.embeddings["final"]
    assert emb.xy.shape == (len(a.texts), 2) and np.isfinite(emb.xy).all()
    assert not emb.subsampled


def test_umap_subsample_records_rows():
    model, _ = tiny_model("gpt2")
    a = hopaudit.audit(
        model,
        random_texts(100),
        tokenizer=tiny_tokenizer(),
        max_length=12,
        progress=False,
        umap_layers=["final"],
        umap_max_points=40,
    )
    emb = a.embeddings["final"]
    assert emb.xy.shape == (40, 2) and emb.subsampled and emb.n_total == len(a.texts)
    assert len(np.unique(emb.rows)) == 40
    np.testing.assert_array_equal(emb.sequence, a.capture.row_sequence[emb.rows])


def test_bad_options_and_inputs_are_one_clear_error():
    model, _ = tiny_model("gpt2")
    tok = tiny_tokenizer()
    with pytest.raises(DataError, match="normalize"):
        hopaudit.audit(model, random_texts(5), tokenizer=tok, normalize="l2")
    with pytest.raises(DataError, match="index"):
        hopaudit.audit(model, random_texts(5), tokenizer=tok, index="faiss")
    with pytest.raises(DataError):
        hopaudit.audit(model, [], tokenizer=tok)
    with pytest.raises(ModelError):
        hopaudit.audit(42, random_texts(5), tokenizer=tok)
    with pytest.raises(ModelError, match="does not exist"):
        hopaudit.audit("/no/such/model/dir", random_texts(5), tokenizer=tok)
    with pytest.raises(HopauditError):
        hopaudit.audit(model, random_texts(5), tokenizer=tok, umap_layers=["nope"], max_length=8)
    for module in model.modules():
        assert not module._forward_hooks


def test_too_few_patterns_in_every_layer_is_one_error_giving_each_layers_reason():
    model, info = tiny_model("gpt2")
    with pytest.raises(HopauditError, match="no layer could be measured") as err:
        hopaudit.audit(
            model, random_texts(2), tokenizer=tiny_tokenizer(), max_length=8, chunking="document"
        )
    message = str(err.value)
    for i in range(info.num_blocks):
        assert f"transformer.h.{i}: " in message
    assert "final: " in message


def test_audit_of_a_saved_model_directory(tmp_path):
    model, info = tiny_model("gpt2")
    tok = tiny_tokenizer()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    a = hopaudit.audit(
        str(tmp_path / "m"), random_texts(40), max_length=12, progress=False, umap_layers=[]
    )
    assert a.n_blocks == info.num_blocks
    assert a.summary()["cross_entropy"] is not None


def test_max_length_follows_a_short_model_context():
    model, _ = tiny_model("gpt2", n_positions=24)
    tok = tiny_tokenizer()
    a = hopaudit.audit(model, random_texts(40), tokenizer=tok, progress=False, umap_layers=[])
    assert a.capture.row_position.max() == 23  # default 256 capped at the context
    with pytest.raises(DataError, match="context of 24 positions"):
        hopaudit.audit(model, random_texts(40), tokenizer=tok, max_length=64, progress=False)


def test_three_patterns_are_measured_but_not_embedded():
    model, _ = tiny_model("gpt2")
    with pytest.warns(UserWarning, match="no UMAP"):
        a = hopaudit.audit(
            model,
            random_texts(3),
            tokenizer=tiny_tokenizer(),
            max_length=8,
            chunking="document",
            progress=False,
        )
    assert a.layers["n_patterns"].eq(3).all() and a.layers["r_hat"].notna().all()
    assert a.embeddings == {}


def test_bad_heldout_fails_before_any_capture(monkeypatch):
    from hopaudit.engines import local

    calls = []
    real = local.capture
    monkeypatch.setattr(
        "hopaudit.engines.local.capture", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    model, _ = tiny_model("gpt2")
    with pytest.raises(DataError):
        hopaudit.audit(
            model, random_texts(20), tokenizer=tiny_tokenizer(), heldout=[], max_length=8
        )
    assert calls == []
