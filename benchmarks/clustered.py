"""The three searches side by side on real activations and on synthetic ones: seconds and recall.

For each size, ``build_index`` + ``knn_self(k=15)`` as ``measure`` runs them, with exact search
(the ground truth, and the default below ``search.AUTO_EXACT_MAX``), the clustered search
(the default above) and HNSW (M 16, ef_construction 100), on:

- ``real``: SmolLM2's ``final`` rows (rms-normalized, as ``measure`` normalizes) at every
  position of CPython's standard-library source, SmolLM2 cut after block 0 (the data of
  ``benchmarks/scale.py --all-tokens``);
- ``synthetic``: the Gaussian mixture of benchmarks/hnsw_params.py (anisotropic clusters, hard
  for both approximate searches).

Prints ``seconds_<kind>_<data>_<n>=``, ``recall_at_1_<kind>_<data>_<n>=`` and
``recall_at_15_<kind>_<data>_<n>=`` (against exact, over every pattern, by distance),
``probes_clustered_<data>_<n>=`` (the count the clustered search measured and chose),
``clustered_over_hnsw_<data>_<n>=`` and ``exact_over_clustered_<data>_<n>=`` (time ratios), and
``exact_clustered_crossover_<data>=`` (log-log interpolated size where exact and clustered cost
the same; ``none`` when one was faster at every size). Each kind runs in this process in turn,
in the order exact, clustered, hnsw, after a warm-up.

``--blocks ROUNDS`` instead times the clustered search's ``knn_self`` with its queries a block
at a time (``ClusteredIndex.query_block``, as committed) against all in one block,
alternated over ``ROUNDS`` rounds on one index each: ``seconds_blocks_<data>_<n>=`` and
``seconds_one_block_<data>_<n>=`` (each the median), ``blocks_over_one_block_<data>_<n>=``,
``query_blocks_<data>_<n>=`` and ``blocks_mismatched_ids_<data>_<n>=`` (ids that differ).

    python benchmarks/clustered.py --sizes 20000 50000 100000
    python benchmarks/clustered.py --blocks 5 --sizes 25600 100000
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

K = 15


def sibling(name: str):
    """Another script of benchmarks/ as a module (they each keep benchmarks/ off sys.path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", _HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def say(name: str, value: object) -> None:
    print(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}", flush=True)


def real_rows(n: int) -> np.ndarray:
    """SmolLM2 (cut after block 0) ``final`` rows at every position of stdlib source."""
    import hopaudit
    from hopaudit.data import prepare_data

    model, tok = hopaudit.zoo.smollm2()
    model.model.layers = model.model.layers[:1]
    model.config.num_hidden_layers = 1
    text = sibling("scale").stdlib_source(8 * n)
    data = prepare_data(text, tok, max_length=256, max_sequences=-(-n // 256))
    return sibling("hnsw_params").final_rows(model, data, n)


def timed(x: np.ndarray, kind: str):
    from hopaudit.search.backends import build_index, keeps_rows, knn_self

    t = time.perf_counter()
    index = build_index(x, kind)
    _, d = knn_self(index, None if keeps_rows(index) else x, K)
    return time.perf_counter() - t, d, index


def blocks(x: np.ndarray, data: str, rounds: int) -> None:
    """The clustered search's query blocks against one block, alternated on one index."""
    import statistics

    from hopaudit.search import clustered
    from hopaudit.search.backends import build_index, knn_self

    committed = clustered._SEARCH_PAIRS
    index = build_index(x.copy(), "clustered")
    knn_self(index, None, K)  # the probe count chosen, once
    seconds: dict[int, list[float]] = {committed: [], 1 << 62: []}
    found = {}
    for _ in range(rounds):
        for pairs in seconds:
            clustered._SEARCH_PAIRS = pairs
            t = time.perf_counter()
            found[pairs] = knn_self(index, None, K)[0]
            seconds[pairs].append(time.perf_counter() - t)
    clustered._SEARCH_PAIRS = committed
    n = len(x)
    mid = {p: statistics.median(v) for p, v in seconds.items()}
    say(f"probes_clustered_{data}_{n}", index.probes)
    say(f"query_blocks_{data}_{n}", -(-n // index.query_block(index.probes)))
    say(f"seconds_blocks_{data}_{n}", mid[committed])
    say(f"seconds_one_block_{data}_{n}", mid[1 << 62])
    say(f"blocks_over_one_block_{data}_{n}", mid[committed] / mid[1 << 62])
    say(f"blocks_mismatched_ids_{data}_{n}", int((found[committed] != found[1 << 62]).sum()))


def crossover(sizes: list[int], ratios: list[float]) -> str:
    """Where exact / clustered crosses 1, log-log interpolated between measured sizes."""
    points = list(zip(sizes, ratios, strict=True))
    for (n0, r0), (n1, r1) in itertools.pairwise(points):
        if (r0 - 1) * (r1 - 1) <= 0 and r0 != r1:
            f = math.log(r0) / (math.log(r0) - math.log(r1))
            return f"{math.exp(math.log(n0) + f * (math.log(n1) - math.log(n0))):.0f}"
    return "none"


def main(argv: list[str] | None = None) -> None:
    from hopaudit.geometry import normalize_rows
    from hopaudit.search.clustered import recall_by_distance

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[20000, 50000, 100000])
    p.add_argument("--data", nargs="+", default=["real", "synthetic"])
    p.add_argument("--blocks", type=int, metavar="ROUNDS", help="query blocks against one block")
    args = p.parse_args(argv)
    from hopaudit.model.precision import cpu_lines

    print(*cpu_lines(), sep="\n")  # which machine the lines come from
    print(f"loadavg_start={os.getloadavg()[0]:.2f}", flush=True)
    biggest = max(args.sizes)
    timed(np.random.default_rng(0).normal(size=(2000, 576)).astype(np.float32), "clustered")
    for data in args.data:
        raw = real_rows(biggest) if data == "real" else sibling("hnsw_params").synthetic(biggest)
        if args.blocks:
            for n in args.sizes:
                blocks(normalize_rows(np.asarray(raw[:n], np.float32), "rms"), data, args.blocks)
            continue
        ratios = []
        for n in args.sizes:
            x = normalize_rows(np.asarray(raw[:n], np.float32), "rms")
            seconds, true, _ = timed(x, "exact")
            say(f"seconds_exact_{data}_{n}", seconds)
            found = {"exact": seconds}
            for kind in ("clustered", "hnsw"):
                seconds, d, index = timed(x, kind)
                found[kind] = seconds
                r1, rk = recall_by_distance(d, true)
                say(f"seconds_{kind}_{data}_{n}", seconds)
                say(f"recall_at_1_{kind}_{data}_{n}", r1)
                say(f"recall_at_15_{kind}_{data}_{n}", rk)
                if kind == "clustered":
                    say(f"probes_clustered_{data}_{n}", index.probes)
                    say(f"lists_clustered_{data}_{n}", index.lists)
            say(f"clustered_over_hnsw_{data}_{n}", found["clustered"] / found["hnsw"])
            ratios.append(found["exact"] / found["clustered"])
            say(f"exact_over_clustered_{data}_{n}", ratios[-1])
        say(f"exact_clustered_crossover_{data}", crossover(args.sizes, ratios))
    print(f"loadavg_end={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
