"""Encoder-decoders (T5, BART, mBART, Pegasus, Marian, Whisper) audited as two stacks.

Oracles: where each family's blocks and final norms are is written by hand below; the
activations are checked against transformers' own ``encoder_hidden_states`` /
``decoder_hidden_states`` at the same positions (wherever those are raw block outputs: a
pre-LN stack's last entry is its final norm's output, compared with ``encoder.final`` /
``final``), and the cross-entropy against the model's own ``labels=`` loss.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import SEQ2SEQ_ARCHS, TOKENIZER_TEXT, tiny_seq2seq, tiny_tokenizer

import hopaudit
from hopaudit.capture import capture
from hopaudit.data import InputData, TokenData, prepare_data
from hopaudit.errors import DataError
from hopaudit.model.blocks import find_stacks

TEXT_ARCHS = [a for a in SEQ2SEQ_ARCHS if a != "whisper"]

# arch -> (encoder blocks, encoder final norm, decoder blocks, decoder final norm): by hand.
WHERE = {
    "t5": (
        "encoder.block",
        "encoder.final_layer_norm",
        "decoder.block",
        "decoder.final_layer_norm",
    ),
    "bart": ("model.encoder.layers", None, "model.decoder.layers", None),
    "mbart": (
        "model.encoder.layers",
        "model.encoder.layer_norm",
        "model.decoder.layers",
        "model.decoder.layer_norm",
    ),
    "pegasus": (
        "model.encoder.layers",
        "model.encoder.layer_norm",
        "model.decoder.layers",
        "model.decoder.layer_norm",
    ),
    "marian": ("model.encoder.layers", None, "model.decoder.layers", None),
    "whisper": (
        "model.encoder.layers",
        "model.encoder.layer_norm",
        "model.decoder.layers",
        "model.decoder.layer_norm",
    ),
}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """One intra-op thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(template="cls_sep")


def _texts(n=4):
    words = TOKENIZER_TEXT.split()
    return [" ".join(words[3 * i : 3 * i + 4 + 3 * i]) for i in range(n)]  # several lengths


def _expected_names(arch):
    enc, enc_final, dec, dec_final = WHERE[arch]
    names = [f"{enc}.{i}" for i in range(2)] + (["encoder.final"] if enc_final else [])
    names += [f"{dec}.{i}" for i in range(2)] + (["final"] if dec_final else [])
    return names


@pytest.mark.parametrize("arch", SEQ2SEQ_ARCHS)
def test_two_stacks_with_stable_ids_and_full_names(arch):
    model = tiny_seq2seq(arch)
    stacks = find_stacks(model)
    enc, enc_final, dec, dec_final = WHERE[arch]
    assert [s.name for s in stacks] == ["encoder", "decoder"]
    assert [p for p, _ in stacks[0].blocks] == [f"{enc}.0", f"{enc}.1"]
    assert [p for p, _ in stacks[1].blocks] == [f"{dec}.0", f"{dec}.1"]
    assert (stacks[0].final and stacks[0].final[0]) == enc_final
    assert (stacks[1].final and stacks[1].final[0]) == dec_final
    assert [n for s in stacks for n in s.layer_names] == _expected_names(arch)


def _check_against_hidden_states(model, arch, result, enc_mask, labels, ref):
    """Per stack, every layer's rows (positions="all") equal the model's own hidden states."""
    enc_hs, dec_hs = ref.encoder_hidden_states, ref.decoder_hidden_states
    enc, enc_final, dec, dec_final = WHERE[arch]
    label_mask = labels != -100
    for stack, hs, mask, prefix, final_name, has_final in (
        ("encoder", enc_hs, enc_mask.bool(), enc, "encoder.final", enc_final),
        ("decoder", dec_hs, label_mask, dec, "final", dec_final),
    ):
        seq, pos = result.stack_sequence[stack], result.stack_position[stack]
        b, t = mask.nonzero(as_tuple=True)  # every real position, row-major
        np.testing.assert_array_equal(seq, b.numpy())
        np.testing.assert_array_equal(pos, t.numpy())
        raw = [0, 1] if not has_final else [0]  # a pre-LN stack's last entry is the norm's
        for i in raw:
            got = result.store.get(f"{prefix}.{i}")
            np.testing.assert_allclose(got, hs[i + 1][b, t].numpy(), rtol=1e-5, atol=1e-5)
        if has_final:
            got = result.store.get(final_name)
            np.testing.assert_allclose(got, hs[-1][b, t].numpy(), rtol=1e-5, atol=1e-5)
        assert all(result.stack_of(n) == stack for n in result.layer_names if n.startswith(prefix))


