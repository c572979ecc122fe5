"""SmolLM2's forward, as the capture runs it, with glibc's heap as it comes against kept
(hopaudit/heap.py ``kept_heap``), and as a pass leaves it, each in a fresh process, alternated.

    python benchmarks/heap.py [--rounds 3] [--sequences 336] [--batch 21]

Both run the same pydoc batches of 64 tokens under the capture's numerics (bfloat16 autocast
with the weights cast once where the CPU multiplies bfloat16 natively, float32 otherwise),
after one warm-up batch; ``kept`` calls the keeper after every batch as the capture does;
``after`` runs where a pass leaves glibc (one ``kept_heap`` entered and left first: the
thresholds at 32 MiB and 64 MiB), as a user's own code after an audit would. A fresh process
each time, since glibc's thresholds, once set, stay set for the process. Prints the CPU, then::

    seconds_<default|kept|after>=  median wall seconds of the batches over rounds
    faults_per_batch_<...>=        minor page faults per batch (median)
    peak_rss_mb_<...>=             the process's peak resident set (median)
    trims_kept=                    the keeper's trims over the batches (first round)
    kept_heap_speedup=             seconds_default / seconds_kept (above 1: the kept heap is
                                   faster)
    after_pass_speedup=            seconds_default / seconds_after
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))


def worker(kind: str, n_seq: int, batch: int) -> dict:
    import contextlib

    import torch

    import hopaudit
    from hopaudit.data import prepare_data
    from hopaudit.heap import kept_heap
    from hopaudit.model.precision import autocast_context, cast_weights_once, compute_dtype

    model, tok = hopaudit.zoo.smollm2()
    model.eval()
    data = prepare_data(hopaudit.zoo.corpus("pydoc"), tok, max_length=64, max_sequences=n_seq)
    device = torch.device("cpu")
    amp = compute_dtype(model, device, "auto")
    if kind == "after":
        with kept_heap():
            pass
    heap = kept_heap() if kind == "kept" else contextlib.nullcontext()
    with (
        torch.inference_mode(),
        autocast_context(amp, device),
        cast_weights_once(model, amp),
        heap as keeper,
    ):
        model(input_ids=data.input_ids[:batch], use_cache=False)  # warm-up
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        for s in range(0, data.num_sequences, batch):
            out = model(
                input_ids=data.input_ids[s : s + batch],
                attention_mask=data.attention_mask[s : s + batch],
                use_cache=False,
            )
            del out
            if keeper is not None:
                keeper.batch_done()
        wall = time.perf_counter() - t
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    n_batches = -(-data.num_sequences // batch)
    return {
        "seconds": wall,
        "faults_per_batch": faults / n_batches,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trims": None if keeper is None else keeper.trims,
        "dtype": str(amp),
    }


def _run(kind: str, n_seq: int, batch: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--sequences", str(n_seq),
         "--batch", str(batch)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    """Run the comparison; returns the lines printed as a dict."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sequences", type=int, default=336)
    ap.add_argument("--batch", type=int, default=21)
    ap.add_argument("--worker", choices=["default", "kept", "after"])
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.sequences, args.batch)))
        return {}
    from hopaudit.model.precision import cpu_lines

    print(*cpu_lines(), sep="\n")  # which machine the lines come from
    print(f"load_average_start={os.getloadavg()[0]:.2f}", flush=True)
    kinds = ["default", "kept", "after"]
    got: dict[str, list[dict]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds[r % 3 :] + kinds[: r % 3]:
            got[kind].append(_run(kind, args.sequences, args.batch))
        print(f"# round {r}: " + ", ".join(
            f"{k} {v[-1]['seconds']:.2f} s" for k, v in got.items()), flush=True)  # fmt: skip
    print(f"compute_dtype={got['kept'][0]['dtype']}")
    lines: dict = {}
    for kind, runs in got.items():
        for key in ("seconds", "faults_per_batch", "peak_rss_mb"):
            lines[f"{key}_{kind}"] = statistics.median(x[key] for x in runs)
    lines["trims_kept"] = got["kept"][0]["trims"]
    lines["kept_heap_speedup"] = lines["seconds_default"] / lines["seconds_kept"]
    lines["after_pass_speedup"] = lines["seconds_default"] / lines["seconds_after"]
    for key, value in lines.items():
        print(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}")
    print(f"load_average_end={os.getloadavg()[0]:.2f}")
    return lines


if __name__ == "__main__":
    main()
