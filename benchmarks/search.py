"""hopaudit's search against raw hnswlib and against exact brute force, side by side.

For each size, on clustered synthetic float16 data of dimension 576 stored as a memmap (like an
activation store), in one run and alternated round by round:

- hopaudit's HNSW path: ``build_index(data, "hnsw")`` + ``knn_self(index, data, k)``;
- raw hnswlib doing the same work with the same parameters: cast to float32, build (space l2,
  same M, ef_construction, threads, seed), ``knn_query`` with k + 1 at the same ef;
- hopaudit's exact backend (the ground truth for recall@1). Past ``--exact-full`` patterns the
  exact search runs on a random sample of queries and its time is scaled by n / sample (its
  cost is linear in the number of queries); the line says so.

Prints ``name=value`` lines: ``hnsw_overhead_ratio_<n>`` (best hopaudit time / best raw time;
target <= 1.10; ``hnsw_overhead_cpu_ratio_<n>`` the same in CPU seconds, steadier on a
shared machine), ``exact_vs_hnsw_speedup_<n>`` (exact time / hopaudit HNSW time) and
``recall_at_1_<n>`` (hopaudit HNSW against exact, by distance).

``exact_bf16_speedup_<n>`` is the exact search with float32 tiles over bfloat16 ones
(alternated, medians; ``exact_bf16_same_distances_<n>`` that both found the same distances),
``exact_hnsw_crossover`` the size where exact (float32 tiles) and HNSW cost the same (log-log
interpolated; ``search.AUTO_EXACT_MAX`` is set from it), ``exact_hnsw_crossover_bf16`` the same
with bfloat16 tiles (``none``: exact was faster, or slower, at every size).

    python benchmarks/search.py --sizes 20000 50000 100000   # the crossover
    python benchmarks/search.py --sizes 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import hnswlib
import numpy as np

from hopaudit.search import DEFAULT_EF, build_index, default_threads, knn_self

DIM = 576
K = 15
M = 16
EF_CONSTRUCTION = 200


def clustered_store(path: Path, n: int, dim: int = DIM, seed: int = 0) -> np.memmap:
    """Float16 memmap of a Gaussian mixture with anisotropic (low-rank plus noise) clusters."""
    rng = np.random.default_rng(seed)
    n_centres = max(50, n // 100)
    centres = rng.normal(size=(n_centres, dim)).astype(np.float32) * 2.0
    basis = rng.normal(size=(32, dim)).astype(np.float32) / np.sqrt(32)
    scales = np.linspace(2.0, 0.2, 32, dtype=np.float32)
    mm = np.memmap(path, dtype=np.float16, mode="w+", shape=(n, dim))
    for start in range(0, n, 10000):
        m = min(10000, n - start)
        lab = rng.integers(0, n_centres, m)
        z = rng.normal(size=(m, 32)).astype(np.float32) * scales
        noise = 0.3 * rng.normal(size=(m, dim)).astype(np.float32)
        mm[start : start + m] = centres[lab] + z @ basis + noise
    mm.flush()
    return np.memmap(path, dtype=np.float16, mode="r", shape=(n, dim))


def run_hopaudit(data: np.ndarray, threads: int):
    c = time.process_time()
    t = time.perf_counter()
    index = build_index(data, "hnsw", M=M, ef_construction=EF_CONSTRUCTION, threads=threads)
    ids, dists = knn_self(index, data, K)
    return time.perf_counter() - t, time.process_time() - c, ids, dists


def run_raw(data: np.ndarray, threads: int):
    c = time.process_time()
    t = time.perf_counter()
    x = np.asarray(data, dtype=np.float32)
    index = hnswlib.Index(space="l2", dim=x.shape[1])
    index.init_index(max_elements=len(x), M=M, ef_construction=EF_CONSTRUCTION, random_seed=100)
    index.set_num_threads(threads)
    index.add_items(x, np.arange(len(x)), num_threads=threads)
    index.set_ef(max(DEFAULT_EF, K + 1))
    labels, sq = index.knn_query(x, k=K + 1, num_threads=threads)
    return time.perf_counter() - t, time.process_time() - c, labels, sq


def run_exact(data: np.ndarray, sample: np.ndarray | None, tiles: str = "float32"):
    """Exact kNN of all patterns, or of a sample (time scaled by n / len(sample))."""
    from hopaudit.search.backends import ExactIndex

    n = len(data)
    t = time.perf_counter()
    index = ExactIndex(data.shape[1], tiles=tiles)
    index.add(data)
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    if sample is None:
        ids, dists = knn_self(index, data, 1)
        scale = 1.0
    else:
        ids2, d2 = index.query(np.asarray(data[sample]), 2)
        own = ids2[:, 0] == sample  # self first unless a duplicate ties at distance 0
        ids = np.where(own, ids2[:, 1], ids2[:, 0])[:, None]
        dists = np.where(own, d2[:, 1], d2[:, 0])[:, None]
        scale = n / len(sample)
    return t_build + (time.perf_counter() - t) * scale, ids[:, 0], dists[:, 0]


def bench(
    n: int, rounds: int, threads: int, exact_full: int, exact_sample: int, workdir: Path
) -> float:
    data = clustered_store(workdir / f"store_{n}.f16", n)
    hop_times, raw_times, hop_cpu, raw_cpu = [], [], [], []
    hop_ids = hop_d = None
    for r in range(rounds):
        order = ("hop", "raw") if r % 2 == 0 else ("raw", "hop")
        for which in order:
            if which == "hop":
                seconds, cpu, hop_ids, hop_d = run_hopaudit(data, threads)
                hop_times.append(seconds)
                hop_cpu.append(cpu)
            else:
                seconds, cpu, _, _ = run_raw(data, threads)
                raw_times.append(seconds)
                raw_cpu.append(cpu)
            print(f"# n={n} round={r} {which}: {seconds:.2f} s wall, {cpu:.2f} s cpu", flush=True)
    sample = None
    if n > exact_full:
        sample = np.sort(
            np.random.default_rng(1).choice(n, size=min(exact_sample, n), replace=False)
        )
    # float32 and bfloat16 tiles side by side, alternated; the median of each
    f32, b16 = [], []
    for r in range(max(rounds, 1)):
        for tiles in ("float32", "bfloat16") if r % 2 == 0 else ("bfloat16", "float32"):
            seconds, ids_t, d_t = run_exact(data, sample, tiles)
            (f32 if tiles == "float32" else b16).append(seconds)
            if tiles == "float32":
                exact_s, ex_ids, ex_d = seconds, ids_t, d_t
            else:
                same_bf16 = bool(np.allclose(d_t, ex_d, rtol=1e-5, atol=1e-6))
        print(f"# n={n} round={r} exact float32 {f32[-1]:.2f} s, bfloat16 {b16[-1]:.2f} s")
    exact_s = float(np.median(f32))
    rows = np.arange(n) if sample is None else sample
    recall = float(np.mean(hop_d[rows, 0] <= ex_d * (1 + 1e-5) + 1e-6))
    recall_id = float(np.mean(hop_ids[rows, 0] == ex_ids))
    hop, raw = min(hop_times), min(raw_times)
    note = "" if sample is None else f" (exact timed on {len(sample)} queries, scaled to {n})"
    print(f"# n={n} dim={DIM} threads={threads} rounds={rounds}{note}")
    print(f"hopaudit_hnsw_seconds_{n}={hop:.3f}")
    print(f"raw_hnswlib_seconds_{n}={raw:.3f}")
    print(f"exact_seconds_{n}={exact_s:.3f}")
    print(f"hnsw_overhead_ratio_{n}={hop / raw:.3f}")
    print(f"hnsw_overhead_cpu_ratio_{n}={min(hop_cpu) / min(raw_cpu):.3f}")
    print(f"exact_vs_hnsw_speedup_{n}={exact_s / hop:.2f}")
    print(f"exact_bf16_speedup_{n}={exact_s / float(np.median(b16)):.3f}")
    print(f"exact_bf16_same_distances_{n}={same_bf16}")
    print(f"recall_at_1_{n}={recall:.4f}")
    print(f"recall_at_1_by_id_{n}={recall_id:.4f}", flush=True)
    return exact_s / hop, float(np.median(b16)) / hop


def crossover(ratios: dict[int, float]) -> float | None:
    """Patterns at which exact and HNSW cost the same, interpolating log(exact / HNSW time)
    linearly in log(n) between the two sizes around 1 (None without such a pair)."""
    sizes = sorted(ratios)
    for a, b in itertools.pairwise(sizes):
        ra, rb = np.log(ratios[a]), np.log(ratios[b])
        if ra <= 0 < rb:
            f = -ra / (rb - ra)
            return float(np.exp(np.log(a) + f * (np.log(b) - np.log(a))))
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 50000, 100000])
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds per size")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument(
        "--exact-full",
        type=int,
        default=20000,
        help="largest size searched exactly in full; above it, --exact-sample queries",
    )
    parser.add_argument("--exact-sample", type=int, default=5000)
    args = parser.parse_args()
    from hopaudit.model.precision import cpu_lines

    print(*cpu_lines(), sep="\n")  # which machine the lines come from
    print(f"loadavg_start={os.getloadavg()[0]:.2f}", flush=True)
    ratios, ratios_bf16 = {}, {}
    with tempfile.TemporaryDirectory(prefix="hopaudit-bench-") as tmp:
        for n in args.sizes:
            ratios[n], ratios_bf16[n] = bench(
                n, args.rounds, args.threads, args.exact_full, args.exact_sample, Path(tmp)
            )
    for suffix, got in (("", ratios), ("_bf16", ratios_bf16)):
        cross = crossover(got)
        print(f"exact_hnsw_crossover{suffix}={'none' if cross is None else f'{cross:.0f}'}")
    print(f"loadavg_end={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
