"""Image and audio encoders (ViT, CLIP vision, DINOv2, wav2vec2, HuBERT, Whisper's encoder),
non-transformers (Mamba, an MLP stack), and the bad inputs of issue 14.

Oracles: ``output_hidden_states`` at the same positions (each block's raw output, where the
model reports it), ``last_hidden_state`` for the final norm, the processors run by hand, and
the frame lengths transformers itself computes from an audio attention mask.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import ENCODER_SPECS, TOKENIZER_TEXT, tiny_encoder, tiny_mamba, tiny_tokenizer
from torch import nn

import hopaudit
from hopaudit.capture import capture
from hopaudit.data import InputData, prepare_data
from hopaudit.errors import DataError
from hopaudit.model.blocks import architecture_note, find_stacks, has_attention

# arch -> (blocks that hidden_states[i + 1] reports raw, the final layer's oracle or None)
RAW = {
    "vit": ([0, 1], "last_hidden_state"),
    "clip_vision": ([0, 1], None),  # post_layernorm normalizes the pooled CLS only: no final
    "dinov2": ([0, 1], "last_hidden_state"),
    "wav2vec2": ([0, 1], None),
    "hubert": ([0, 1], None),
    "whisper_encoder": ([0], "last_hidden_state"),  # hidden_states[-1] is the norm's output
}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """One intra-op thread (see conftest.one_torch_thread)."""


def _sample(model, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    main = model.main_input_name
    shape = {"pixel_values": (n, 3, 32, 32), "input_features": (n, 16, 32),
             "input_values": (n, 800)}[main]  # fmt: skip
    return main, torch.randn(*shape, generator=g)


def _cap(model, data, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("store_dtype", torch.float32)
    return capture(model, data, find_stacks(model), **kw)


@pytest.mark.parametrize("arch", list(ENCODER_SPECS))
def test_encoder_activations_equal_its_hidden_states(arch):
    model, _ = tiny_encoder(arch)
    main, x = _sample(model)
    data = prepare_data(x, model=model)
    assert isinstance(data, InputData) and list(data.inputs) == [main]
    stacks = find_stacks(model)
    assert [s.name for s in stacks] == ["encoder"]
    raw, final = RAW[arch]
    result = _cap(model, data, positions="all", batch_size=2)
    with torch.no_grad():
        ref = model(**{main: x}, output_hidden_states=True)
    hs = ref.hidden_states
    n, seq = hs[0].shape[:2]
    np.testing.assert_array_equal(result.row_sequence, np.repeat(np.arange(n), seq))
    np.testing.assert_array_equal(result.row_position, np.tile(np.arange(seq), n))
    blocks = [p for p, _ in stacks[0].blocks]
    for i in raw:
        want = hs[i + 1].reshape(n * seq, -1).numpy()
        np.testing.assert_allclose(result.store.get(blocks[i]), want, rtol=1e-5, atol=1e-5)
    assert ("final" in result.layer_names) == (final is not None)
    if final is not None:
        want = getattr(ref, final).reshape(n * seq, -1).numpy()
        np.testing.assert_allclose(result.store.get("final"), want, rtol=1e-5, atol=1e-5)
    assert result.cross_entropy is None and result.seq_nll is None
    assert main in result.loss_note and "no next-token loss" in result.loss_note
    assert result.n_tokens == n * seq


@pytest.mark.parametrize(
    ("positions", "pick"),
    [
        ("cls", lambda h: h[:, 0]),
        ("last", lambda h: h[:, -1]),
        ("mean", lambda h: h.double().mean(1)),
        ([1, -2], lambda h: torch.stack([h[:, 1], h[:, -2]], 1).reshape(-1, h.shape[-1])),
    ],
)
def test_positions_over_patches(positions, pick):
    model, _ = tiny_encoder("vit")
    _, x = _sample(model, n=4, seed=1)
    result = _cap(model, prepare_data(x, model=model), positions=positions)
    with torch.no_grad():
        hs = model(pixel_values=x, output_hidden_states=True).hidden_states
    layer = next(p for p, _ in find_stacks(model)[0].blocks)
    want = pick(hs[1]).float().numpy()
    np.testing.assert_allclose(result.store.get(layer), want, rtol=1e-5, atol=1e-5)


def test_pil_images_and_a_folder_with_a_processor(tmp_path):
    from PIL import Image
    from transformers import ViTImageProcessor

    proc = ViTImageProcessor(size={"height": 32, "width": 32})
    model, _ = tiny_encoder("vit")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]
    want = proc(images=images, return_tensors="pt")["pixel_values"]
    data = prepare_data(images, model=model, processor=proc)
    torch.testing.assert_close(data.inputs["pixel_values"], want)
    for i, im in enumerate(images):
        im.save(tmp_path / f"img{i}.png")
    folder = prepare_data(tmp_path, model=model, processor=proc)
    assert folder.texts == ["img0.png", "img1.png", "img2.png"]
    torch.testing.assert_close(folder.inputs["pixel_values"], want)  # PNG is lossless
    result = _cap(model, folder, positions="cls")
    with torch.no_grad():
        ref = model(pixel_values=want, output_hidden_states=True).hidden_states
    layer = [p for p, _ in find_stacks(model)[0].blocks][1]
    np.testing.assert_allclose(result.store.get(layer), ref[2][:, 0].numpy(), atol=1e-5)


def test_audio_clips_of_several_lengths_keep_only_their_frames():
    from transformers import Wav2Vec2FeatureExtractor

    proc = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                    do_normalize=True, return_attention_mask=True)  # fmt: skip
    model, _ = tiny_encoder("wav2vec2")
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) for n in (800, 600, 1000)]
    data = prepare_data(clips, model=model, processor=proc)
    assert set(data.inputs) == {"input_values", "attention_mask"}
    result = _cap(model, data, positions="all")
    # transformers' own frame count per clip (conv kernels 10, 3; strides 5, 2)
    frames = [((n - 10) // 5 + 1 - 3) // 2 + 1 for n in (800, 600, 1000)]
    assert np.bincount(result.row_sequence).tolist() == frames
    with torch.no_grad():  # each clip alone, unpadded: the same frames
        for i, clip in enumerate(clips):
            alone = proc([clip], sampling_rate=16000, return_tensors="pt")
            hs = model(**alone, output_hidden_states=True).hidden_states
            got = result.store.get("encoder.layers.0")[result.row_sequence == i]
            np.testing.assert_allclose(got, hs[1][0].numpy(), rtol=1e-4, atol=1e-4)


def test_whisper_encoder_arrays_with_a_feature_extractor():
    from transformers import WhisperFeatureExtractor

    proc = WhisperFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=500,
                                   chunk_length=1, n_fft=400)  # fmt: skip
    model, _ = tiny_encoder("whisper_encoder")
    rng = np.random.default_rng(1)
    clips = [rng.standard_normal(n).astype(np.float32) for n in (8000, 12000)]
    data = prepare_data(clips, model=model, processor=proc)
    want = proc(clips, sampling_rate=16000, return_tensors="pt")["input_features"]
    torch.testing.assert_close(data.inputs["input_features"], want)
    result = _cap(model, data, positions="mean")
    with torch.no_grad():
        ref = model(input_features=want).last_hidden_state.double().mean(1)
    np.testing.assert_allclose(result.store.get("final"), ref.numpy(), rtol=1e-5, atol=1e-5)


def test_a_dataloader_of_feature_dicts():
    model, _ = tiny_encoder("dinov2")
    _, x = _sample(model, n=5, seed=3)
    loader = torch.utils.data.DataLoader(
        [{"pixel_values": v, "name": f"x{i}"} for i, v in enumerate(x)], batch_size=2
    )
    data = prepare_data(loader, model=model)
    torch.testing.assert_close(data.inputs["pixel_values"], x)
    assert len(data.texts) == 5


def test_audit_of_a_vision_encoder():
    model, _ = tiny_encoder("vit")
    _, x = _sample(model, n=12, seed=4)
    result = hopaudit.audit(model, x, positions="cls", umap_layers=[], progress=False,
                            index="exact", k=3)  # fmt: skip
    assert result.layers["stack"].tolist() == ["encoder"] * 3
    s = result.summary()
    assert s["cross_entropy"] is None and "pixel_values" in s["loss_note"]
    assert s["n_sequences"] == 12 and s["n_patterns"] == 12


# ------------------------------------------------------------------------ not a transformer
def test_mamba_is_audited_with_a_note_that_it_has_no_attention():
    model = tiny_mamba()
    stacks = find_stacks(model)
    assert [p for p, _ in stacks[0].blocks] == ["backbone.layers.0", "backbone.layers.1"]
    assert stacks[0].final[0] == "backbone.norm_f"
    assert not has_attention(stacks[0].blocks)
    tok = tiny_tokenizer()
    texts = [TOKENIZER_TEXT[i * 20 : i * 20 + 60] for i in range(8)]
    result = hopaudit.audit(model, texts, tokenizer=tok, chunking="document", umap_layers=[],
                            progress=False, index="exact", k=3)  # fmt: skip
    note = result.summary()["architecture_note"]
    assert note and "MambaBlock" in note and "attention" in note
    with torch.no_grad():  # blocks and final against Mamba's own hidden states
        d = prepare_data(texts[:1], tok, model=model)
        ref = model(input_ids=d.input_ids, output_hidden_states=True)
    one = capture(model, d, stacks, positions="all", store_dtype=torch.float32, progress=False)
    # Mamba's hidden_states have no embedding entry: [i] is block i's output, [-1] norm_f's
    for i, name in enumerate([*one.layer_names[:2], "final"]):
        want = ref.hidden_states[-1 if name == "final" else i][0]
        np.testing.assert_allclose(one.store.get(name), want, rtol=1e-5, atol=1e-5)


def test_an_mlp_stack_is_not_a_transformer_and_a_transformer_is():
    from tiny_models import tiny_model

    class MLPStack(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(64, 16)
            self.blocks = nn.ModuleList(
                nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)) for _ in range(3)
            )

        def forward(self, input_ids, attention_mask=None):
            x = self.emb(input_ids)
            for b in self.blocks:
                x = x + b(x)
            return x

    stacks = find_stacks(MLPStack())
    assert architecture_note(stacks[0].blocks) is not None
    llama, _ = tiny_model("llama")
    assert architecture_note(find_stacks(llama)[0].blocks) is None


# ------------------------------------------------------------------------------ bad inputs
def test_pixel_values_for_a_text_model():
    from tiny_models import tiny_model

    model, _ = tiny_model("gpt2")
    with pytest.raises(DataError, match=r"pixel_values.*text model"):
        prepare_data({"pixel_values": torch.randn(2, 3, 32, 32)}, model=model)


def test_text_for_a_vision_model_without_a_processor():
    model, _ = tiny_encoder("vit")
    with pytest.raises(DataError, match="takes pixel_values"):
        prepare_data(["a photo of a cat"], model=model)


def test_images_without_a_processor():
    from PIL import Image

    model, _ = tiny_encoder("vit")
    with pytest.raises(DataError, match="processor="):
        prepare_data([Image.new("RGB", (8, 8))], model=model)


def test_a_forward_input_that_was_not_given_is_named():
    class NeedsPositions(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(64, 8)
            self.layers = nn.ModuleList(nn.TransformerEncoderLayer(8, 2, 16) for _ in range(2))

        def forward(self, input_ids, position_ids, attention_mask=None):
            x = self.emb(input_ids) + self.emb(position_ids)
            for layer in self.layers:
                x = layer(x)
            return x

    model = NeedsPositions().eval()
    data = prepare_data(torch.randint(0, 64, (2, 6)), model=model)
    with pytest.raises(DataError, match="needs position_ids"):
        capture(model, data, find_stacks(model), progress=False)


def test_a_saved_vision_model_brings_its_processor(tmp_path):
    from PIL import Image
    from transformers import ViTImageProcessor

    model, _ = tiny_encoder("vit")
    model.save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    rng = np.random.default_rng(5)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
    result = hopaudit.audit(str(tmp_path / "vit"), tmp_path, positions="mean", umap_layers=[],
                            progress=False, index="exact", k=3)  # fmt: skip
    assert result.texts == [f"{i}.png" for i in range(6)]
    assert result.summary()["n_patterns"] == 6


def test_a_key_the_forward_does_not_take_is_named():
    model, _ = tiny_encoder("vit")
    _, x = _sample(model, n=2)
    data = prepare_data({"pixel_values": x, "input_values": torch.randn(2, 800)}, model=model)
    with pytest.raises(DataError, match="takes no input_values"):
        capture(model, data, find_stacks(model), progress=False)
