"""What the HNSW file check costs: ``check_hnsw_file`` against hnswlib reading the same file and
against rebuilding the index from its patterns (the other way to never hand hnswlib a crafted
file). 20 000 random 576-d float32 patterns (SmolLM2's width), M=16, saved once; the check and
hnswlib's read alternate for ``--rounds`` rounds (page cache warm), the best of each kept.
Prints::

    cpu=                    native bfloat16 or AVX2-only (hopaudit.model.precision.native_bf16)
    hnsw_file_bytes=        the index file's size
    check_seconds=          one check_hnsw_file (reads and checks the whole file)
    hnswlib_read_seconds=   one hnswlib load_index of the same file
    rebuild_seconds=        one build of the index from the patterns
    check_over_read=        check_seconds / hnswlib_read_seconds
    check_over_rebuild=     check_seconds / rebuild_seconds

Usage: ``python benchmarks/hnsw_check.py [--rounds 5] [--n 20000]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import hnswlib
import numpy as np
import torch

from hopaudit.model.precision import native_bf16
from hopaudit.search.backends import build_index, save_index
from hopaudit.search.hnsw_file import check_hnsw_file


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    dim = 576
    x = np.random.default_rng(0).normal(size=(args.n, dim)).astype(np.float32)
    t = time.perf_counter()
    index = build_index(x, "hnsw")
    rebuild = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "layer.bin"
        save_index(index, path)
        check, read = [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            check_hnsw_file(path, dim=dim, m=16, count=args.n)
            check.append(time.perf_counter() - t)
            t = time.perf_counter()
            h = hnswlib.Index(space="l2", dim=dim)
            h.load_index(str(path), max_elements=args.n)
            read.append(time.perf_counter() - t)
            del h
        size = path.stat().st_size
    cpu = "native bfloat16" if native_bf16(torch.device("cpu")) else "AVX2-only"
    print(f"cpu={cpu}")
    print(f"hnsw_file_bytes={size}")
    print(f"check_seconds={min(check):.4f}")
    print(f"hnswlib_read_seconds={min(read):.4f}")
    print(f"rebuild_seconds={rebuild:.3f}")
    print(f"check_over_read={min(check) / min(read):.3f}")
    print(f"check_over_rebuild={min(check) / rebuild:.4f}")


if __name__ == "__main__":
    main()
