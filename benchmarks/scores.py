"""The per-token scores (``evidence.scores.token_statistics``: log p, top-1, Min-K%++ z over the
whole vocabulary) of this checkout against those of an earlier commit, side by side in one run.

One batch of random logits shaped like a SmolLM2 capture batch (``--batch`` x ``--length`` x
49 152, float32 and then bfloat16 as autocast returns them), both functions alternated
``--rounds`` times (the order reversed every other round), two calls a timing. Prints the CPU,
the load average at start and end and, per dtype, ``scores_seconds_<dtype>_<rev>=`` (median),
``scores_ratio_<dtype>=`` (this checkout over ``--against``) and ``same_hits_<dtype>=`` (the two
agree on every top-1 hit).

Usage: ``python benchmarks/scores.py [--against db08b42] [--rounds 7]`` (needs the git history).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))


def _earlier(rev: str):
    """``token_statistics`` as ``rev``'s hopaudit/evidence/scores.py defines it."""
    src = subprocess.run(
        ["git", "-C", str(_HERE.parent), "show", f"{rev}:hopaudit/evidence/scores.py"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    namespace: dict = {}
    exec(compile(src, f"{rev}:scores.py", "exec"), namespace)
    return namespace["token_statistics"]


def main(argv: list[str] | None = None) -> dict[str, object]:
    import torch

    from hopaudit.evidence.scores import token_statistics
    from hopaudit.model.precision import cpu_description

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", default="db08b42")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args(argv)
    lines: dict[str, object] = {}
    lines.update({k: v for k, v in cpu_description().items() if not isinstance(v, (list, dict))})
    lines["load_average_start"] = round(os.getloadavg()[0], 2)
    fs = {"head": token_statistics, args.against: _earlier(args.against)}
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        logits = (torch.randn(args.batch, args.length, 49_152, generator=gen) * 3).to(dtype)
        ids = torch.randint(0, 49_152, (args.batch, args.length), generator=gen)
        mask = torch.ones_like(ids)
        name = str(dtype).removeprefix("torch.")
        hits = [f(logits, ids, mask)[2] for f in fs.values()]
        times: dict[str, list[float]] = {k: [] for k in fs}
        for r in range(args.rounds):
            for k in list(fs) if r % 2 == 0 else list(fs)[::-1]:
                t = time.perf_counter()
                fs[k](logits, ids, mask)
                fs[k](logits, ids, mask)
                times[k].append((time.perf_counter() - t) / 2)
        median = {k: statistics.median(v) for k, v in times.items()}
        for k, v in median.items():
            lines[f"scores_seconds_{name}_{k}"] = round(v, 4)
        lines[f"scores_ratio_{name}"] = round(median["head"] / median[args.against], 3)
        lines[f"same_hits_{name}"] = bool(torch.equal(hits[0], hits[1]))
    lines["load_average_end"] = round(os.getloadavg()[0], 2)
    print(" ".join(f"{k}={v}" for k, v in lines.items()))
    return lines


if __name__ == "__main__":
    main()
