"""UMAP from the precomputed kNN graph vs umap-learn's own neighbour search, side by side.

    .venv/bin/python benchmarks/umap_precomputed.py [--n 20000] [--dim 576] [--rounds 2]

Synthetic clustered data shaped like one layer of SmolLM2 (20 000 x 576: 40 clusters, each a
Gaussian on its own random 12-dimensional subspace, plus isotropic noise). The kNN graph
(k = 15 including self) comes from exact brute-force search with torch. Then, alternating
the order every round, the same UMAP parameters run (a) on that graph through
hopaudit.embedding.umap_from_knn and (b) with umap-learn's own NNDescent search. Numba is
warmed first by tiny fits of both paths, so JIT compilation is counted in neither. Both layouts
are scored with sklearn's trustworthiness on a 5 000-point subsample. A third timing runs the
precomputed path unseeded (seed=None: umap may use every core, layouts not reproducible).
Each timing is reported as wall-clock seconds and as this process's CPU seconds: on a shared
machine the wall clock mostly measures the neighbours' load, the CPU time measures the work
(for the unseeded, multi-threaded run it sums the threads). Output: name=value lines.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np

from hopaudit.embedding import umap_from_knn


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--trust-points", type=int, default=5000)
    args = ap.parse_args()

    t0 = time.perf_counter()
    import umap
    from sklearn.manifold import trustworthiness

    print(f"import_umap_seconds={time.perf_counter() - t0:.2f}")
    print(f"cpus={len(os.sched_getaffinity(0))}")
    x, _ = clustered(args.n, args.dim)
    t0 = time.perf_counter()
    ids, dists = exact_knn(x, 15)
    print(f"knn_exact_seconds={time.perf_counter() - t0:.2f}")

    params = {"n_neighbors": 15, "min_dist": 0.1}

    def precomputed(seed=0):
        return umap_from_knn(ids, dists, seed=seed, **params)

    def own_search():
        reducer = umap.UMAP(n_components=2, random_state=0, n_jobs=1, init="spectral", **params)
        return reducer.fit_transform(x).astype(np.float32)

    # warm numba: both code paths on a tiny set (force NNDescent, which small sets skip)
    t0 = time.perf_counter()
    small = x[:600]
    s_ids, s_dists = exact_knn(small, 15)
    umap_from_knn(s_ids, s_dists, seed=0, **params)
    umap_from_knn(s_ids, s_dists, seed=None, **params)
    umap.UMAP(random_state=0, n_jobs=1, force_approximation_algorithm=True, **params).fit(small)
    print(f"numba_warmup_seconds={time.perf_counter() - t0:.2f}  (JIT excluded from the timings)")

    names = ("pre", "own", "unseeded")
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    layouts = {}
    jobs = {"pre": precomputed, "own": own_search, "unseeded": lambda: precomputed(None)}
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

    print(f"umap_precomputed_seconds={med(wall, 'pre'):.2f}")
    print(f"umap_own_search_seconds={med(wall, 'own'):.2f}")
    print(f"speedup={med(wall, 'own') / med(wall, 'pre'):.2f}")
    print(f"umap_precomputed_cpu_seconds={med(cpu, 'pre'):.2f}")
    print(f"umap_own_search_cpu_seconds={med(cpu, 'own'):.2f}")
    print(f"speedup_cpu={med(cpu, 'own') / med(cpu, 'pre'):.2f}")
    print(f"umap_precomputed_unseeded_seconds={med(wall, 'unseeded'):.2f}")
    print(f"umap_precomputed_unseeded_cpu_seconds={med(cpu, 'unseeded'):.2f}")
    print(f"unseeded_speedup={med(wall, 'pre') / med(wall, 'unseeded'):.2f}")

    sub = np.random.default_rng(1).choice(
        len(x), size=min(args.trust_points, len(x)), replace=False
    )
    for name, label in (("pre", "precomputed"), ("own", "own")):
        t = trustworthiness(x[sub], layouts[name][sub], n_neighbors=15)
        print(f"trustworthiness_{label}={t:.4f}")


if __name__ == "__main__":
    main()
