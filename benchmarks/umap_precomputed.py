"""UMAP from the precomputed kNN graph vs umap-learn's own neighbour search, side by side.

    .venv/bin/python benchmarks/umap_precomputed.py [--n 20000] [--dim 576] [--rounds 2]
    .venv/bin/python benchmarks/umap_precomputed.py --smollm2     # real activations instead
    .venv/bin/python benchmarks/umap_precomputed.py --epochs 40,60,100   # and an epoch sweep

Data: synthetic clustered points shaped like one layer of SmolLM2 (20 000 x 576: 40 clusters,
each a Gaussian on its own random 12-dimensional subspace, plus isotropic noise), or with
``--smollm2`` the real ``final``-layer activations of SmolLM2 at every position of 320
sequences of 64 pydoc tokens (20 480 x 576, RMS-normalized as audit() does; about a minute
of capture). The kNN graph (k = 15 including self) comes from exact brute-force search.

Three runs, alternated round by round, numba warmed first on every path (JIT counted in
none), all seeded (umap then optimizes on one thread):

- ``pre``: what ``audit()`` does: ``umap_from_knn(graph, data=patterns)``, which starts from
  the patterns' PCA and runs ``DEFAULT_EPOCHS`` (60) epochs;
- ``pre_same``: the graph with umap's own defaults (spectral start, 200 epochs): the saving of
  the skipped neighbour search alone;
- ``own``: ``umap.UMAP(...).fit_transform(x)`` as a user would call it: its own NNDescent
  search, spectral start, 200 epochs.

Prints wall and CPU seconds (this process) and ``speedup`` = own / pre (target >= 3), and
each layout's trustworthiness (sklearn, 5 000-point subsample; target: pre within 0.02 of own)
and kNN recall (the share of each point's 15 neighbours kept among its 15 neighbours in 2-D).

``--epochs`` then times ``pre`` at each epoch count, seeded (one thread) and unseeded (umap's
parallel epochs), and prints each one's seconds and trustworthiness: the measurement behind
``DEFAULT_EPOCHS`` and behind keeping ``seed=0``.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np

from hopaudit.layer.embedding import umap_from_knn


def clustered(n: int, dim: int, *, clusters: int = 40, sub: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, clusters, size=n)
    centres = rng.normal(scale=1.2, size=(clusters, dim))
    bases = rng.normal(size=(clusters, sub, dim)) / np.sqrt(dim)
    coords = rng.normal(size=(n, sub))
    x = centres[label] + np.einsum("ns,nsd->nd", coords, bases[label])
    x += rng.normal(scale=0.05, size=(n, dim))
    return x.astype(np.float32), label


def exact_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest including self (column 0), exact, by a tiled float32 matmul in torch."""
    import torch

    xt = torch.from_numpy(x - x.mean(axis=0))
    sq = (xt * xt).sum(1)
    ids = np.empty((len(x), k), dtype=np.int64)
    dists = np.empty((len(x), k), dtype=np.float32)
    for start in range(0, len(x), 2048):
        q = xt[start : start + 2048]
        d2 = sq[start : start + 2048, None] + sq[None, :] - 2.0 * q @ xt.T
        rows = torch.arange(start, start + len(q))
        d2[rows - start, rows] = -1.0  # self first, by id
        val, idx = torch.topk(d2, k, dim=1, largest=False)
        ids[start : start + len(q)] = idx.numpy()
        dists[start : start + len(q)] = val.clamp_min(0).sqrt().numpy()
    dists[:, 0] = 0.0
    return ids, dists


def smollm2_final(n_sequences: int = 320, length: int = 64) -> np.ndarray:
    """Real patterns: SmolLM2's final-norm output at every position, RMS-normalized."""
    from hopaudit.capture import capture
    from hopaudit.data import prepare_data
    from hopaudit.geometry import normalize_rows
    from hopaudit.model.blocks import find_blocks, find_final_norm
    from hopaudit.model.loading import load_model
    from hopaudit.zoo import models as zoo

    model, tok = load_model("smollm2")
    blocks = find_blocks(model)
    final = find_final_norm(model, [p for p, _ in blocks])
    tokens = prepare_data(
        zoo.corpus("pydoc"), tok, max_length=length, max_sequences=n_sequences, model=model
    )
    res = capture(model, tokens, blocks[-1:], final=final, positions="all", progress=False)
    return normalize_rows(np.asarray(res.store.get("final"), np.float32), "rms")


