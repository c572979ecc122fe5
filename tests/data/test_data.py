"""prepare_data on every input form, both chunkings, and every bad input.

Expected sequences are built by hand in the tests from ``tok.encode(text)`` of each text alone
(one call per text, no batching), so the batched, chunked path is checked against a simple
independent construction.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

from hopaudit.data import TokenData, find_tokenizer, prepare_data
from hopaudit.errors import DataError

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "   ",
    "A memory stores patterns; a query falls into the basin of the nearest one.",
    "",
    "Ada, Alan, Grace and Claude count 1, 2, 3 and 42.",
]
NONEMPTY = [t for t in TEXTS if t.strip()]
PAD, EOS, BOS = 0, 1, 2  # the tiny tokenizer's special ids


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def hand_stream(tok, texts, sep=EOS):
    stream: list[int] = []
    for i, t in enumerate(t for t in texts if t.strip()):
        if i and sep is not None:
            stream.append(sep)
        stream += enc(tok, t)
    return stream


def check_consistent(d: TokenData, tok=None):
    """Masks are right-padded 1s, pads are pad_token_id, texts decode the real tokens."""
    assert d.input_ids.dtype == torch.long and d.attention_mask.dtype == torch.long
    assert d.input_ids.shape == d.attention_mask.shape
    assert len(d.texts) == d.num_sequences
    for i in range(d.num_sequences):
        n = int(d.attention_mask[i].sum())
        assert d.attention_mask[i, :n].eq(1).all() and d.attention_mask[i, n:].eq(0).all()
        assert d.input_ids[i, n:].eq(d.pad_token_id).all()
        if tok is not None:
            assert d.texts[i] == tok.decode(d.input_ids[i, :n].tolist())


# ------------------------------------------------------------------------------- stream


@pytest.mark.parametrize("max_length", [2, 7, 16])
def test_stream_chunks_match_hand_construction(tok, max_length):
    stream = hand_stream(tok, TEXTS)
    n = len(stream) // max_length
    d = prepare_data(TEXTS, tok, max_length=max_length)
    assert d.num_sequences == n and d.seq_len == max_length
    expect = torch.tensor(stream[: n * max_length]).view(n, max_length)
    assert torch.equal(d.input_ids, expect)
    assert d.attention_mask.eq(1).all()
    assert d.num_tokens == n * max_length
    assert d.dropped_tokens == len(stream) - n * max_length
    assert d.chunking == "stream" and d.pad_token_id == PAD
    check_consistent(d, tok)
    # the EOS between documents shows in the decoded text
    assert "<eos>" in "".join(d.texts)


def test_stream_with_bos_template_adds_bos_to_every_sequence():
    tok = tiny_tokenizer(template="bos")
    stream = hand_stream(tok, TEXTS)
    room = 9  # max_length 10 minus the BOS
    n = len(stream) // room
    d = prepare_data(TEXTS, tok, max_length=10)
    assert d.num_sequences == n
    for i in range(n):
        assert d.input_ids[i].tolist() == [BOS, *stream[i * room : (i + 1) * room]]
    assert d.special_tokens == [BOS]
    check_consistent(d, tok)


def test_stream_with_cls_sep_template_wraps_every_sequence():
    tok = tiny_tokenizer(template="cls_sep")
    stream = hand_stream(tok, TEXTS)
    d = prepare_data(TEXTS, tok, max_length=6)
    room = 4
    assert d.num_sequences == len(stream) // room
    assert d.input_ids[1].tolist() == [BOS, *stream[room : 2 * room], EOS]
    with pytest.raises(DataError, match="no room for text"):
        prepare_data(TEXTS, tok, max_length=2)


def test_stream_without_eos_has_no_separator():
    tok = tiny_tokenizer(eos=False, pad=False)
    stream = hand_stream(tok, TEXTS, sep=None)
    d = prepare_data(TEXTS, tok, max_length=5)
    n = len(stream) // 5
    assert torch.equal(d.input_ids, torch.tensor(stream[: n * 5]).view(n, 5))
    assert EOS not in d.input_ids.tolist()


def test_short_stream_is_kept_as_one_sequence_with_a_warning(tok):
    ids = hand_stream(tok, ["Ada and Grace.", "The fox."])
    with pytest.warns(UserWarning, match="shorter than max_length=256"):
        d = prepare_data(["Ada and Grace.", "The fox."], tok)
    assert d.num_sequences == 1 and d.input_ids[0].tolist() == ids
    assert d.dropped_tokens == 0
    check_consistent(d, tok)


def test_stream_max_sequences_takes_the_first(tok):
    full = prepare_data(TEXTS, tok, max_length=4)
    capped = prepare_data(TEXTS, tok, max_length=4, max_sequences=3)
    assert torch.equal(capped.input_ids, full.input_ids[:3])
    assert capped.texts == full.texts[:3]


def test_max_sequences_stops_reading_early(tok):
    def texts():
        for i in range(5000):
            if i == 1500:
                raise AssertionError("read past what max_sequences needs")
            yield f"text number {i}"

    for chunking in ("stream", "document"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # document: the texts are truncated
            d = prepare_data(texts(), tok, max_length=8, max_sequences=2, chunking=chunking)
        assert d.num_sequences == 2


# ------------------------------------------------------------------------------- document


def test_document_chunking_matches_hand_construction(tok):
    max_length = 12
    rows = [enc(tok, t)[:max_length] for t in NONEMPTY]
    cut = sum(max(0, len(enc(tok, t)) - max_length) for t in NONEMPTY)
    with pytest.warns(UserWarning, match="were truncated"):
        d = prepare_data(TEXTS, tok, max_length=max_length, chunking="document")
    assert d.num_sequences == len(NONEMPTY)
    assert d.seq_len == max(len(r) for r in rows)
    for i, r in enumerate(rows):
        assert d.input_ids[i, : len(r)].tolist() == r
        assert d.attention_mask[i].tolist() == [1] * len(r) + [0] * (d.seq_len - len(r))
    assert d.dropped_tokens == cut
    check_consistent(d, tok)


def test_document_short_texts_are_padded_and_decoded(tok):
    texts = ["Ada.", "The quick brown fox.", "Grace"]
    lens = [len(enc(tok, t)) for t in texts]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing truncated: no warning
        d = prepare_data(texts, tok, chunking="document")
    assert d.attention_mask.sum(1).tolist() == lens
    assert d.texts == texts  # byte-level BPE round-trips exactly
    assert d.input_ids[0, lens[0] :].eq(PAD).all()


def test_document_bos_template_and_max_sequences():
    tok = tiny_tokenizer(template="bos")
    d = prepare_data(TEXTS, tok, chunking="document", max_sequences=2)
    assert d.num_sequences == 2
    assert d.input_ids[1, : d.attention_mask[1].sum()].tolist() == [BOS, *enc(tok, NONEMPTY[1])]


@pytest.mark.parametrize(("pad", "eos", "expect"), [(True, True, PAD), (False, True, EOS)])
def test_pad_id_falls_back_to_eos(pad, eos, expect):
    tok = tiny_tokenizer(pad=pad, eos=eos)
    d = prepare_data(["Ada.", "The quick brown fox."], tok, chunking="document")
    assert d.pad_token_id == expect
    assert d.input_ids[0, -1].item() == expect and d.attention_mask[0, -1].item() == 0


def test_pad_id_zero_without_pad_or_eos():
    tok = tiny_tokenizer(pad=False, eos=False)
    d = prepare_data(["Ada.", "The quick brown fox."], tok, chunking="document")
    assert d.pad_token_id == 0


# ------------------------------------------------------------------------------- other forms


def test_tuples_generators_records_and_dict_of_texts(tok):
    want = prepare_data(TEXTS, tok, max_length=8)
    for form in (
        tuple(TEXTS),
        (t for t in TEXTS),
        [{"text": t, "id": i} for i, t in enumerate(TEXTS)],
        {"text": TEXTS},
    ):
        got = prepare_data(form, tok, max_length=8)
        assert torch.equal(got.input_ids, want.input_ids)


def test_text_file_and_jsonl(tok, tmp_path):
    body = "\n".join(NONEMPTY) + "\n"
    path = tmp_path / "corpus.txt"
    path.write_text(body, encoding="utf-8")
    stream = enc(tok, body)  # one file = one document: no EOS inside
    for given in (path, str(path)):
        d = prepare_data(given, tok, max_length=8)
        n = len(stream) // 8
        assert torch.equal(d.input_ids, torch.tensor(stream[: n * 8]).view(n, 8))
    jl = tmp_path / "corpus.jsonl"
    jl.write_text("\n".join(f'{{"text": "{t}"}}' for t in NONEMPTY) + "\n\n", encoding="utf-8")
    d = prepare_data(jl, tok, chunking="document")
    assert d.texts == NONEMPTY


def test_directory_is_read_recursively_in_sorted_order(tok, tmp_path):
    (tmp_path / "02").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "04.txt").write_text("fourth file", encoding="utf-8")
    (tmp_path / "01.txt").write_text("first file", encoding="utf-8")
    (tmp_path / "02" / "03.txt").write_text("third file", encoding="utf-8")
    (tmp_path / ".git" / "00.txt").write_text("hidden", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not a txt", encoding="utf-8")
    d = prepare_data(tmp_path, tok, chunking="document")
    assert d.texts == ["first file", "third file", "fourth file"]
    with pytest.warns(UserWarning):
        s = prepare_data(tmp_path, tok)
    assert s.texts == ["first file<eos>third file<eos>fourth file"]


def test_datasets_dataset(tok):
    datasets = pytest.importorskip("datasets")
    want = prepare_data(TEXTS, tok, max_length=8)
    ds = datasets.Dataset.from_dict({"text": TEXTS, "label": list(range(len(TEXTS)))})
    assert torch.equal(prepare_data(ds, tok, max_length=8).input_ids, want.input_ids)
    only = datasets.Dataset.from_dict({"body": TEXTS, "label": list(range(len(TEXTS)))})
    d = prepare_data(only, tok, max_length=8)
    assert torch.equal(d.input_ids, want.input_ids) and "body" in d.source
    two = datasets.Dataset.from_dict({"a": TEXTS, "b": TEXTS})
    with pytest.raises(DataError, match=r"string columns \['a', 'b'\]"):
        prepare_data(two, tok)
    with pytest.raises(DataError, match="no string column"):
        prepare_data(datasets.Dataset.from_dict({"n": [1, 2]}), tok)
    with pytest.raises(DataError, match=r"several splits.*ds\['train'\]"):
        prepare_data(datasets.DatasetDict({"train": ds, "test": ds}), tok)
    ids = datasets.Dataset.from_dict({"input_ids": [[5, 6, 7], [8, 9]]})
    d = prepare_data(ids, tok)
    assert d.input_ids.tolist() == [[5, 6, 7], [8, 9, PAD]]
    assert d.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_dataframe_text_column(tok):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"id": range(len(TEXTS)), "text": TEXTS})
    want = prepare_data(TEXTS, tok, max_length=8)
    assert torch.equal(prepare_data(frame, tok, max_length=8).input_ids, want.input_ids)


def test_token_id_tensors(tok):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 300, (3, 10), generator=g)
    d = prepare_data(ids, tok)
    assert torch.equal(d.input_ids, ids) and d.attention_mask.eq(1).all()
    assert d.texts == [tok.decode(r.tolist()) for r in ids]
    one = prepare_data(ids[0], max_length=16)  # 1-D: one sequence; no tokenizer: short labels
    assert one.input_ids.tolist() == [ids[0].tolist()]
    assert one.texts[0].startswith("<10 token ids: " + " ".join(map(str, ids[0, :8].tolist())))
    for other in (ids.int(), ids.numpy(), ids.numpy().astype(np.int32), ids.tolist()):
        assert torch.equal(prepare_data(other, max_length=16).input_ids, ids)
    ragged = prepare_data([[5, 6], [7], (8, 9, 10)])  # lists of ids: one row each, padded
    assert ragged.input_ids.tolist() == [[5, 6, 0], [7, 0, 0], [8, 9, 10]]
    assert ragged.attention_mask.sum(1).tolist() == [2, 1, 3]


def test_long_token_rows_are_cut_or_truncated():
    row = torch.arange(3, 3 + 23)
    s = prepare_data(row, max_length=10)
    assert s.input_ids.tolist() == [row[:10].tolist(), row[10:20].tolist()]
    assert s.dropped_tokens == 3
    d = prepare_data(row[None], max_length=10, chunking="document")
    assert d.input_ids.tolist() == [row[:10].tolist()] and d.dropped_tokens == 13


def test_dataloader_of_dicts_is_concatenated_and_right_padded(tok):
    from torch.utils.data import DataLoader

    rows = [[5, 6, 7, 8], [9, 10], [11, 12, 13], [14]]

    def collate_left_padded(batch):
        width = max(len(r) for r in batch)
        ids = torch.tensor([[PAD] * (width - len(r)) + r for r in batch])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in batch])
        return {"input_ids": ids, "attention_mask": mask, "labels": ids}

    loader = DataLoader(rows, batch_size=2, collate_fn=collate_left_padded)
    d = prepare_data(loader, tok)
    assert d.input_ids.tolist() == [[5, 6, 7, 8], [9, 10, 0, 0], [11, 12, 13, 0], [14, 0, 0, 0]]
    assert d.attention_mask.sum(1).tolist() == [4, 2, 3, 1]
    check_consistent(d, tok)
    # a DataLoader over a TensorDataset yields [ids]; a dict without a mask means all real
    from torch.utils.data import TensorDataset

    t = torch.arange(3, 3 + 12).view(4, 3)
    assert torch.equal(prepare_data(DataLoader(TensorDataset(t), batch_size=3)).input_ids, t)
    assert torch.equal(prepare_data({"input_ids": t}).input_ids, t)


def test_token_data_passes_through(tok):
    d = prepare_data(TEXTS, tok, max_length=4)
    assert prepare_data(d, max_length=999, chunking="document") is d
    head = prepare_data(d, max_sequences=2)
    assert torch.equal(head.input_ids, d.input_ids[:2]) and head.texts == d.texts[:2]
    assert "num_sequences=" in repr(d) and len(d) == d.num_sequences


def test_model_tokenizer_and_vocab_check(tok, tmp_path):
    model, info = tiny_model("gpt2")
    with pytest.raises(DataError, match="no tokenizer was given"):
        prepare_data(TEXTS, model=model)
    model.hopaudit_tokenizer = tok
    d = prepare_data(TEXTS, model=model, max_length=8)
    assert torch.equal(d.input_ids, prepare_data(TEXTS, tok, max_length=8).input_ids)
    bad = torch.tensor([[5, info.vocab_size]])
    with pytest.raises(DataError, match=f"token id {info.vocab_size} is out of range.*512"):
        prepare_data(bad, model=model)
    assert prepare_data(bad).num_sequences == 1  # no model: no vocabulary to check
    with pytest.raises(DataError, match="-100 is negative"):
        prepare_data(torch.tensor([[5, -100]]), model=model)
    masked_out = {"input_ids": torch.tensor([[5, 999]]), "attention_mask": torch.tensor([[1, 0]])}
    assert prepare_data(masked_out, model=model).input_ids.tolist() == [[5]]


def test_find_tokenizer_beside_a_saved_model(tok, tmp_path):
    from transformers import AutoModelForCausalLM

    model, _ = tiny_model("gpt2")
    assert find_tokenizer(model) is None  # built from a config: no path
    assert find_tokenizer(torch.nn.Linear(2, 2)) is None and find_tokenizer(None) is None
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    found = find_tokenizer(loaded)
    assert found is not None
    assert found.encode(NONEMPTY[1], add_special_tokens=False) == enc(tok, NONEMPTY[1])
    d = prepare_data(TEXTS, model=loaded, max_length=8)
    assert torch.equal(d.input_ids, prepare_data(TEXTS, tok, max_length=8).input_ids)
    loaded.config._name_or_path = "some-org/not-on-this-machine"  # never looked up online
    loaded.name_or_path = "some-org/not-on-this-machine"
    assert find_tokenizer(loaded) is None


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([], "empty"),
        ((t for t in []), "empty"),
        (["", "  \n\t"], r"all 2 texts are empty or whitespace"),
        ({"input_ids": torch.zeros(0, 5, dtype=torch.long)}, "empty"),
        (3.5, "cannot read data of type float; pass a list of strings"),
        (b"bytes", "cannot read data of type bytes"),
        (object(), "cannot read data of type object"),
        ([object()], "cannot read data whose items are object"),
        (["fine", 3], "text 1 is a int, not a str"),
        ({"labels": [1]}, "needs an 'input_ids' or a 'text' key"),
        ([{"labels": 1}], "without 'input_ids' or 'text'"),
        (torch.rand(2, 3), "integer token ids.*float32"),
        (torch.ones(2, 3, dtype=torch.bool), "integer token ids.*bool"),
        (torch.zeros(2, 3, 4, dtype=torch.long), r"1-D .* or 2-D .*shape \(2, 3, 4\)"),
        (torch.tensor(5), r"got shape \(1,\)|1-D"),
        (np.zeros((2, 3)), "integer token ids, got numpy float64"),
        ([[1, "a"]], "integer token ids"),
        ([[1.5, 2.0]], "integer token ids.*float32"),
        (
            {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 4)},
            "integer token ids",
        ),
        (
            {
                "input_ids": torch.ones(2, 3, dtype=torch.long),
                "attention_mask": torch.ones(2, 4).long(),
            },
            r"attention_mask shape \(2, 4\) differs",
        ),
    ],
)
def test_bad_data_errors(tok, data, match):
    with pytest.raises(DataError, match=match):
        prepare_data(data, tok)


def test_bad_paths(tok, tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match=f"no such file or directory: '{missing}'.*\\[text\\]"):
        prepare_data(str(missing), tok)
    with pytest.raises(DataError, match="no such file"):
        prepare_data("just one sentence, not a path", tok)
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(DataError, match=r"no \.txt files in the directory"):
        prepare_data(tmp_path, tok)
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\x01\x02")
    with pytest.raises(DataError, match="looks binary"):
        prepare_data(binary, tok)
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match="line 2 has no string 'text'"):
        prepare_data(bad_jsonl, tok)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_length": 1}, "max_length must be an integer >= 2"),
        ({"max_length": 0}, "max_length"),
        ({"max_length": 2.5}, "max_length"),
        ({"max_length": True}, "max_length"),
        ({"chunking": "sentences"}, "chunking must be 'stream' or 'document'"),
        ({"max_sequences": 0}, "max_sequences must be None or an integer >= 1"),
    ],
)
def test_bad_options(tok, kwargs, match):
    with pytest.raises(DataError, match=match):
        prepare_data(TEXTS, tok, **kwargs)


def test_bad_token_data():
    ids = torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(DataError, match="same"):
        prepare_data(TokenData(ids, torch.ones(2, 4, dtype=torch.long), ["a", "b"]))
    with pytest.raises(DataError, match="1 texts for 2 sequences"):
        prepare_data(TokenData(ids, torch.ones_like(ids), ["a"]))
    with pytest.raises(DataError, match="no real tokens"):
        prepare_data(TokenData(ids, torch.zeros_like(ids), ["a", "b"]))


def test_tokenizer_output_and_raw_tokenizers_object(tok):
    batch = tok(NONEMPTY[:2], padding=True, return_tensors="pt")  # a BatchEncoding
    d = prepare_data(batch, tok)
    for i, text in enumerate(NONEMPTY[:2]):
        assert d.input_ids[i, : d.attention_mask[i].sum()].tolist() == enc(tok, text)
    raw = tok.backend_tokenizer  # a tokenizers.Tokenizer: no special-token roles, so no EOS
    got = prepare_data(TEXTS, raw, max_length=8)
    stream = hand_stream(tok, TEXTS, sep=None)
    n = len(stream) // 8
    assert torch.equal(got.input_ids, torch.tensor(stream[: n * 8]).view(n, 8))


def test_very_long_texts_are_read_by_prefix_with_the_same_tokens(tok):
    long_text = " ".join(NONEMPTY) * 40  # > max_length * 16 + 256 characters
    full = enc(tok, long_text)
    with pytest.warns(UserWarning, match="truncated"):
        d = prepare_data(["Ada.", long_text], tok, max_length=10, chunking="document")
    assert d.input_ids[1].tolist() == full[:10]
    assert d.dropped_tokens is None  # the long text was only read in part
    capped = prepare_data([long_text], tok, max_length=10, max_sequences=3)
    assert capped.input_ids.tolist() == [full[i * 10 : (i + 1) * 10] for i in range(3)]
    assert capped.dropped_tokens == 0
    uncapped = prepare_data([long_text], tok, max_length=10)
    assert uncapped.dropped_tokens == len(full) % 10
    assert uncapped.num_sequences == len(full) // 10


@pytest.mark.slow
def test_real_minilm_tokenizer_found_beside_the_model_and_its_cls_sep_template():
    from hopaudit.zoo import models as zoo

    model, tok = zoo.minilm()
    del model.hopaudit_tokenizer  # found from the model's local directory instead
    found = find_tokenizer(model)
    assert found is not None and found.cls_token_id == tok.cls_token_id
    d = prepare_data(NONEMPTY, model=model, max_length=16, chunking="document")
    for i, text in enumerate(NONEMPTY):
        body = tok.encode(text, add_special_tokens=False)[:14]
        n = int(d.attention_mask[i].sum())
        assert d.input_ids[i, :n].tolist() == [tok.cls_token_id, *body, tok.sep_token_id]
    assert d.pad_token_id == tok.pad_token_id


# ------------------------------------------------------------------- issue 14: more forms
def test_numpy_strings_series_and_generators(tok):
    import pandas as pd

    want = prepare_data(TEXTS, tok, max_length=8)
    for form in (
        np.array(TEXTS),
        np.array(TEXTS, dtype=object),
        pd.Series(TEXTS, name="body"),
        (t for t in TEXTS),
    ):
        got = prepare_data(form, tok, max_length=8)
        assert torch.equal(got.input_ids, want.input_ids), type(form)


def test_a_long_string_that_is_not_a_path_is_a_text(tok):
    text = " ".join(NONEMPTY * 4)
    assert len(text) > 200
    got = prepare_data(text, tok, max_length=8)
    assert torch.equal(got.input_ids, prepare_data([text], tok, max_length=8).input_ids)
    very_long = "word " * 20_000  # the OS would say "file name too long"
    assert prepare_data(very_long, tok, max_length=8).num_sequences > 0
    with pytest.raises(DataError, match=r"no such file.*\[text\]"):
        prepare_data("a short sentence", tok)  # a short one keeps the hint


def test_a_streaming_dataset_with_unknown_features(tok):
    datasets = pytest.importorskip("datasets")

    def rows():
        for i, t in enumerate(TEXTS):
            yield {"body": t, "n": i}

    ds = datasets.IterableDataset.from_generator(rows)
    assert ds.features is None  # read from its rows, not refused
    got = prepare_data(ds, tok, max_length=8)
    assert torch.equal(got.input_ids, prepare_data(TEXTS, tok, max_length=8).input_ids)
    ids = datasets.IterableDataset.from_generator(
        lambda: ({"input_ids": [5, 6, 7, 8][: i + 2]} for i in range(3))
    )
    rows_got = prepare_data(ids, max_length=8, chunking="document")
    assert rows_got.input_ids.tolist() == [[5, 6, 0, 0], [5, 6, 7, 0], [5, 6, 7, 8]]


def test_ids_a_tokenizer_cannot_decode_are_shown_as_ids_with_a_warning():
    from hopaudit.data.tokenizer import decode_rows

    class Broken:
        def batch_decode(self, rows, **kwargs):
            raise IndexError("piece id is out of range")

    rows = [torch.tensor([5, 6, 7])]
    with pytest.warns(UserWarning, match="could not decode.*IndexError.*shown as token ids"):
        assert decode_rows(rows, Broken()) == ["<3 token ids: 5 6 7>"]


def test_an_endless_generator_with_a_huge_cap_is_refused_before_reading():
    """Issue 26: an endless generator with max_sequences=10**9 was consumed without end; the
    request is compared with the memory this process can allocate before any row is read."""
    import itertools

    read = []

    def endless():
        for i in itertools.count():
            read.append(i)
            yield f"text number {i} " * 5

    with pytest.raises(DataError, match=r"max_sequences=1000000000: .* pass max_sequences=\d+"):
        prepare_data(endless(), tiny_tokenizer(), max_sequences=10**9)
    assert len(read) <= 1  # the first row only, peeked to learn what kind of data it is


def test_a_tensor_too_large_is_refused_before_allocation():
    """Issue 26: a 10^9-row token tensor (a stride-0 view: no memory of its own) raised a raw
    std::bad_alloc; it is refused with the shape and the limit before anything is copied."""
    ids = torch.zeros(1, 64, dtype=torch.long).expand(10**9, 64)
    with pytest.raises(DataError, match=r"shape \(1000000000, 64\).*can still allocate"):
        prepare_data(ids)


def test_memory_room_and_the_check_agree_with_an_address_space_limit():
    """check_tokens refuses exactly above what fits: 24 bytes per token slot (ids kept, padded
    ids, mask) against the room given."""
    from hopaudit.data.bounds import check_tokens

    check_tokens(100, 10, "x", room=100 * 10 * 24)
    with pytest.raises(DataError, match="pass max_sequences=100 or less"):
        check_tokens(101, 10, "x", room=100 * 10 * 24)
