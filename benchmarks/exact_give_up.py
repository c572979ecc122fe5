"""Exact search that gives up its bfloat16 tiles when most queries are scored twice, side by side.

An exact index with bfloat16 tiles certifies each query's candidates and scores the uncertified
ones again with float32 tiles, and those in float64 (search/exact.py). Where neighbours are
closer than bfloat16 products resolve, most queries are scored twice; past ``GIVE_UP`` of the
first ``TRIAL_QUERIES`` the search goes on with float32 tiles alone. For each kind of data
(``--n`` rows of width 768, each row at unit RMS as the audit normalizes them): ``gaussian``
(no structure: the neighbours' distances crowd together), ``clustered`` (200 centres) and, with
``--kinds real``, ``real`` (SmolLM2's rows of benchmarks/clustered.py, width 576, at unit RMS),
the self-search of every row with k = 15 is timed, alternated round by round, with float32 tiles,
with bfloat16 tiles as shipped, and with bfloat16 tiles never given up. Prints the CPU, the
load average at start and end, and::

    seconds_<variant>_<kind>=        the best round
    uncertified_<kind>=              the share of queries the bfloat16 tiles left uncertified,
                                     never given up
    uncertified_float32_<kind>=      the share the float32 tiles left uncertified (float32
                                     variant; each scored again in float64)
    give_up_speedup_<kind>=          never given up over as shipped
    bf16_speedup_<kind>=             float32 tiles over bfloat16 as shipped
    same_distances_<kind>=           the three variants found the same distances

Usage: ``python benchmarks/exact_give_up.py [--n 20000] [--rounds 2] [--kinds gaussian
clustered real]``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402

DIM = 768
K = 15


def data(kind: str, n: int, seed: int = 0) -> np.ndarray:
    if kind == "real":
        x = sibling("clustered").real_rows(n).astype(np.float32)
        return x * np.float32(math.sqrt(x.shape[1])) / np.linalg.norm(x, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    if kind == "clustered":
        centres = rng.standard_normal((200, DIM), dtype=np.float32) * 3
        x = x * 0.5 + centres[rng.integers(0, 200, n)]
    return x * np.float32(math.sqrt(DIM)) / np.linalg.norm(x, axis=1, keepdims=True)


def sibling(name: str):
    """Another script of benchmarks/ as a module (they each keep benchmarks/ off sys.path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", _HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def search(x: np.ndarray, variant: str) -> tuple[float, np.ndarray, int]:
    """Seconds, distances and uncertified queries of one self-search (of the first tier)."""
    from hopaudit.search import exact

    give_up = exact.GIVE_UP
    if variant == "never_given_up":
        exact.GIVE_UP = math.inf
    try:
        tiles = "float32" if variant == "float32" else "bfloat16"
        index = exact.ExactIndex(x.shape[1], tiles=tiles)
        index.add(x)
        t = time.perf_counter()
        _, dists = index.query_stored(K + 1)
        return time.perf_counter() - t, dists, index.uncertified[index.tiles]
    finally:
        exact.GIVE_UP = give_up


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--kinds", nargs="+", default=["gaussian", "clustered"])
    args = ap.parse_args(argv)
    from hopaudit.model.precision import cpu_lines

    print(*cpu_lines(), sep="\n")  # which machine the lines come from
    print(f"load_average_start={os.getloadavg()[0]:.2f}")
    variants = ("float32", "shipped", "never_given_up")
    for kind in args.kinds:
        x = data(kind, args.n)
        best = dict.fromkeys(variants, math.inf)
        dists, uncertified = {}, {}
        for r in range(args.rounds):
            for v in variants[r % 3 :] + variants[: r % 3]:  # the order rotates
                seconds, dists[v], u = search(x, v)
                best[v] = min(best[v], seconds)
                uncertified[v] = u
        for v in variants:
            print(f"seconds_{v}_{kind}={best[v]:.3g}")  # a tiny test run takes milliseconds
        print(f"uncertified_{kind}={uncertified['never_given_up'] / args.n:.3f}")
        print(f"uncertified_float32_{kind}={uncertified['float32'] / args.n:.3f}")
        print(f"give_up_speedup_{kind}={best['never_given_up'] / best['shipped']:.3f}")
        print(f"bf16_speedup_{kind}={best['float32'] / best['shipped']:.3f}")
        same = all(np.allclose(dists[v], dists["float32"], rtol=1e-5, atol=1e-5) for v in variants)
        print(f"same_distances_{kind}={same}", flush=True)
    print(f"load_average_end={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