def knn_recall(ids: np.ndarray, y: np.ndarray) -> float:
    """Mean share of each point's high-dimensional neighbours among its 2-D neighbours."""
    k = ids.shape[1]
    ids2, _ = exact_knn(np.ascontiguousarray(y, dtype=np.float32), k)
    hits = [len(np.intersect1d(a[1:], b[1:])) for a, b in zip(ids, ids2, strict=True)]
    return float(np.mean(hits)) / (k - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--trust-points", type=int, default=5000)
    ap.add_argument("--smollm2", action="store_true", help="real SmolLM2 activations")
    ap.add_argument("--epochs", default="", help="comma-separated epoch counts to sweep")
    args = ap.parse_args()

    t0 = time.perf_counter()
    import umap
    from sklearn.manifold import trustworthiness

    print(f"import_umap_seconds={time.perf_counter() - t0:.2f}")
    print(f"cpus={len(os.sched_getaffinity(0))}")
    t0 = time.perf_counter()
    x = smollm2_final() if args.smollm2 else clustered(args.n, args.dim)[0]
    print(f"data={'smollm2_final' if args.smollm2 else 'synthetic'} shape={x.shape}")
    print(f"data_seconds={time.perf_counter() - t0:.2f}")
    t0 = time.perf_counter()
    ids, dists = exact_knn(x, 15)
    print(f"knn_exact_seconds={time.perf_counter() - t0:.2f}")

    params = {"n_neighbors": 15, "min_dist": 0.1}

    def own_search():
        reducer = umap.UMAP(n_components=2, random_state=0, n_jobs=1, init="spectral", **params)
        return reducer.fit_transform(x).astype(np.float32)

    jobs = {
        "pre": lambda: umap_from_knn(ids, dists, seed=0, data=x, **params),
        "pre_same": lambda: umap_from_knn(ids, dists, seed=0, **params),
        "own": own_search,
    }
    # warm numba on every path with the real data (a 600-point warm-up misses the code for
    # disconnected graphs, which real activations give): one short run of each
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        umap_from_knn(ids, dists, seed=0, data=x, n_epochs=2, **params)
        umap_from_knn(ids, dists, seed=0, n_epochs=2, **params)
        umap.UMAP(random_state=0, n_jobs=1, n_epochs=2, **params).fit(x)
    print(f"numba_warmup_seconds={time.perf_counter() - t0:.2f}  (JIT excluded from the timings)")

    names = ("pre", "pre_same", "own")
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    layouts = {}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0, c0 = time.perf_counter(), time.process_time()
                layouts[name] = jobs[name]()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        print(
            f"round={r} " + " ".join(f"{k}={wall[k][-1]:.2f}s/{cpu[k][-1]:.2f}cpu" for k in names)
        )

    def med(d, k):
        return float(np.median(d[k]))

    for k in names:
        print(f"umap_{k}_seconds={med(wall, k):.2f} cpu_seconds={med(cpu, k):.2f}")
    print(f"speedup={med(wall, 'own') / med(wall, 'pre'):.2f}")
    print(f"speedup_cpu={med(cpu, 'own') / med(cpu, 'pre'):.2f}")
    print(f"speedup_same_params={med(wall, 'own') / med(wall, 'pre_same'):.2f}")

    sub = np.random.default_rng(1).choice(
        len(x), size=min(args.trust_points, len(x)), replace=False
    )
    for k in names:
        t = trustworthiness(x[sub], layouts[k][sub], n_neighbors=15)
        print(f"trustworthiness_{k}={t:.4f} knn_recall_{k}={knn_recall(ids, layouts[k]):.4f}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        umap_from_knn(ids, dists, seed=None, data=x, n_epochs=2, **params)  # parallel JIT
        for epochs in [int(e) for e in args.epochs.split(",") if e]:
            line = [f"epochs={epochs}"]
            for seed in (0, None):
                t0 = time.perf_counter()
                y = umap_from_knn(ids, dists, seed=seed, data=x, n_epochs=epochs, **params)
                name = "seeded" if seed is not None else "unseeded"
                line.append(f"{name}_seconds={time.perf_counter() - t0:.2f}")
                line.append(
                    f"{name}_trustworthiness={trustworthiness(x[sub], y[sub], n_neighbors=15):.4f}"
                )
            print(" ".join(line), flush=True)


if __name__ == "__main__":
    main()
