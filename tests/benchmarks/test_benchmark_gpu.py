"""benchmarks/gpu.py without a GPU: ``--device cpu --quick`` runs every code path but the CUDA
calls, so CI notices when the script breaks before a GPU machine is lent; without a GPU the
default run stops at once with exit status 3 and says why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"
# what the lent GPU run is read by: every part must print its lines
EXPECTED = [
    "equal_nn_median_max_rel_diff", "equal_cross_entropy_abs_diff", "equal_nn_median_ok",
    "equal_cross_entropy_ok", "gpu_capture_overhead_ratio_smollm2",
    "gpu_capture_overhead_ratio_llama_1b", "gpu_plain_tokens_per_second_smollm2",
    "gpu_capture_tokens_per_second_llama_1b", "gpu_peak_mb_plain_llama_1b",
    "gpu_peak_mb_capture_llama_1b", "gpu_async_copy_speedup_smollm2",
    "gpu_compile_first_seconds_smollm2", "gpu_compiled_over_eager_smollm2",
    "gpu_scoring_over_forward_llama_1b", "fig2_capture_tokens_per_second",
    "fig2_search_seconds_per_pattern", "projected_fig2_seconds", "search_exact_seconds_2000",
    "search_exact_float64_share_2000",
    "search_hnsw_seconds_6000", "search_hnsw_recall_at_1_6000", "search_better_default_6000",
    "search_auto_agrees", "mismatch", "errors",
]  # fmt: skip


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent.parent)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=1800, env=env
    )  # fmt: skip  (a hang guard, not a speed check)


@pytest.mark.slow  # about 15 s idle, 30 s on the shared two-core machine
def test_quick_cpu_run_prints_every_line_and_exits_zero():
    proc = _run("--device", "cpu", "--quick")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    values = dict(
        line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line and line[0] != "#"
    )
    missing = [name for name in EXPECTED if name not in values]
    assert not missing, proc.stdout
    assert values["mismatch"] == "False" and values["errors"] == "none"
    assert values["equal_nn_median_ok"] == "True"
    assert float(values["projected_fig2_seconds"]) > 0
    assert 0 <= float(values["search_hnsw_recall_at_1_6000"]) <= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_a_gpu_the_default_run_exits_3_and_says_why():
    proc = _run()
    assert proc.returncode == 3
    assert "no GPU" in proc.stderr and "--device cpu --quick" in proc.stderr
    assert "cuda_available=False" in proc.stdout
