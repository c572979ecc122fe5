"""benchmarks/load.py at one round: it prints every line benchmarks/README.md reads."""

from __future__ import annotations

import pytest


@pytest.mark.slow  # two loads of SmolLM2 in fresh processes
def test_one_round_prints_every_line(capsys, benchmark_script):
    module = benchmark_script("load")
    lines = module.main(["--rounds", "1"])
    printed = capsys.readouterr().out
    for key in ("native_bf16", "load_gguf_seconds", "load_copy_seconds", "load_speedup",
                "copy_mb", "load_average_start", "load_average_end"):  # fmt: skip
        assert f"{key}=" in printed, key
    assert lines["load_gguf_seconds"] > 0 and lines["load_copy_seconds"] > 0
    assert 500 < lines["copy_mb"] < 600  # 135 M float32 parameters, the tied head once
