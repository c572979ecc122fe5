"""HNSW's ``M`` and ``ef_construction`` chosen by measured time at the recall the audit needs.

For each data set (``synthetic``: a 576-d Gaussian mixture with low-rank clusters, as
benchmarks/search.py makes it; ``smollm2``: SmolLM2's ``final`` layer at every position of
pydoc sequences of 64 tokens, bfloat16 autocast as the audit runs it) of ``--n`` patterns, and
each (M, ef_construction) of the grid, one HNSW index is built as the audit builds it
(``build_index``) and searched as the audit searches it (``knn_self``: every pattern's 15
nearest others at the default ``ef``). Recall is measured against exact search on a sample of
``--sample`` patterns, by distance (a neighbour counts when it is no farther than the exact
one, so tied duplicates, which real activations have, count once each): ``recall_at_1`` the
share whose nearest is found, ``recall_at_15`` the share of the 15 nearest found. Prints
one line per configuration (``hnsw_<data>_M<m>_efc<e>_build_seconds=`` ``..._search_seconds=``
``..._recall_at_1=`` ``..._recall_at_15=``), the CPU and the load average, and at the end
``best_M=`` ``best_ef_construction=``: the configuration with the least build + search time
over both data sets among those reaching recall@1 >= 0.99 and recall@15 >= 0.95 on both, and
``best_over_default_seconds=``, its time over the default's (M 16, ef_construction 200).

Usage: ``python benchmarks/hnsw_params.py [--n 100000] [--M 8 12 16 24] [--efc 50 100 200]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

K = 15
RECALL_1, RECALL_15 = 0.99, 0.95
DEFAULT = (16, 200)


def synthetic(n: int, dim: int = 576, seed: int = 0) -> np.ndarray:
    """Float16 rows of a Gaussian mixture with anisotropic (low-rank plus noise) clusters."""
    rng = np.random.default_rng(seed)
    n_centres = max(50, n // 100)
    centres = rng.normal(size=(n_centres, dim)).astype(np.float32) * 2.0
    basis = rng.normal(size=(32, dim)).astype(np.float32) / np.sqrt(32)
    scales = np.linspace(2.0, 0.2, 32, dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float16)
    for start in range(0, n, 10000):
        m = min(10000, n - start)
        z = rng.normal(size=(m, 32)).astype(np.float32) * scales
        noise = 0.3 * rng.normal(size=(m, dim)).astype(np.float32)
        out[start : start + m] = centres[rng.integers(0, n_centres, m)] + z @ basis + noise
    return out


def smollm2_final(n: int) -> np.ndarray:
    """SmolLM2's ``final`` rows at every position of pydoc sequences of 64 tokens (float16)."""

    import hopaudit
    from hopaudit.data import prepare_data

    model, tok = hopaudit.zoo.smollm2()
    data = prepare_data(hopaudit.zoo.corpus("pydoc"), tok, max_length=64)
    need = -(-n // 64)
    if data.num_sequences < need:
        raise SystemExit(f"pydoc gives {data.num_sequences * 64} tokens, fewer than --n {n}")
    data = prepare_data(hopaudit.zoo.corpus("pydoc"), tok, max_length=64, max_sequences=need)
    return final_rows(model, data, n)


def final_rows(model, data, n: int) -> np.ndarray:
    """The first ``n`` rows of ``model``'s ``final`` layer at every position of ``data``
    (float16, the forward as an audit runs it)."""
    import torch

    from hopaudit.capture.forward import capture
    from hopaudit.model.blocks import find_stacks

    stack = find_stacks(model)[-1]
    cap = capture(
        model, data, [stack], positions="all", store_dtype=torch.float16, progress=False,
        autocast="auto",
    )  # fmt: skip
    return np.asarray(cap.store.get("final"))[:n]


def exact_neighbours(x: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """(len(sample), K) distances of each sampled row's K nearest others, float64, brute force."""
    x64 = x.astype(np.float64)
    sq = (x64 * x64).sum(1)
    out = np.empty((len(sample), K))
    for start in range(0, len(sample), 256):
        rows = sample[start : start + 256]
        d2 = sq[rows, None] + sq[None, :] - 2.0 * x64[rows] @ x64.T
        d2[np.arange(len(rows)), rows] = np.inf  # not itself
        part = np.partition(d2, K, axis=1)[:, :K]
        out[start : start + len(rows)] = np.sqrt(np.maximum(np.sort(part, axis=1), 0))
    return out


def one(x: np.ndarray, m: int, efc: int, sample: np.ndarray, truth: np.ndarray) -> dict:
    from hopaudit.search import build_index, knn_self

    t0 = time.perf_counter()
    index = build_index(x, "hnsw", M=m, ef_construction=efc)
    t1 = time.perf_counter()
    _, dists = knn_self(index, x, K)
    t2 = time.perf_counter()
    got = dists[sample].astype(np.float64)
    tol = 1e-4 * np.maximum(truth[:, -1:], 1e-12)
    recall_1 = float(np.mean(got[:, 0] <= truth[:, 0] + tol[:, 0]))
    recall_15 = float(np.mean(got <= truth[:, -1:] + tol))
    return {"build": t1 - t0, "search": t2 - t1, "r1": recall_1, "r15": recall_15}


def main(argv: list[str] | None = None) -> dict[str, object]:
    from hopaudit.model.precision import cpu_description

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--M", type=int, nargs="+", default=[8, 12, 16, 24])
    parser.add_argument("--efc", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--data", nargs="+", default=["synthetic", "smollm2"])
    args = parser.parse_args(argv)
    grid = sorted({(m, e) for m in args.M for e in args.efc} | {DEFAULT})
    lines: dict[str, object] = {}
    cpu = cpu_description()
    lines.update({k: v for k, v in cpu.items() if not isinstance(v, (list, dict))})
    lines["load_average_start"] = round(os.getloadavg()[0], 2)
    print(" ".join(f"{k}={v}" for k, v in lines.items()), flush=True)
    results: dict[tuple[int, int], list[dict]] = {c: [] for c in grid}
    for name in args.data:
        x = synthetic(args.n) if name == "synthetic" else smollm2_final(args.n)
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(len(x), size=min(args.sample, len(x)), replace=False))
        truth = exact_neighbours(np.asarray(x, dtype=np.float32), sample)
        for m, efc in grid:
            r = one(x, m, efc, sample, truth)
            results[(m, efc)].append(r)
            key = f"hnsw_{name}_M{m}_efc{efc}"
            for field, value in (("build_seconds", round(r["build"], 2)),
                                 ("search_seconds", round(r["search"], 2)),
                                 ("recall_at_1", round(r["r1"], 4)),
                                 ("recall_at_15", round(r["r15"], 4))):  # fmt: skip
                lines[f"{key}_{field}"] = value
            print(f"{key}_build_seconds={r['build']:.2f} {key}_search_seconds={r['search']:.2f} "
                  f"{key}_recall_at_1={r['r1']:.4f} {key}_recall_at_15={r['r15']:.4f}",
                  flush=True)  # fmt: skip
    good = {
        c: sum(r["build"] + r["search"] for r in rs)
        for c, rs in results.items()
        if all(r["r1"] >= RECALL_1 and r["r15"] >= RECALL_15 for r in rs)
    }
    best = min(good, key=good.get) if good else None
    lines["best_M"] = None if best is None else best[0]
    lines["best_ef_construction"] = None if best is None else best[1]
    default = sum(r["build"] + r["search"] for r in results[DEFAULT])
    lines["best_over_default_seconds"] = None if best is None else round(good[best] / default, 3)
    lines["load_average_end"] = round(os.getloadavg()[0], 2)
    tail = ("best_M", "best_ef_construction", "best_over_default_seconds", "load_average_end")
    print(" ".join(f"{k}={lines[k]}" for k in tail))
    return lines


if __name__ == "__main__":
    main()
