"""benchmarks/non_forward.py at one round on a few sequences: it prints every line
benchmarks/README.md reads, and its ratios are the ratios of the seconds it measured."""

from __future__ import annotations

import pytest


@pytest.mark.slow  # SmolLM2 loaded, two audits and two plain forwards
def test_one_round_prints_every_line(capsys, benchmark_script):
    module = benchmark_script("non_forward")
    got = module.main(["--sequences", "30", "--rounds", "1", "--numerics", "float32"])
    printed = capsys.readouterr().out
    for key in ("native_bf16", "loadavg_start", "batch_float32", "plain_seconds_float32",
                "audit_seconds_float32", "audit_stages_float32", "non_forward_share_float32",
                "capture_over_plain_float32", "loadavg_end"):  # fmt: skip
        assert f"{key}=" in printed, key
    one = got["float32"]
    assert one["plain_seconds"] > 0 and one["audit_seconds"] > 0
    # one round: each ratio is that round's seconds over the plain forward's
    assert one["non_forward_share"] == one["audit_seconds"] / one["plain_seconds"]
    stages = one["audit_stages"]
    assert one["capture_over_plain"] == stages["capture"] / one["plain_seconds"]
    assert {"capture", "measure"} <= set(stages)
