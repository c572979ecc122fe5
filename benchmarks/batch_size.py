"""The capture's speed by batch size on SmolLM2: the sizes the logits budget gives side by side.

``capture()`` of ``--sequences`` pydoc sequences of 64 tokens (``positions="last"``, the
audit's numerics: bfloat16 autocast where the CPU multiplies bfloat16 natively) at each of
``--batches`` sequences a batch (default 42: the 512 MiB cap's; 21: the 256 MiB floor's; 5: a
64 MiB floor's), the order reversed every other round, after one warm-up. Prints the CPU, the
load average at start and end, each size's seconds per round and ``ratio_<b>_over_<first>=``
(median seconds over the first size's).

Usage: ``python benchmarks/batch_size.py [--sequences 210] [--batches 42 21 5] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))


def main(argv: list[str] | None = None) -> dict[str, object]:
    import hopaudit
    from hopaudit.capture.forward import capture
    from hopaudit.data import prepare_data
    from hopaudit.model.blocks import find_stacks
    from hopaudit.model.precision import cpu_description

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sequences", type=int, default=210)
    parser.add_argument("--batches", type=int, nargs="+", default=[42, 21, 5])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    lines: dict[str, object] = {}
    lines.update({k: v for k, v in cpu_description().items() if not isinstance(v, (list, dict))})
    lines["load_average_start"] = round(os.getloadavg()[0], 2)
    model, tok = hopaudit.zoo.smollm2()
    data = prepare_data(
        hopaudit.zoo.corpus("pydoc"), tok, max_length=64, max_sequences=args.sequences
    )
    stacks = find_stacks(model)

    def run(batch: int) -> float:
        t = time.perf_counter()
        capture(model, data, stacks, progress=False, autocast="auto", batch_size=batch)
        return time.perf_counter() - t

    run(args.batches[0])  # warm-up
    times: dict[int, list[float]] = {b: [] for b in args.batches}
    for r in range(args.rounds):
        for b in args.batches if r % 2 == 0 else args.batches[::-1]:
            times[b].append(run(b))
    first = args.batches[0]
    for b, values in times.items():
        lines[f"seconds_batch_{b}"] = ",".join(f"{v:.2f}" for v in values)
    for b in args.batches[1:]:
        ratio = statistics.median(times[b]) / statistics.median(times[first])
        lines[f"ratio_{b}_over_{first}"] = round(ratio, 3)
    lines["load_average_end"] = round(os.getloadavg()[0], 2)
    print(" ".join(f"{k}={v}" for k, v in lines.items()))
    return lines


if __name__ == "__main__":
    main()
