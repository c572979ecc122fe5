"""Audit.query: new texts through the audit's own capture and indexes, checked against an
independent capture (forward hooks), an exact numpy search, the model's own loss and a plain
greedy loop; and every bad input a clear HopauditError that leaves the audit as it was."""

from __future__ import annotations

import gc
import random

import numpy as np
import pytest
import torch
from tiny_models import TOKENIZER_TEXT, tiny_model, tiny_tokenizer

import hopaudit
from hopaudit.errors import DataError, HopauditError, ModelError, SearchError
from hopaudit.search.backends import LazyIndex

PREFIX, SUFFIX, MAX_LEN = 8, 8, 24


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = TOKENIZER_TEXT.split()
    return [" ".join(rng.choice(words) for _ in range(14)) for _ in range(n)]


@pytest.fixture(scope="module")
def setup():
    model, _ = tiny_model("gpt2")
    tok = tiny_tokenizer()
    texts, held = _texts(40, 0), _texts(8, 1)
    audit = hopaudit.audit(
        model,
        texts,
        tokenizer=tok,
        max_length=MAX_LEN,
        chunking="document",
        heldout=held,
        index="exact",
        progress=False,
        umap_layers=["final"],
        extraction={"prefix": PREFIX, "suffix": SUFFIX},
        bootstrap=0,
    )
    return model, tok, texts, held, audit


def _precision(audit):
    """The audit's forward precision, as its summary names it (bfloat16 autocast where the CPU
    has it natively): the independent forward runs in the same one."""
    amp = str(audit.summary()["compute_dtype"]).startswith("bfloat16 autocast")
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp)


def _independent_patterns(model, tok, texts, layer, audit):
    """Last real token's output of block ``layer`` (or ln_f for "final"), by a plain forward
    hook, rms-normalized in numpy: nothing of hopaudit's capture."""
    module = model.transformer.ln_f if layer == "final" else model.transformer.h[layer]
    got = {}

    def hook(_m, _i, out):
        got["x"] = (out[0] if isinstance(out, tuple) else out).detach()

    rows = []
    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad(), _precision(audit):
            for t in texts:
                ids = tok(t, return_tensors="pt")["input_ids"][:, :MAX_LEN]
                model(ids)
                rows.append(got["x"][0, -1].float().numpy())
    finally:
        handle.remove()
    x = np.stack(rows).astype(np.float32)
    return x * np.sqrt(x.shape[1]) / np.linalg.norm(x, axis=1, keepdims=True)


def _stored_patterns(audit, layer_id):
    x = np.asarray(audit.activations(layer_id), dtype=np.float32)
    return x * np.sqrt(x.shape[1]) / np.linalg.norm(x, axis=1, keepdims=True)


def test_nearest_equals_exact_numpy_search(setup):
    model, tok, texts, held, audit = setup
    queries = [texts[3], held[0], held[1] + " and the fox", texts[7]]
    k = 4
    r = audit.query(queries, k=k, place=False)
    for layer_id, layer in [(0, 0), (2, 2), (3, "final")]:
        q = _independent_patterns(model, tok, queries, layer, audit)
        p = _stored_patterns(audit, layer_id)
        d = np.sqrt(((q[:, None, :].astype(np.float64) - p[None]) ** 2).sum(-1))
        ids = np.argsort(d, axis=1, kind="stable")[:, :k]
        got = r.nearest[r.nearest["layer"] == layer_id].sort_values(["query", "rank"])
        np.testing.assert_array_equal(got["sequence"].to_numpy().reshape(-1, k), ids)
        np.testing.assert_allclose(
            got["distance"].to_numpy().reshape(-1, k),
            np.take_along_axis(d, ids, 1),
            atol=1e-4,
        )
        rep = audit.layer_report(layer_id)
        np.testing.assert_allclose(
            got["distance_over_r_hat"], got["distance"] / rep.r_hat, rtol=1e-6
        )
        # the ball of docs/theory.md §2: radius nn_i / 2 of that stored pattern
        nn = np.sort(np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1)), axis=1)[:, 1]
        inside = got["distance"].to_numpy() <= nn[got["sequence"].to_numpy()] / 2 + 1e-5
        np.testing.assert_array_equal(got["inside_ball"].to_numpy(), inside)
    # a stored text is its own nearest sequence, at distance 0, inside its ball
    first = r.nearest[(r.nearest["query"] == 0) & (r.nearest["rank"] == 1)]
    assert (first["sequence"] == 3).all() and (first["distance"] < 1e-3).all()
    assert first["inside_ball"].all()
    assert list(r.nearest.columns[:9]) == [
        "query", "layer", "name", "rank", "sequence", "text", "distance",
        "distance_over_r_hat", "inside_ball",
    ]  # fmt: skip
    assert (r.nearest["text"] == [audit.texts[s] for s in r.nearest["sequence"]]).all()


