"""SmolLM2's load: transformers converting the GGUF file against reading hopaudit's converted
copy (hopaudit/zoo/converted.py), side by side in one run.

Each load runs in a fresh process (so neither finds the other's modules imported), the two
alternating round by round; each process times ``zoo.smollm2()`` (the copy, which must exist:
the script makes it first) or the GGUF conversion hopaudit ran before the copy, from after
``import torch`` to the model in hand. Prints the CPU, the load average at start and end, and::

    load_gguf_seconds=      median seconds, the GGUF file converted by transformers
    load_copy_seconds=      median seconds, the float32 copy checked (BLAKE3) and read
    load_speedup=           gguf / copy: median of each round's ratio
    copy_mb=                the copy's size on disk

Usage: ``python benchmarks/load.py [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

CHILD = """
import time, torch
from hopaudit.zoo import models as zoo
t = time.perf_counter()
if {gguf}:
    zoo._load_gguf(zoo.smollm2_path(), torch.float32)
else:
    zoo.smollm2()
print(time.perf_counter() - t)
"""


def _timed(gguf: bool) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(gguf=gguf)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(_HERE.parent)},
    )
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, object]:
    from hopaudit.model.precision import cpu_description
    from hopaudit.zoo import models as zoo
    from hopaudit.zoo.converted import converted_folder

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    lines: dict[str, object] = {}
    cpu = cpu_description()
    lines.update({k: v for k, v in cpu.items() if not isinstance(v, (list, dict))})
    lines["load_average_start"] = round(os.getloadavg()[0], 2)
    zoo.smollm2()  # the copy exists from here on
    folder = converted_folder(zoo.smollm2_path(), zoo.SMOLLM2.sha256)
    times: dict[bool, list[float]] = {True: [], False: []}
    ratios = []
    for r in range(args.rounds):
        seconds = {}
        for gguf in (True, False) if r % 2 == 0 else (False, True):
            seconds[gguf] = _timed(gguf)
            times[gguf].append(seconds[gguf])
        ratios.append(seconds[True] / seconds[False])
    lines["load_gguf_seconds"] = round(statistics.median(times[True]), 3)
    lines["load_copy_seconds"] = round(statistics.median(times[False]), 3)
    lines["load_speedup"] = round(statistics.median(ratios), 2)
    lines["copy_mb"] = round(sum(p.stat().st_size for p in folder.iterdir()) / 1e6, 1)
    lines["load_average_end"] = round(os.getloadavg()[0], 2)
    print(" ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in lines.items()))
    return lines


if __name__ == "__main__":
    main()
