"""hopaudit.compare and hopaudit.timeline on real audits of tiny models.

Oracles: relative depths written out by hand per architecture; r_hat / r_star recomputed here
from the stored activations by brute force (rms normalization by hand, all pairwise distances,
median / 2 over sqrt(n / 2 pi e)); Procrustes against a known rotation, scale and shift; the
packed views decoded back and compared with each audit's own single-view state; the timeline's
frame-to-frame displacement measured against fresh UMAPs of the same graphs.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

import hopaudit
from hopaudit.errors import DataError
from hopaudit.layer.embedding import umap_from_knn
from hopaudit.results.comparison import member_state, procrustes, relative_depth
from hopaudit.views.widget import decode, widget_state

TEXTS = [
    f"Sequence {i}: the {['red', 'green', 'blue', 'grey'][i % 4]} basin holds pattern "
    f"{i * 7 % 13} of layer {i % 5}, and radius {i} grows."
    for i in range(90)
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _audit(model, texts=TEXTS[:60], **kw):
    opts = dict(tokenizer=tiny_tokenizer(), max_length=16, chunking="document", progress=False,
                umap_layers=[])  # fmt: skip
    opts.update(kw)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*were truncated")
        return hopaudit.audit(model, texts, **opts)


@pytest.fixture(scope="module")
def audits():
    gpt2 = _audit(tiny_model("gpt2")[0])  # 3 blocks, hidden 32
    llama = _audit(tiny_model("llama", hidden_size=48, num_hidden_layers=5)[0])
    return gpt2, llama


def _hand_r_ratio(activations: np.ndarray) -> float:
    x = np.asarray(activations, dtype=np.float64)
    n = x.shape[1]
    x = x * math.sqrt(n) / np.linalg.norm(x, axis=1, keepdims=True)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    r_hat = np.median(np.sqrt(d2.min(axis=1))) / 2
    return r_hat / math.sqrt(n / (2 * math.pi * math.e))


def test_relative_depth_by_hand():
    depth, final = relative_depth(["a.0", "a.1", "a.2", "final"], 3)
    assert depth.tolist() == [0.0, 0.5, 1.0, 1.0] and final.tolist() == [0, 0, 0, 1]
    depth, final = relative_depth([f"b.{i}" for i in range(5)] + ["final"], 5)
    assert depth.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0] and final.sum() == 1
    depth, final = relative_depth(["only.0"], 1)  # one block, no final: at 1
    assert depth.tolist() == [1.0] and not final.any()


def test_relative_depth_runs_over_each_stack_of_an_encoder_decoder():
    names = ["encoder.block.0", "encoder.block.1", "encoder.block.2", "encoder.final"]
    names += ["decoder.block.0", "decoder.block.1", "final"]
    stacks = ["encoder"] * 4 + ["decoder"] * 3
    depth, final = relative_depth(names, 5, stacks)
    assert depth.tolist() == [0.0, 0.5, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert final.tolist() == [False, False, False, True, False, False, True]
    # one stack (or none named): as before
    assert relative_depth(names[4:], 2, ["decoder"] * 3)[0].tolist() == [0.0, 1.0, 1.0]


def test_compare_layers_relative_depth_and_radii_by_hand(audits):
    c = hopaudit.compare(*audits, labels=["small", "wide"])
    layers = c.layers
    assert list(layers["label"].unique()) == ["small", "wide"]
    small = layers[layers.label == "small"]
    wide = layers[layers.label == "wide"]
    assert small.relative_depth.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert wide.relative_depth.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert small.is_final.tolist() == [False, False, False, True]
    for a, rows in zip(audits, (small, wide), strict=True):
        for name, ratio, r_star in zip(rows.name, rows.r_ratio, rows.r_star, strict=True):
            n = a.hidden_size
            assert r_star == pytest.approx(math.sqrt(n / (2 * math.pi * math.e)), rel=1e-12)
            assert ratio == pytest.approx(_hand_r_ratio(a.activations(name)), rel=2e-3), name
    table = c.table
    assert table.label.tolist() == ["small", "wide"]
    assert table.hidden_size.tolist() == [32, 48] and table.n_layers.tolist() == [3, 5]
    assert table.final_r_ratio.tolist() == pytest.approx([small.r_ratio.iloc[-1],
                                                           wide.r_ratio.iloc[-1]])  # fmt: skip


def test_default_labels_are_distinct(audits):
    c = hopaudit.compare(audits[0], audits[0], audits[1])
    assert c.labels == ["GPT2LMHeadModel #1", "GPT2LMHeadModel #2", "LlamaForCausalLM"]


def test_mixed_normalize_is_refused(audits):
    raw = _audit(tiny_model("gpt2")[0], normalize="none")
    with pytest.raises(DataError, match=r"normalize.*'rms'.*'none'.*not comparable"):
        hopaudit.compare(audits[0], raw)
    with pytest.raises(DataError, match="3 labels for 2 audits"):
        hopaudit.compare(*audits, labels=["a", "b", "c"])
    with pytest.raises(DataError, match="at least one audit"):
        hopaudit.compare()
    with pytest.raises(DataError, match="Audit or the path"):
        hopaudit.compare(42)


def test_compare_loads_saved_paths(audits, tmp_path):
    paths = [audits[0].save(tmp_path / "a"), str(audits[1].save(tmp_path / "b"))]
    from_disk = hopaudit.compare(*paths, labels=["a", "b"])
    in_memory = hopaudit.compare(*audits, labels=["a", "b"])
    cols = ["cross_entropy", "final_r_ratio", "n_params_blocks", "hidden_size"]
    assert from_disk.table[cols].equals(in_memory.table[cols])
    assert np.allclose(from_disk.layers.r_hat, in_memory.layers.r_hat)


def test_compare_state_members_are_the_single_view_states(audits):
    c = hopaudit.compare(*audits)
    state = c.widget_state()
    assert state["kind"] == "compare" and len(state["members"]) == 2
    for i, a in enumerate(audits):
        single = widget_state(a)
        member = member_state(state, i)
        for key in ("layer_stats", "hist_counts", "hist_range", "seq_ce"):
            assert member[key] == single[key], key
        assert "sample_values" not in member  # the samples table is not shown side by side
        assert member["depth"] == relative_depth(a.layer_names, a.n_blocks)[0].tolist()
    refs = [
        v["blob"]
        for m in state["members"]
        for v in m.values()
        if isinstance(v, dict) and "blob" in v
    ]
    offsets = [off for off, _ in refs if isinstance(off, int)]
    assert len(offsets) == len(refs) > 0
    assert all(o % 8 == 0 for o in offsets)
    widget = c.widget()
    assert widget.kind == "compare" and widget.blob == state["blob"]
    assert "application/vnd.jupyter.widget-view+json" in c._repr_mimebundle_()[0]


def test_to_html_of_a_comparison(audits, tmp_path):
    from hopaudit.views.report import read_html_state

    out = hopaudit.compare(*audits, labels=["x", "y"]).to_html(tmp_path / "c.html")
    text = out.read_text()
    assert "comparison of x, y" in text
    state = read_html_state(text)
    assert state["kind"] == "compare" and state["labels"] == ["x", "y"]


def test_procrustes_recovers_a_known_similarity():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 2))
    angle = 0.7
    rot = np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
    y = 2.5 * x @ rot + np.array([3.0, -1.0])
    r, s, t = procrustes(x, y)
    assert s == pytest.approx(2.5) and np.allclose(r, rot) and np.allclose(t, [3.0, -1.0])


# ------------------------------------------------------------------------------ timeline
def _perturbed(model, step: int, scale: float = 0.03):
    """The model after `step` 'training steps': seeded noise added to every weight."""
    import copy

    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1000 + step)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * step * torch.randn(p.shape, generator=g))
    return m


@pytest.fixture(scope="module")
def run_audits():
    base = tiny_model("gpt2")[0]
    out = []
    for step in (10, 20, 30, 40):
        a = _audit(_perturbed(base, step // 10), TEXTS[:80])
        a.options["step"] = step
        out.append(a)
    return out


def test_timeline_orders_by_step_from_dirs(run_audits, tmp_path):
    run = tmp_path / "run"
    for a in (run_audits[2], run_audits[0], run_audits[3]):
        a.save(run / "hopaudit" / f"step-{a.options['step']}")
    loose = run_audits[1]
    del_step = dict(loose.options)
    loose.options.pop("step")  # this one's step comes from its directory's name
    try:
        loose.save(run / "hopaudit" / "step-20")
    finally:
        loose.options.update(del_step)
    for source in (run, run / "hopaudit"):
        tl = hopaudit.timeline(source)
        assert tl.steps == [10, 20, 30, 40]
        assert tl.table.step.tolist() == [10, 20, 30, 40]
    shuffled = [run / "hopaudit" / f"step-{s}" for s in (30, 10, 40, 20)]
    tl = hopaudit.timeline(shuffled)
    assert tl.steps == [10, 20, 30, 40]
    ce = [a.summary()["cross_entropy"] for a in run_audits]
    assert tl.table.cross_entropy.tolist() == pytest.approx(ce)
    with pytest.raises(DataError, match="holds no audits"):
        hopaudit.timeline(tmp_path)
    with pytest.raises(DataError, match="same step"):
        hopaudit.timeline([run_audits[0], run_audits[0]])


def _unit(xy: np.ndarray) -> np.ndarray:
    c = xy - xy.mean(axis=0)
    return c / np.sqrt((c**2).sum(axis=1).mean())


def test_frames_start_from_the_previous_layout(run_audits):
    tl = hopaudit.timeline(run_audits, umap_layers=["final"])
    align = tl.alignment
    assert align.method.tolist() == ["first", "init", "init", "init"]
    assert (align.n_matched.iloc[1:] == 80).all()
    frames = [_unit(a.embeddings["final"].xy.astype(np.float64)) for a in tl.audits]
    fresh = []
    for a in run_audits:
        rep = a.layer_report("final")
        fresh.append(_unit(umap_from_knn(rep.knn_ids, rep.knn_dists, n_neighbors=15, seed=0)))
    # every frame holds the same 80 sequences in the same order (positions="last")
    for a in tl.audits:
        assert a.embeddings["final"].sequence.tolist() == list(range(80))

    def mean_move(layouts):
        return np.mean([np.linalg.norm(b - a, axis=1).mean() for a, b in pairwise(layouts)])

    aligned, naive = mean_move(frames), mean_move(fresh)
    print(f"mean displacement per step: aligned={aligned:.3f} fresh={naive:.3f}")
    assert aligned < 0.5 * naive


def pairwise(items):
    return itertools.pairwise(items)


def test_other_sequences_fall_back_to_procrustes():
    model = tiny_model("gpt2")[0]
    a = _audit(model, TEXTS[:60])
    b = _audit(_perturbed(model, 1), TEXTS[20:80])
    a.options["step"], b.options["step"] = 1, 2
    tl = hopaudit.timeline([b, a])
    assert tl.alignment.method.tolist() == ["first", "procrustes"]
    assert tl.alignment.n_matched.tolist() == [0, 40]  # texts 20..59 are in both
    # the fit lays the shared sequences of step 2 near where step 1 had them
    xa, xb = (x.embeddings["final"] for x in tl.audits)
    shared_a = xa.xy[20:60].astype(np.float64)
    shared_b = xb.xy[:40].astype(np.float64)
    rmse = np.sqrt(((shared_a - shared_b) ** 2).sum(axis=1).mean())
    spread = np.sqrt(((shared_a - shared_a.mean(0)) ** 2).sum(axis=1).mean())
    assert rmse < spread


def test_timeline_state_shares_one_box_per_layer(run_audits):
    tl = hopaudit.timeline(run_audits)
    state = tl.widget_state()
    assert state["kind"] == "timeline" and state["steps"] == [10, 20, 30, 40]
    assert state["alignment"] == ["first", "init"]
    boxes = {tuple(m["scatter_layers"][0][k] for k in ("x0", "x1", "y0", "y1"))
             for m in state["members"]}  # fmt: skip
    assert len(boxes) == 1
    x0, x1, y0, y1 = boxes.pop()
    for i, a in enumerate(tl.audits):
        member = member_state(state, i)
        q = decode(member, "scatter_xy").astype(np.float64)
        xy = np.column_stack([x0 + q[:, 0] * (x1 - x0) / 65535, y0 + q[:, 1] * (y1 - y0) / 65535])
        assert np.allclose(xy, a.embeddings["final"].xy, atol=(x1 - x0) / 30000 + 1e-6)
    # the same texts at every step are stored once
    assert len({tuple(m["text_bytes"]["blob"]) for m in state["members"]}) == 1
    widget = tl.widget()
    assert widget.kind == "timeline" and widget.step_index == 3


def test_subsampled_frames_keep_the_same_sequences(run_audits):
    tl = hopaudit.timeline(run_audits, max_points=50)
    seqs = [a.embeddings["final"].sequence.tolist() for a in tl.audits]
    assert len(seqs[0]) == 50 and all(s == seqs[0] for s in seqs)
    assert tl.alignment.method.tolist() == ["first", "init", "init", "init"]
    # the subsample's own graph: a layout of 50 finite points, n_total still 80
    assert all(a.embeddings["final"].n_total == 80 for a in tl.audits)
    assert all(np.isfinite(a.embeddings["final"].xy).all() for a in tl.audits)
