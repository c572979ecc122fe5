"""HNSW build and search with hnswlib's graph on huge pages against without
(hopaudit/search/hugepages.py).

    python benchmarks/hugepages.py              # 2e5 patterns of width 576, 2 rounds
    python benchmarks/hugepages.py --n 1e6 --rounds 1

Each round runs both in fresh processes, one after the other, the order swapped every round,
on the same synthetic activation-like patterns as benchmarks/scale.py (same seed), through
``build_index(kind="hnsw")`` and ``knn_self`` as ``measure`` calls them. Prints
``seconds_build_<on|off>=``, ``seconds_search_<on|off>=`` (the mean over rounds), and
``hugepages_build_speedup=``, ``hugepages_search_speedup=`` (off / on), and whether the same
neighbours came back (``same_neighbours=``: the first round's, with one thread, on 5 000 rows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

WIDTH, RANK, K = 576, 32, 15


def patterns(n: int, seed: int = 0) -> np.ndarray:
    """scale.py's layers: a rank-32 signal plus noise, float16 as the store keeps them."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(RANK, WIDTH)).astype(np.float32)
    out = np.empty((n, WIDTH), np.float16)
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        z = rng.normal(size=(m, RANK)).astype(np.float32)
        out[start : start + m] = z @ basis + 0.5 * rng.normal(size=(m, WIDTH)).astype(np.float32)
    return out


def child(n: int, enabled: bool) -> dict:
    from hopaudit.geometry import normalize_rows
    from hopaudit.search import build_index, hugepages, knn_self

    hugepages.ENABLED = enabled
    x = normalize_rows(patterns(n), "rms")
    t = time.perf_counter()
    index = build_index(x, "hnsw")
    build = time.perf_counter() - t
    t = time.perf_counter()
    knn_self(index, x, K)
    search = time.perf_counter() - t
    # one thread: a deterministic graph, so the two settings must agree exactly
    hugepages.MIN_BYTES = 1 << 20  # the small index is advised too, when enabled
    small = build_index(x[:5000], "hnsw", threads=1)
    ids = knn_self(small, x[:5000], K)[0]
    return {"build": build, "search": search, "ids": ids[:200].tolist()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=float, default=2e5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    n = int(args.n)
    if args.child:
        print(json.dumps(child(n, args.child == "on")))
        return 0
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    for r in range(args.rounds):
        for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
            out = subprocess.run(
                [sys.executable, __file__, "--n", str(n), "--child", mode],
                capture_output=True, text=True, check=False,
                env={**os.environ, "TQDM_DISABLE": "1"},
            )  # fmt: skip
            if out.returncode:
                sys.stderr.write(out.stderr)
                return 2
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    mean = {m: {s: float(np.mean([x[s] for x in runs[m]])) for s in ("build", "search")}
            for m in runs}  # fmt: skip
    for mode in ("on", "off"):
        for stage in ("build", "search"):
            print(f"seconds_{stage}_{mode}={mean[mode][stage]:.4g}")
    for stage in ("build", "search"):
        print(f"hugepages_{stage}_speedup={mean['off'][stage] / mean['on'][stage]:.4g}")
    print(f"same_neighbours={runs['on'][0]['ids'] == runs['off'][0]['ids']}")
    print(f"# n={n} width={WIDTH}, {args.rounds} rounds, order swapped each round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
