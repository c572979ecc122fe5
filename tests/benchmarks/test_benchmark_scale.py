"""benchmarks/scale.py at toy sizes: every line the README's numbers are read from is printed,
and the Fig. 2 projection is the arithmetic docs/scale.md states (checked here by hand)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scale.py"
SIZES = (1500, 3000)


@pytest.mark.slow  # two fresh processes, each with a UMAP
def test_toy_sizes_print_every_stage_and_the_projection():
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent.parent), "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--sizes", ",".join(map(str, SIZES)), "--layers", "2",
         "--gpu-tflops", "100"],
        capture_output=True, text=True, timeout=1800, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    machine = {k: lines.pop(k) for k in ("cpu", "native_bf16", "cpu_flags", "cpus_usable")}
    assert machine["native_bf16"] in ("True", "False") and int(machine["cpus_usable"]) >= 1
    v = {k: float(x) for k, x in lines.items()}
    for n in SIZES:
        for stage in ("index", "search", "geometry", "umap"):
            assert v[f"seconds_{stage}_{n}"] > 0
        assert v[f"peak_rss_mb_{n}"] > v[f"one_layer_mb_{n}"] > 0
    for stage in ("index", "search", "geometry", "umap"):
        assert math.isfinite(v[f"growth_exponent_{stage}"])
    # GPT-2 medium: 24 blocks of width 1024 (12 d^2 weights each), 256-token context,
    # a 50257-token vocabulary
    flops = 2 * 24 * 12 * 1024**2 + 2 * 24 * 256 * 1024 + 2 * 1024 * 50257
    assert v["gpt2_medium_flops_per_token"] == pytest.approx(flops, rel=1e-3)
    tps = 100e12 / flops
    assert v["gpt2_medium_tokens_per_second_gpu_assumed"] == pytest.approx(tps, rel=1e-3)
    # 80 000 chunks of 256 tokens over 8 GPUs; 25 layers, 8 at a time (4 rounds), each of
    # 80 000 patterns of width 1024 at the per-pattern cost measured at width 576 (3000 is
    # the size nearest 80 000)
    per_pattern = v["measure_seconds_per_pattern_576_at_3000"]
    capture = 80_000 * 256 / (8 * tps)
    measure = 4 * per_pattern * 80_000 * 1024 / 576
    assert v["projected_fig2_capture_seconds_8_gpu_workers"] == pytest.approx(capture, rel=1e-3)
    assert v["projected_fig2_measure_seconds_8_gpu_workers"] == pytest.approx(measure, rel=1e-3)
    assert "not a measurement" in proc.stdout


@pytest.mark.slow  # SmolLM2's first block over 40 000 tokens, two fresh processes
def test_all_tokens_crosses_into_the_clustered_search_with_the_recall_it_reports():
    """Real activations on both sides of ``AUTO_EXACT_MAX``: exact search below it, the
    clustered search above, whose kNN graph the script checks against exact search on a
    sample; the recall the audit reports and the one checked both meet the targets."""
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent.parent), "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--all-tokens", "3000,40000"],
        capture_output=True, text=True, timeout=1800, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    v = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert v["index_kind_all_3000"] == "exact" and v["index_kind_all_40000"] == "clustered"
    for n in (3000, 40000):
        assert int(v[f"patterns_per_layer_all_{n}"]) >= n
        for layer in ("model_layers_0", "final"):
            assert float(v[f"recall_at_1_{layer}_all_{n}"]) >= 0.99
            assert float(v[f"recall_at_k_{layer}_all_{n}"]) >= 0.95
            assert float(v[f"reported_recall_at_1_{layer}_all_{n}"]) >= 0.99
    assert float(v["reported_recall_at_1_final_all_3000"]) == 1.0  # exact search
    for stage in ("index", "search", "measure"):
        assert math.isfinite(float(v[f"growth_exponent_{stage}_all"]))
