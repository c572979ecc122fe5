"""engine="ray" on a real two-node Ray cluster on this machine: the same audit as engine="local",
an actor killed during capture, and a failure no retry can fix. Select with ``-m ray``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
from tiny_models import random_texts, tiny_model, tiny_tokenizer

import hopaudit
from hopaudit.errors import CaptureError, HopauditError
from hopaudit.layer.patterns import layer_patterns

ray = pytest.importorskip("ray", reason="engine='ray' needs pip install 'hopaudit[ray]'")
pytestmark = [pytest.mark.ray, pytest.mark.slow]  # a cluster start and Ray audits: minutes

TESTS = Path(__file__).resolve().parents[1]
NUMERIC = [
    "n_patterns", "nn_mean", "nn_median", "nn_q10", "nn_q90", "r_hat", "r_ratio",
    "separated_frac", "contained_frac", "log_z_gauss", "log_z_vol", "floor_low", "twonn_id",
]  # fmt: skip


NICENESS = "RAY_worker_niceness"  # Ray's spelling


@pytest.fixture(scope="module")
def cluster():
    """Two raylets (head + one worker node) on this machine, 2 logical CPUs each."""
    from ray.cluster_utils import Cluster

    paths = [str(TESTS.parent), str(TESTS), os.environ.get("PYTHONPATH", "")]
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", NICENESS)}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)  # the workers import these
    # workers at Ray's default niceness (15) get a sliver of a busy machine: as hopaudit's own
    # Ray does, run them at the driver's
    os.environ[NICENESS] = "0"
    c = _start_cluster(Cluster)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _start_cluster(cluster_class, attempts: int = 3):
    """A head and a worker node, and the driver connected. Ray waits a fixed 30 s for a raylet
    to register (ray/_private/node.py), which an overloaded machine can miss: try again, and
    skip with the reason when every attempt missed it (a slow machine, not a failing test)."""
    failures = []
    for _ in range(attempts):
        c = cluster_class(initialize_head=False)
        try:
            c.add_node(num_cpus=2, include_dashboard=False)
            c.add_node(num_cpus=2)
            ray.init(address=c.address, log_to_driver=False)
            return c
        except Exception as exc:  # Ray raises a bare Exception on the startup timeout
            failures.append(f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                ray.shutdown()
            with contextlib.suppress(Exception):
                c.shutdown()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    pytest.skip(
        f"Ray's nodes did not start within Ray's fixed 30 s, {attempts} times (load average "
        f"{load}): {failures[-1][:200]}"
    )


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2")[0]


def _options(**extra):
    opts = dict(
        tokenizer=tiny_tokenizer(),
        max_length=12,
        positions="all",
        progress=False,
        umap_layers=[0],
        index="exact",
        batch_size=8,
    )
    opts.update(extra)
    return opts


def _same_layers(a, b, rtol):
    la, lb = a.layers, b.layers
    assert list(la["name"]) == list(lb["name"])
    for col in NUMERIC:
        np.testing.assert_allclose(lb[col], la[col], rtol=rtol, err_msg=col)


def _same_layout_quality(local, remote, name):
    """The UMAP of one layer: the same points, each laid out as faithfully by either engine.

    The coordinates themselves are not compared: Ray's workers run torch on other thread counts,
    so the activations agree to rounding only, and UMAP's seeded optimisation turns a last-bit
    difference in one kNN distance into a different (equally good) layout. What must be equal
    is which rows are laid out, their labels, and how well each layout keeps the patterns'
    neighbourhoods (scikit-learn's trustworthiness against the stored activations)."""
    from sklearn.manifold import trustworthiness

    a, b = local.embeddings[name], remote.embeddings[name]
    np.testing.assert_array_equal(b.rows, a.rows)
    np.testing.assert_array_equal(b.sequence, a.sequence)
    assert np.mean(b.basin == a.basin) >= 0.95  # a basin can flip on a rounding tie
    np.testing.assert_allclose(b.ratio, a.ratio, rtol=1e-5)
    x = np.asarray(local.capture.store.get(name), np.float32)[a.rows]
    t_local, t_remote = (trustworthiness(x, e.xy, n_neighbors=5) for e in (a, b))
    shuffled = trustworthiness(x, np.random.default_rng(0).permutation(b.xy), n_neighbors=5)
    assert t_remote > shuffled + 0.2, (t_remote, shuffled)  # a layout of these rows, in order
    assert abs(t_remote - t_local) < 0.03, (t_local, t_remote)


def test_workers_run_at_the_drivers_niceness(cluster):
    """RAY_worker_niceness=0 (set by hopaudit when it starts Ray, and by this fixture) reaches
    the workers: at Ray's default of 15 a busy machine starves the audit's actors."""

    @ray.remote
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote()) == os.nice(0)