@pytest.mark.parametrize("arch", TEXT_ARCHS)
def test_texts_teach_themselves_and_match_the_models_own_loss(arch, tok):
    model = tiny_seq2seq(arch)
    data = prepare_data(_texts(), tok, model=model, chunking="document")
    assert isinstance(data, TokenData) and data.labels is not None
    # plain texts: the same tokens are the decoder's labels, -100 on padding
    np.testing.assert_array_equal(
        data.labels.numpy(), data.input_ids.masked_fill(data.attention_mask == 0, -100).numpy()
    )
    assert len(set(data.attention_mask.sum(1).tolist())) > 1  # padding is exercised
    result = capture(
        model, data, find_stacks(model), positions="all", store_dtype=torch.float32,
        progress=False, batch_size=3,
    )  # fmt: skip
    assert result.layer_names == _expected_names(arch)
    with torch.no_grad():
        ref = model(
            input_ids=data.input_ids,
            attention_mask=data.attention_mask,
            labels=data.labels,
            output_hidden_states=True,
        )
    assert result.cross_entropy == pytest.approx(float(ref.loss), abs=1e-4)
    assert result.n_predicted == int((data.labels != -100).sum())
    _check_against_hidden_states(model, arch, result, data.attention_mask, data.labels, ref)


def test_cross_entropy_is_not_the_next_token_alignment(tok):
    """The issue's BART bug: scoring logits[t] against ids[t+1] gives another number."""
    model = tiny_seq2seq("bart")
    data = prepare_data(_texts(), tok, model=model, chunking="document")
    result = capture(model, data, find_stacks(model), progress=False)
    with torch.no_grad():
        mask = data.attention_mask
        logits = model(input_ids=data.input_ids, attention_mask=mask, labels=data.labels).logits
    logits = logits.double()
    lp = torch.log_softmax(logits, -1)
    m = data.labels != -100
    aligned = -lp.gather(2, data.labels.clamp_min(0)[..., None])[..., 0][m].mean()
    shifted_m = m[:, 1:] & m[:, :-1]
    shifted = -lp[:, :-1].gather(2, data.labels[:, 1:].clamp_min(0)[..., None])[..., 0]
    shifted = shifted[shifted_m].mean()
    assert result.cross_entropy == pytest.approx(float(aligned), abs=1e-5)
    assert abs(float(shifted) - float(aligned)) > 1e-3


def test_source_target_pairs_are_taken_as_given(tok):
    model = tiny_seq2seq("marian")
    pairs = [(a, b) for a, b in zip(_texts(3), _texts(4)[1:], strict=True)]
    data = prepare_data(pairs, tok, model=model)
    for i, (src, tgt) in enumerate(pairs):
        want_src = tok(src)["input_ids"]
        want_tgt = tok(tgt)["input_ids"]
        assert data.input_ids[i, data.attention_mask[i].bool()].tolist() == want_src
        assert data.labels[i, data.labels[i] != -100].tolist() == want_tgt
    result = capture(model, data, find_stacks(model), progress=False)
    with torch.no_grad():
        loss = model(input_ids=data.input_ids, attention_mask=data.attention_mask,
                     labels=data.labels).loss  # fmt: skip
    assert result.cross_entropy == pytest.approx(float(loss), abs=1e-4)


def test_rows_of_input_ids_and_labels_are_taken_as_given():
    model = tiny_seq2seq("t5")
    g = torch.Generator().manual_seed(1)
    batches = [
        {"input_ids": torch.randint(3, 500, (2, 7), generator=g),
         "labels": torch.tensor([[5, 6, 7, 1, -100], [8, 9, 10, 11, 1]])},
        {"input_ids": torch.randint(3, 500, (1, 7), generator=g),
         "labels": torch.tensor([[12, 13, 1]])},
    ]  # fmt: skip
    data = prepare_data(iter(batches), model=model)
    assert data.labels.tolist() == [[5, 6, 7, 1, -100], [8, 9, 10, 11, 1], [12, 13, 1, -100, -100]]
    ids = torch.cat([b["input_ids"] for b in batches])
    np.testing.assert_array_equal(data.input_ids.numpy(), ids.numpy())
    result = capture(model, data, find_stacks(model), progress=False)
    with torch.no_grad():
        loss = model(input_ids=ids, labels=data.labels).loss
    assert result.cross_entropy == pytest.approx(float(loss), abs=1e-4)


def test_whisper_features_and_labels():
    model = tiny_seq2seq("whisper")
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(3, 16, 32, generator=g)
    labels = torch.tensor([[5, 6, 7, 1], [8, 9, 1, -100], [3, 1, -100, -100]])
    data = prepare_data({"input_features": feats, "labels": labels}, model=model)
    assert isinstance(data, InputData)
    result = capture(model, data, find_stacks(model), positions="all",
                     store_dtype=torch.float32, progress=False, batch_size=2)  # fmt: skip
    with torch.no_grad():
        ref = model(input_features=feats, labels=labels, output_hidden_states=True)
    assert result.cross_entropy == pytest.approx(float(ref.loss), abs=1e-4)
    enc_mask = torch.ones(3, 16, dtype=torch.long)  # 32 mel frames -> 16 encoder positions
    _check_against_hidden_states(model, "whisper", result, enc_mask, labels, ref)


