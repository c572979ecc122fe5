"""The converted copy of SmolLM2 (hopaudit/zoo/converted.py): the same model bit for bit, checked
before it is read, and never a half-written or foreign folder taken for it."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

from hopaudit.model.identity import config_dict
from hopaudit.zoo import models as zoo
from hopaudit.zoo.converted import (
    MANIFEST,
    read_converted,
    remove_stale,
    write_converted,
)

SOURCE = "ab" * 32


def _same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.fixture
def written(tmp_path):
    model, _ = tiny_model("llama")
    tok = tiny_tokenizer()
    folder = tmp_path / "float32-test"
    assert write_converted(model, tok, folder, SOURCE)
    return model, tok, folder


def test_round_trip_is_the_same_model_and_tokenizer(written):
    model, tok, folder = written
    names = {p.name for p in folder.parent.iterdir()}
    assert names == {"float32-test"}  # the temporary sibling was renamed, nothing else left
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back, back_tok = read_converted(folder, SOURCE)
    _same_weights(model, back)
    text = "the quick brown fox jumps over the lazy dog"
    assert back_tok(text)["input_ids"] == tok(text)["input_ids"]
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


def _flip_a_byte(folder):
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-8])


def _no_manifest(folder):
    (folder / MANIFEST).unlink()


def _another_source(folder):
    record = json.loads((folder / MANIFEST).read_text())
    record["source_sha256"] = "cd" * 32
    (folder / MANIFEST).write_text(json.dumps(record))


def _escaping_name(folder):
    record = json.loads((folder / MANIFEST).read_text())
    record["files"]["../outside"] = {"size": 1, "blake3": "00"}
    (folder / MANIFEST).write_text(json.dumps(record))


def _huge_manifest(folder):
    (folder / MANIFEST).write_text(" " * (2 << 20))


@pytest.mark.parametrize(
    "damage", [_flip_a_byte, _truncate, _no_manifest, _another_source, _escaping_name,
               _huge_manifest]
)  # fmt: skip
def test_a_damaged_copy_is_removed_with_a_warning_and_not_read(written, damage, monkeypatch):
    _, _, folder = written
    damage(folder)
    outside = folder.parent / "outside"
    outside.write_text("not hopaudit's")

    def never(*a, **k):
        raise AssertionError("transformers must not read a copy that failed its check")

    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
    with pytest.warns(RuntimeWarning, match="is damaged"):
        assert read_converted(folder, SOURCE) is None
    assert not folder.exists()
    assert outside.read_text() == "not hopaudit's"  # only the copy itself is removed


def test_no_copy_is_none_without_a_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_converted(tmp_path / "float32-none", SOURCE) is None


def test_a_cache_that_cannot_take_the_copy_warns_and_leaves_nothing(tmp_path, monkeypatch):
    model, _ = tiny_model("llama")

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(model), "save_pretrained", full_disk)
    with pytest.warns(RuntimeWarning, match="No space left"):
        assert not write_converted(model, tiny_tokenizer(), tmp_path / "float32-x", SOURCE)
    assert list(tmp_path.iterdir()) == []


def test_remove_stale_deletes_only_other_copies_and_killed_writes(tmp_path):
    keep = tmp_path / "float32-new"
    for name in ("float32-new", "float32-old", ".float32-new.tmp123", "user-folder"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
    (tmp_path / "float32-file").write_text("a file, not a copy")
    (tmp_path / "model.gguf").write_text("gguf")
    remove_stale(tmp_path, keep=keep)
    assert {p.name for p in tmp_path.iterdir()} == {
        "float32-new", "user-folder", "float32-file", "model.gguf"
    }  # fmt: skip


@pytest.mark.slow  # two loads of the real GGUF file
def test_smollm2_from_its_copy_is_the_gguf_model(tmp_path):
    """The first load converts and keeps the copy, the second reads it: both are, bit for bit,
    the model and tokenizer transformers makes of the GGUF file."""
    gguf = zoo.smollm2_path()
    (tmp_path / "smollm2").mkdir()
    shutil.copyfile(gguf, tmp_path / "smollm2" / gguf.name)
    direct, direct_tok = zoo._load_gguf(gguf, torch.float32)
    first, _ = zoo.smollm2(cache_dir=tmp_path)
    assert first.config.architectures is None  # as the GGUF load has it, after the save too
    copies = [p.name for p in (tmp_path / "smollm2").iterdir() if p.name.startswith("float32-")]
    assert len(copies) == 1
    second, tok = zoo.smollm2(cache_dir=tmp_path)
    for model in (first, second):
        _same_weights(direct, model)
        expected = {**config_dict(direct), "_name_or_path": str(tmp_path / "smollm2")}
        assert config_dict(model) == expected
        assert model.hopaudit_name == zoo.SMOLLM2_NAME and not model.training
    docs = zoo.corpus("pydoc")[:200]
    assert [tok(d)["input_ids"] for d in docs] == [direct_tok(d)["input_ids"] for d in docs]
    assert tok.pad_token == direct_tok.pad_token or direct_tok.pad_token is None