def test_ray_equals_local_with_the_exact_index(cluster, model):
    texts = random_texts(40, words=20)
    ex = {"extraction": {"prefix": 2, "suffix": 6}}  # read off each shard's pass, then joined
    local = hopaudit.audit(model, texts, **_options(**ex))
    remote = hopaudit.audit(
        model, texts, engine="ray", ray_options={"concurrency": 2}, **_options(**ex)
    )
    _same_layers(local, remote, rtol=1e-6)
    np.testing.assert_array_equal(remote.capture.row_sequence, local.capture.row_sequence)
    np.testing.assert_array_equal(remote.capture.row_position, local.capture.row_position)
    np.testing.assert_allclose(remote.capture.seq_nll, local.capture.seq_nll, rtol=1e-6)
    assert remote.extraction["method"] == local.extraction["method"] == "teacher-forced"
    np.testing.assert_array_equal(
        remote.capture.seq_extracted_tokens, local.capture.seq_extracted_tokens
    )
    assert remote.summary()["cross_entropy"] == pytest.approx(
        local.summary()["cross_entropy"], rel=1e-9
    )
    name = local.layer_names[0]
    _same_layout_quality(local, remote, name)
    assert remote.capture.store.path is None  # store=None: in memory, like the local engine
    assert remote.options["engine"] == "ray"
    # the work ran in Ray's processes: their largest peak is reported beside the driver's
    assert local.summary()["peak_rss_worker_mb"] is None
    s = remote.summary()
    assert s["peak_rss_worker_mb"] > 100  # a process holding torch and a model replica
    assert s["peak_rss_worker_stage"].endswith(("(Ray actor)", "(Ray task)"))


def test_ray_with_hnsw_a_store_and_heldout_saves_and_loads(cluster, model, tmp_path):
    texts, held = random_texts(40, words=20), random_texts(10, words=20, seed=1)
    opts = _options(index="hnsw", heldout=held, umap_layers=[])
    local = hopaudit.audit(model, texts, **opts)
    remote = hopaudit.audit(model, texts, engine="ray", store=str(tmp_path / "s"), **opts)
    la, lb = local.layers, remote.layers
    rel = np.abs(lb["nn_median"] - la["nn_median"]) / la["nn_median"]
    assert rel.max() <= 0.005
    np.testing.assert_allclose(lb["contained_frac"], la["contained_frac"], atol=0.05)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "s.layers"]  # no shards left
    back = hopaudit.load(remote.save(tmp_path / "saved"))
    assert back.layers.drop(columns=["skipped_reason"]).equals(
        remote.layers.drop(columns=["skipped_reason"])
    )
    q = np.random.default_rng(0).normal(size=(4, remote.hidden_size)).astype(np.float32)
    for name in remote.layer_names:
        np.testing.assert_array_equal(
            back.layer_report(name).index.query(q, 3)[0],
            remote.layer_report(name).index.query(q, 3)[0],
        )


