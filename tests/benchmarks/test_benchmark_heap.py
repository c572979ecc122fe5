"""benchmarks/heap.py at one round: it prints every line benchmarks/README.md reads."""

from __future__ import annotations

import pytest


@pytest.mark.slow  # three loads of SmolLM2 in fresh processes
def test_one_round_prints_every_line(capsys, benchmark_script):
    module = benchmark_script("heap")
    lines = module.main(["--rounds", "1", "--sequences", "6", "--batch", "3"])
    printed = capsys.readouterr().out
    for key in ("native_bf16", "compute_dtype", "seconds_default", "seconds_kept",
                "faults_per_batch_default", "faults_per_batch_kept", "peak_rss_mb_kept",
                "seconds_after", "trims_kept", "kept_heap_speedup", "after_pass_speedup",
                "load_average_end"):  # fmt: skip
        assert f"{key}=" in printed, key
    assert lines["seconds_default"] > 0 and lines["seconds_kept"] > 0
    assert isinstance(lines["trims_kept"], int)
    assert lines["kept_heap_speedup"] == lines["seconds_default"] / lines["seconds_kept"]
