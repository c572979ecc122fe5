"""benchmarks/extraction.py at toy size: it prints every line benchmarks/README.md reads, and
stopping early gives every sequence the same matching run as decoding to the end."""

from __future__ import annotations

import pytest


@pytest.mark.slow  # SmolLM2's forward over a few sequences
def test_toy_run_prints_every_line(capsys, benchmark_script):
    module = benchmark_script("extraction")
    lines = module.main(["--rounds", "1", "--sequences", "4", "--batch", "2"])
    printed = capsys.readouterr().out
    for key in ("native_bf16", "dtype", "sequences", "extraction_full_seconds",
                "extraction_stop_seconds", "extraction_stop_speedup", "decoded_fraction",
                "same_extracted_tokens", "load_average_start", "load_average_end"):  # fmt: skip
        assert f"{key}=" in printed, key
    assert lines["same_extracted_tokens"] is True
    assert lines["dtype"] == "float32" and lines["sequences"] == 4
    assert 0 < lines["decoded_fraction"] <= 1
