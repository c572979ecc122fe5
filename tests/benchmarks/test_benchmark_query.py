"""benchmarks/query.py at toy size: every line the README's numbers are read from is printed
for every layer, members find themselves (a known answer), and its Wilson interval is the
closed form."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "query.py"
LAYERS = ("transformer.h.0", "transformer.h.1", "final")


def _parse(stdout: str) -> dict[str, tuple[float, float, float]]:
    out = {}
    for line in stdout.splitlines():
        if "=" in line and "[" in line:
            key, rest = line.split("=", 1)
            value, interval = rest.split(" [", 1)
            lo, hi = interval.split("]", 1)[0].split(", ")
            out[key] = (float(value), float(lo), float(hi))
    return out


@pytest.mark.slow  # trains a tiny GPT-2 for a few steps in a fresh process
def test_toy_run_prints_every_line():
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent.parent), "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "20", "--max-chars", "8000", "--queries", "8",
         "--boot", "50"],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    v = _parse(proc.stdout)
    for layer in LAYERS:
        for kind in ("members", "perturbed_1", "perturbed_2", "perturbed_4", "generated"):
            assert f"nearest_is_source_{kind}_{layer}" in v
        # a stored sequence queried again is its own nearest stored sequence, at distance 0
        assert v[f"nearest_is_source_members_{layer}"][0] == 1.0
        value, lo, hi = v[f"auroc_ratio_perturbed_vs_heldout_{layer}"]
        assert 0 <= lo <= value <= hi <= 1
        for split in ("extracting", "not_extracting"):
            assert f"inside_source_ball_{split}_{layer}" in v
    for kind in ("members", "perturbed_1", "generated", "heldout"):
        assert f"extraction_rate_{kind}" in v


def test_wilson_interval_is_the_closed_form(benchmark_script):
    module = benchmark_script("query")
    z = 1.959963984540054
    # no hits in n: the upper end is z^2 / (n + z^2)
    assert module.wilson(0, 8)[2] == pytest.approx(z * z / (8 + z * z))
    # 5 of 10: symmetric about 1/2, half-width z sqrt(n/4 + z^2/4) / (n + z^2)
    _, lo, hi = module.wilson(5, 10)
    half = z * math.sqrt(10 / 4 + z * z / 4) / (10 + z * z)
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half))