def test_scores_match_the_models_loss_and_a_greedy_loop(setup):
    model, tok, texts, held, audit = setup
    queries = [texts[5], held[2]]
    r = audit.query(queries, place=False)
    for i, t in enumerate(queries):
        ids = tok(t, return_tensors="pt")["input_ids"][:, :MAX_LEN]
        with torch.no_grad(), _precision(audit):
            loss = model(ids, labels=ids).loss.item()
        assert r.scores.loc[i, "loss"] == pytest.approx(-loss, abs=1e-4)
        # greedy decoding by hand, without a cache
        cur = ids[:, :PREFIX]
        with torch.no_grad(), _precision(audit):  # the query's capture's numerics
            for _ in range(SUFFIX):
                cur = torch.cat([cur, model(cur).logits[:, -1].argmax(-1, keepdim=True)], 1)
        same = (cur[0, PREFIX:] == ids[0, PREFIX : PREFIX + SUFFIX]).long()
        assert r.scores.loc[i, "extracted_tokens"] == int(same.cumprod(0).sum())
        assert r.scores.loc[i, "extracted"] == bool(same.all())
    # the stored text's scores equal the audit's own for that sequence
    for col in ("loss", "zlib", "min_k", "min_k_pp", "extracted_tokens"):
        assert r.scores.loc[0, col] == pytest.approx(audit.samples.loc[5, col], abs=1e-5)


def test_placement_lands_a_stored_text_on_its_own_point(setup):
    _, _, texts, held, audit = setup
    r = audit.query([texts[9], held[3]], layers=["final"])
    emb = audit.embeddings["final"]
    placed = r.placements.set_index("query")
    own = list(emb.sequence).index(9)
    # umap's transform starts a point at its neighbours' weighted mean and moves it a few
    # epochs: a stored text lands among the closest tenth of the layout to its own point
    to_all = np.linalg.norm(emb.xy - placed.loc[0, ["x", "y"]].to_numpy(float), axis=1)
    assert (to_all < to_all[own]).mean() < 0.1
    assert np.isfinite(placed[["x", "y"]].to_numpy(float)).all()
    assert set(r.placements["name"]) == {"final"}


def test_query_changes_nothing_of_the_audit(setup):
    model, _, _, held, audit = setup
    before = (audit.samples.copy(), audit.layers.copy(), audit.summary(), audit.membership.copy())
    acts = np.array(audit.activations("final"))
    audit.query([held[4]], k=2)
    after = (audit.samples, audit.layers, audit.summary(), audit.membership)
    for b, a in zip(before[:2], after[:2], strict=True):
        assert b.equals(a)
    assert before[2] == after[2]
    assert before[3].equals(after[3])
    np.testing.assert_array_equal(acts, audit.activations("final"))
    assert model.training is False


@pytest.mark.parametrize(
    ("texts", "match"),
    [
        ("", "text 0 is empty"),
        (["a fine text with words", "   "], "text 1 is empty"),
        ([], "non-empty list"),
        (["fox"], "no more than the extraction prefix"),
    ],
)
def test_bad_texts(setup, texts, match):
    audit = setup[4]
    with pytest.raises(DataError, match=match):
        audit.query(texts)


def test_short_text_passes_with_a_shorter_prefix_or_no_extraction(setup):
    audit = setup[4]
    r = audit.query(["the fox"], extraction=False, place=False)
    assert "extracted" not in r.scores.columns
    r = audit.query(["the quick brown fox"], extraction={"prefix": 1, "suffix": 40}, place=False)
    n = r.scores.loc[0, "n_tokens"]
    assert r.scores.loc[0, "compared_tokens"] == n - 1 < 40 and not r.scores.loc[0, "extracted"]


@pytest.mark.parametrize("layers", [[99], ["transformer.h.7"], [-9]])
def test_missing_layer(setup, layers):
    with pytest.raises(DataError, match="does not exist"):
        setup[4].query(["the quick brown fox jumps over the lazy dog"], layers=layers)