def test_an_encoder_decoder_without_labels_is_refused_clearly():
    model = tiny_seq2seq("whisper")
    data = prepare_data(torch.randn(2, 16, 32), model=model)
    with pytest.raises(DataError, match=r"encoder-decoder.*labels"):
        capture(model, data, find_stacks(model), progress=False)


def test_pairs_for_a_decoder_only_model_are_refused(tok):
    from tiny_models import tiny_model

    model, _ = tiny_model("gpt2")
    with pytest.raises(DataError, match="not one"):
        prepare_data([("a source", "a target")], tok, model=model)


def test_audit_of_t5_has_a_stack_column(tok):
    model = tiny_seq2seq("t5")
    result = hopaudit.audit(
        model, _texts(4) * 3, tokenizer=tok, chunking="document", positions="last",
        umap_layers=[], progress=False, index="exact", k=3,
    )  # fmt: skip
    layers = result.layers
    assert layers["name"].tolist() == _expected_names("t5")
    assert layers["stack"].tolist() == ["encoder"] * 3 + ["decoder"] * 3
    assert layers["layer"].tolist() == list(range(6))
    s = result.summary()
    assert s["stacks"] == "encoder,decoder" and s["architecture_note"] is None
    assert s["cross_entropy"] is not None and np.isfinite(s["cross_entropy"])
    assert result.options["encoder_final"] == "encoder.final_layer_norm"
    assert result.options["final"] == "decoder.final_layer_norm"


def test_a_saved_encoder_decoder_loads_with_its_head_and_round_trips(tok, tmp_path):
    model = tiny_seq2seq("pegasus")
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    result = hopaudit.audit(
        str(tmp_path / "model"), _texts(4) * 3, chunking="document", umap_layers=[],
        progress=False, index="exact", k=3,
    )  # fmt: skip
    assert type(result.capture).__name__ == "CaptureResult"
    assert result.model_config["class"] == "PegasusForConditionalGeneration"
    assert result.layers["stack"].tolist() == ["encoder"] * 3 + ["decoder"] * 3
    result.save(tmp_path / "saved")
    back = hopaudit.load(tmp_path / "saved")
    assert back.layers["stack"].tolist() == result.layers["stack"].tolist()
    for stack in ("encoder", "decoder"):
        np.testing.assert_array_equal(
            back.capture.stack_sequence[stack], result.capture.stack_sequence[stack]
        )
    assert back.summary()["stacks"] == "encoder,decoder"


def test_a_model_in_training_mode_has_the_same_stacks_and_keeps_its_mode():
    """Dropout after T5's encoder norm made the probe's outputs differ in training mode."""
    model = tiny_seq2seq("t5").train()
    names = [n for s in find_stacks(model) for n in s.layer_names]
    assert names == _expected_names("t5")
    assert all(m.training for m in model.modules())


def test_hooks_are_removed_after_an_interrupt_in_the_decoder(tok):
    model = tiny_seq2seq("bart")
    stacks = find_stacks(model)
    data = prepare_data(_texts(), tok, model=model)

    def hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    assert hooks() == 0  # finding the stacks left none behind

    def interrupt(*_a, **_k):
        raise KeyboardInterrupt

    handle = model.model.decoder.layers[1].register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        capture(model, data, stacks, progress=False)
    handle.remove()
    assert hooks() == 0
    assert data.labels is not None and prepare_data(data, model=model) is not None


def test_a_timeline_of_encoder_decoder_audits_keys_each_layer_by_its_own_stack(tok, tmp_path):
    """positions="all" with targets longer than sources: the encoder's rows are not the
    decoder's, and the timeline matches each layer's points by its own stack's rows."""
    model = tiny_seq2seq("t5")
    words = TOKENIZER_TEXT.split()
    pairs = [(" ".join(words[i : i + 3]), " ".join(words[i : i + 9])) for i in range(0, 60, 5)]
    paths = []
    for step in (1, 2):
        a = hopaudit.audit(
            model, pairs, tokenizer=tok, positions="all", umap_layers=[], progress=False,
            index="exact", k=3,
        )  # fmt: skip
        a.options["step"] = step
        paths.append(a.save(tmp_path / f"step-{step}"))
    enc = a.layer_names[0]
    enc_rows, dec_rows = a.capture.rows_of(enc)[0], a.capture.rows_of("final")[0]
    assert len(enc_rows) < len(dec_rows)  # the premise: the stacks keep different rows
    tl = hopaudit.timeline(paths, umap_layers=[enc, "final"])
    assert set(tl.alignment.method) <= {"first", "init"}
    for audit in tl.audits:
        for name in (enc, "final"):
            emb = audit.embeddings[name]
            assert np.array_equal(emb.sequence, audit.capture.rows_of(name)[0][emb.rows])