def test_ray_with_the_clustered_search_reports_its_recall_and_reopens_it(cluster, model):
    """Each worker measures its layers with the clustered search: the recall it measured comes
    back in the rows, and the driver's copy of each index (rebuilt from the seeded parameters,
    store=None) answers as the local engine's does."""
    texts = random_texts(40, words=20)
    opts = _options(index="clustered", umap_layers=[])
    local = hopaudit.audit(model, texts, **opts)
    remote = hopaudit.audit(model, texts, engine="ray", **opts)
    for a in (local, remote):
        assert (a.layers["search_recall_at_1"] >= 0.99).all()
        assert (a.layers["search_recall_at_k"] >= 0.95).all()
    rel = np.abs(remote.layers["nn_median"] - local.layers["nn_median"]) / local.layers["nn_median"]
    assert rel.max() <= 0.005
    q = np.random.default_rng(0).normal(size=(4, remote.hidden_size)).astype(np.float32)
    for name in remote.layer_names:
        index = remote.layer_report(name).index
        assert index.kind == "clustered" and index.recall is not None
        ids, d_remote = index.query(q, 3)
        rep = remote.layer_report(name)
        x = layer_patterns(remote.capture.store, name, rep.valid_rows, rep.normalize)
        exact = np.linalg.norm(x[ids].astype(np.float64) - q[:, None, :], axis=2)
        np.testing.assert_allclose(d_remote, exact, rtol=1e-5)  # real rows, true distances
        d_local = local.layer_report(name).index.query(q, 3)[1]
        np.testing.assert_allclose(d_remote, d_local, rtol=1e-3)


def test_an_actor_killed_during_capture_loses_and_doubles_no_row(cluster, model, tmp_path):
    from ray_helpers import KillOnce

    texts = random_texts(32, words=20)
    flag = tmp_path / "killed"
    local = hopaudit.audit(model, texts, **_options(umap_layers=[]))
    remote = hopaudit.audit(
        model,
        texts,
        engine="ray",
        store=str(tmp_path / "s"),
        ray_options={"concurrency": 2, "before_batch": KillOnce(str(flag), 16)},
        **_options(umap_layers=[]),
    )
    assert flag.exists()  # an actor was killed, mid-batch
    np.testing.assert_array_equal(remote.capture.row_sequence, local.capture.row_sequence)
    np.testing.assert_array_equal(remote.capture.row_position, local.capture.row_position)
    _same_layers(local, remote, rtol=1e-6)
    assert not (tmp_path / "s.shards").exists()


def test_a_failure_no_retry_fixes_is_one_error_and_removes_the_shards(cluster, model, tmp_path):
    from ray_helpers import FailAlways

    store = tmp_path / "s"
    seen = tmp_path / "seen"
    fail = FailAlways(24, str(store) + ".shards", str(seen))
    with pytest.raises(CaptureError, match="failed after its retries") as caught:
        hopaudit.audit(
            model,
            random_texts(32, words=20),
            engine="ray",
            store=str(store),
            ray_options={"concurrency": 1, "before_batch": fail},
            **_options(umap_layers=[]),
        )
    assert "injected failure" in str(caught.value) or "injected failure" in str(
        caught.value.__cause__
    )
    # Shards of other batches were there when it failed (how many depends on the order Ray Data
    # ran the four batches in: 3 on one run, 2 on another), and all of them are gone.
    assert 1 <= int(seen.read_text()) <= 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seen"]  # shards, store: all gone


@pytest.mark.parametrize(
    ("asked", "named"), [({"num_gpus": 1}, "num_gpus=1"), ({"num_cpus": 64}, "num_cpus=64")]
)
def test_a_request_no_node_can_meet_is_refused_in_seconds(cluster, model, asked, named):
    """Issue 26: num_gpus=1 on a cluster without a GPU, or 64 CPUs on two-CPU nodes, waited
    forever (Ray logs ``pending``): refused before any forward pass, naming what was asked
    and what the two nodes have."""
    with pytest.raises(HopauditError, match=rf"{named} per actor .* on its 2 nodes") as caught:
        hopaudit.audit(
            model, random_texts(16, words=20), engine="ray", ray_options=asked, **_options()
        )
    assert "wait forever" in str(caught.value)