def test_wrong_models(setup):
    _, tok, _, _, audit = setup
    q = ["the quick brown fox jumps over the lazy dog"]
    other, _ = tiny_model("gpt2", n_layer=2)
    with pytest.raises(ModelError, match=r"not the audited one.*n_layer"):
        audit.query(q, other, tokenizer=tok)
    reseeded, _ = tiny_model("gpt2", seed=1)  # same name, config and size: other weights
    with pytest.raises(ModelError, match="weights differ"):
        audit.query(q, reseeded, tokenizer=tok)
    with pytest.raises(ModelError, match="torch model"):
        audit.query(q, object())
    with pytest.raises(DataError, match="k must be"):
        audit.query(q, k=0)


def test_no_live_model_needs_one_passed():
    model, _ = tiny_model("gpt2")
    tok = tiny_tokenizer()
    a = hopaudit.audit(
        model, _texts(12, 2), tokenizer=tok, max_length=MAX_LEN, chunking="document",
        progress=False, umap_layers=[], bootstrap=0,
    )  # fmt: skip
    q = ["the quick brown fox jumps over the lazy dog"]
    assert len(a.query(q, place=False, extraction=False).nearest) > 0
    del model
    gc.collect()
    with pytest.raises(ModelError, match=r"no live model.*pass it"):
        a.query(q)


def test_loaded_audit_queries_like_the_live_one_and_fails_clearly(setup, tmp_path):
    model, tok, texts, held, _ = setup
    live = hopaudit.audit(
        model, texts, tokenizer=tok, max_length=MAX_LEN, chunking="document", index="hnsw",
        progress=False, umap_layers=["final"], bootstrap=0,
    )  # fmt: skip
    live.save(tmp_path / "a")
    loaded = hopaudit.load(tmp_path / "a")
    q = [held[5], texts[1]]
    with pytest.raises(ModelError, match="pass it"):
        loaded.query(q)
    a = live.query(q, extraction=False)
    b = loaded.query(q, model, tokenizer=tok, extraction=False)
    assert a.nearest.equals(b.nearest)
    np.testing.assert_allclose(
        a.placements[["x", "y"]].to_numpy(float), b.placements[["x", "y"]].to_numpy(float)
    )
    # an index that cannot be opened (a load rebuilds a damaged file from the activations, so
    # only an unreadable disk gets here: its opener raises as one would)
    again = hopaudit.load(tmp_path / "a")
    rep = again.layer_report("final")

    def unreadable():
        raise OSError(5, "Input/output error", str(rep.index.file))

    rep.index = LazyIndex(rep.index.meta, unreadable, file=rep.index.file)
    with pytest.raises(SearchError, match=r"cannot be opened.*hopaudit.load"):
        again.query(q, model, tokenizer=tok, extraction=False, place=False, layers=["final"])


def test_every_error_is_a_hopaudit_error():
    assert issubclass(DataError, HopauditError) and issubclass(SearchError, HopauditError)


def test_token_ids_query_like_their_text(setup):
    _, tok, texts, _, audit = setup
    ids = tok(texts[6], return_tensors="pt")["input_ids"][:, :MAX_LEN]
    by_ids = audit.query(ids, k=3, place=False)
    by_text = audit.query([texts[6]], k=3, place=False)
    assert by_ids.nearest.equals(by_text.nearest)
    assert by_ids.scores["loss"].equals(by_text.scores["loss"])
    with pytest.raises(DataError, match="integers"):
        audit.query(torch.zeros(2, 5))


def test_hnsw_index_gives_the_exact_answer_too(setup):
    model, tok, texts, held, _ = setup
    a = hopaudit.audit(
        model, texts, tokenizer=tok, max_length=MAX_LEN, chunking="document", index="hnsw",
        progress=False, umap_layers=[], bootstrap=0,
    )  # fmt: skip
    assert a.layer_report("final").index.kind == "hnsw"
    queries = held[:4]
    r = a.query(queries, k=5, place=False, extraction=False, layers=["final"])
    q = _independent_patterns(model, tok, queries, "final", a)
    p = _stored_patterns(a, "final")
    d = np.sqrt(((q[:, None, :].astype(np.float64) - p[None]) ** 2).sum(-1))
    ids = np.argsort(d, axis=1, kind="stable")[:, :5]
    got = r.nearest.sort_values(["query", "rank"])
    np.testing.assert_array_equal(got["sequence"].to_numpy().reshape(-1, 5), ids)
    np.testing.assert_allclose(
        got["distance"].to_numpy().reshape(-1, 5), np.take_along_axis(d, ids, 1), atol=1e-4
    )
