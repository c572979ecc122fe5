"""benchmarks/batch_size.py at toy size: every line benchmarks/README.md reads."""

from __future__ import annotations

import pytest


@pytest.mark.slow  # SmolLM2's load and a few captures
def test_toy_run_prints_every_line(capsys, benchmark_script):
    module = benchmark_script("batch_size")
    lines = module.main(["--sequences", "6", "--batches", "6", "2", "--rounds", "1"])
    printed = capsys.readouterr().out
    for key in ("native_bf16", "seconds_batch_6", "seconds_batch_2", "ratio_2_over_6",
                "load_average_start", "load_average_end"):  # fmt: skip
        assert f"{key}=" in printed, key
    assert lines["ratio_2_over_6"] > 0
