"""What a clustered search leaves resident, and what it costs, with bfloat16 and float32 tiles.

The clustered search (``hopaudit/search/clustered.py``) multiplies each list's queries with its
patterns: a product of a different shape for every list. In bfloat16 on a CPU those products are
oneDNN's, which keeps a primitive (and memory) per shape; in float32 they are the BLAS's. Each
tile kind runs in a fresh process: a Gaussian mixture of ``--n`` patterns (576-d) is indexed and
searched (``ClusteredIndex(tiles=...)`` + ``knn_self(k=15)``) ``--layers`` times, as an
audit measures layers one after another; after each, everything is deleted, collected and the
heap trimmed, and ``RssAnon`` read. Prints the CPU and load average, and per tile kind::

    retained_anon_mb_<tiles>=        RssAnon above the start (numpy and torch imported) after
                                     the last search, all freed
    retained_over_one_layer_<tiles>= the same over one layer's float32 patterns
    seconds_<tiles>=                 the searches' seconds (the first one's warm-up included)

and ``float32_over_bfloat16_seconds=``. Usage: ``python benchmarks/tiles_memory.py [--n 25600]
[--layers 3]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))


def rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(tiles: str, n: int, layers: int) -> None:
    import numpy as np
    import torch  # noqa: F401  (imported before the start: the search imports it lazily)

    import hopaudit.search.clustered as clustered
    from hopaudit.heap import release_freed_memory
    from hopaudit.search import knn_self

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, 576)) * 3
    x = (centres[rng.integers(0, 200, n)] + rng.standard_normal((n, 576))).astype(np.float32)
    gc.collect()
    release_freed_memory()
    base = rss_anon_mb()
    t0 = time.perf_counter()
    for _ in range(layers):
        index = clustered.ClusteredIndex(576, tiles=tiles)
        index.add(x)
        ids, dists = knn_self(index, x, 15)
        del index, ids, dists
        gc.collect()
        release_freed_memory()
    seconds = time.perf_counter() - t0
    print(json.dumps({"retained": rss_anon_mb() - base, "seconds": seconds}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=25600)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.n, args.layers)
        return
    from hopaudit.model.precision import cpu_lines

    print(*cpu_lines(), sep="\n")  # which machine the lines come from
    print(f"loadavg_start={os.getloadavg()[0]:.2f}", flush=True)
    one = args.n * 576 * 4 / 2**20
    got = {}
    for tiles in ("bfloat16", "float32"):
        cmd = [sys.executable, __file__, "--child", tiles, "--n", str(args.n)]
        cmd += ["--layers", str(args.layers)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        got[tiles] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"retained_anon_mb_{tiles}={got[tiles]['retained']:.1f}")
        print(f"retained_over_one_layer_{tiles}={got[tiles]['retained'] / one:.2f}")
        print(f"seconds_{tiles}={got[tiles]['seconds']:.2f}", flush=True)
    ratio = got["float32"]["seconds"] / got["bfloat16"]["seconds"]
    print(f"float32_over_bfloat16_seconds={ratio:.3f}")
    print(f"loadavg_end={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
