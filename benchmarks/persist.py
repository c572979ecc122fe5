"""What verification costs: save and load of a SmolLM2-sized audit, with and without digests.

A synthetic audit of SmolLM2's shape (1000 sequences of 64 tokens, one row per sequence; 30
blocks + ``final``, hidden 576; float32 store, as ``store_dtype="auto"`` picks for it; exact
indexes, as ``index="auto"`` picks for 1000 patterns; 4 UMAP layouts; 240-character texts) is
measured by hopaudit itself, then saved and loaded. Loads with ``verify=True`` (every file's
BLAKE3 checked first, format 4) and ``verify=False`` alternate round by round after one
untimed warm-up of each; each load touches every layer's activations. The files are in the page
cache (the case of loading what was just saved or recently read). Then the folder's files are
hashed with SHA-256 (formats 2 and 3) and with BLAKE3, alternated. Prints the CPU and the load
average at start and end, and::

    save_seconds=            median wall time of one save
    load_seconds=            median wall time of one load with verification (the default)
    load_noverify_seconds=   median wall time of one load without it
    load_verify_ratio=       load_seconds / load_noverify_seconds (target <= 1.2)
    sha256_over_blake3=      median time to hash the folder with SHA-256 over with BLAKE3
    audit_bytes=             bytes of the saved folder

Usage: ``python benchmarks/persist.py [--rounds 3] [--sequences 1000]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

BLOCKS = 30
HIDDEN = 576
SEQ_LEN = 64


def synthetic_audit(n_seq: int, seed: int = 0):
    """An Audit of SmolLM2's shape, measured by hopaudit on clustered random activations."""
    from hopaudit.capture import CaptureResult
    from hopaudit.capture.store import ActivationStore
    from hopaudit.layer.measuring import measure
    from hopaudit.results.audit import Audit, Embedding

    rng = np.random.default_rng(seed)
    names = [f"model.layers.{i}" for i in range(BLOCKS)] + ["final"]
    store = ActivationStore(names, dtype=np.float32)
    centers = rng.normal(size=(40, HIDDEN))
    for name in names:
        x = centers[rng.integers(0, 40, n_seq)] + 0.5 * rng.normal(size=(n_seq, HIDDEN))
        store.append(name, x.astype(np.float32))
    store.finalize()
    cap = CaptureResult(
        store=store,
        layer_names=names,
        row_sequence=np.arange(n_seq, dtype=np.int64),
        row_position=np.full(n_seq, SEQ_LEN - 1, dtype=np.int64),
        nonfinite=dict.fromkeys(names, 0),
        seq_nll=rng.uniform(1, 5, n_seq),
        seq_min_k=rng.uniform(3, 9, n_seq),
        seq_top1=rng.uniform(0, 1, n_seq),
        cross_entropy=3.0,
        n_tokens=n_seq * SEQ_LEN,
        seconds=1.0,
        tokens_per_second=n_seq * SEQ_LEN,
        loss_note=None,
    )
    reports = {n: measure(store.get(n), n_blocks=BLOCKS) for n in names}
    embeddings = {}
    for n in (names[0], names[BLOCKS // 2], names[BLOCKS - 1], "final"):
        rep = reports[n]
        embeddings[n] = Embedding(
            xy=rng.normal(size=(n_seq, 2)).astype(np.float32),
            rows=np.arange(n_seq),
            sequence=np.arange(n_seq),
            basin=np.asarray(rep.basin),
            ratio=(rep.nn / rep.r_hat).astype(np.float32),
            n_total=n_seq,
        )
    words = np.array(
        [
            "the",
            "of",
            "and",
            "to",
            "in",
            "is",
            "that",
            "for",
            "it",
            "as",
            "with",
            "was",
            "on",
            "be",
            "by",
            "this",
        ]
    )
    texts = [" ".join(rng.choice(words, 60))[:240] for _ in range(n_seq)]
    return Audit(
        model_name="synthetic-SmolLM2-shape",
        model_config={"hidden_size": HIDDEN, "num_hidden_layers": BLOCKS},
        options={"normalize": "rms", "store_dtype": "float32", "positions": "last"},
        layer_names=names,
        hidden_size=HIDDEN,
        n_blocks=BLOCKS,
        n_params_total=134_515_008,
        n_params_blocks=106_168_320,
        texts=texts,
        n_tokens=n_seq * SEQ_LEN,
        capture=cap,
        reports=reports,
        embeddings=embeddings,
    )


def _load(path: Path, verify: bool) -> float:
    import hopaudit

    t0 = time.perf_counter()
    a = hopaudit.load(path, verify=verify)
    for name in a.layer_names:
        float(np.asarray(a.activations(name)).sum())
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sequences", type=int, default=1000)
    args = parser.parse_args()

    from hopaudit.model.precision import cpu_lines
    from hopaudit.storage.manifest import hash_all

    print(*cpu_lines(), sep="\n")  # which machine the lines come from
    print(f"loadavg_start={os.getloadavg()[0]:.2f}", flush=True)
    audit = synthetic_audit(args.sequences)
    work = Path(tempfile.mkdtemp(prefix="hopaudit-persist-"))
    try:
        saves = []
        for i in range(args.rounds):
            t0 = time.perf_counter()
            audit.save(work / f"a{i}")
            saves.append(time.perf_counter() - t0)
        path = work / "a0"
        audit_bytes = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        _load(path, True), _load(path, False)  # warm-up: imports, page cache
        verified, plain = [], []
        for i in range(args.rounds):
            order = (True, False) if i % 2 == 0 else (False, True)
            for verify in order:
                (verified if verify else plain).append(_load(path, verify))
        files = sorted(p for p in path.rglob("*") if p.is_file())
        hashes: dict[str, list[float]] = {"sha256": [], "blake3": []}
        for i in range(args.rounds):
            for algorithm in ("sha256", "blake3") if i % 2 == 0 else ("blake3", "sha256"):
                t0 = time.perf_counter()
                hash_all(files, algorithm)
                hashes[algorithm].append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_v, load_p = float(np.median(verified)), float(np.median(plain))
    print(f"save_seconds={np.median(saves):.3f}")
    print(f"load_seconds={load_v:.3f}")
    print(f"load_noverify_seconds={load_p:.3f}")
    print(f"load_verify_ratio={load_v / load_p:.3f}")
    print(f"sha256_over_blake3={np.median(hashes['sha256']) / np.median(hashes['blake3']):.3f}")
    print(f"audit_bytes={audit_bytes}")
    print(f"loadavg_end={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
