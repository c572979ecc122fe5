"""benchmarks/head_chunks.py at one round, on a small vocabulary: it prints every line
benchmarks/README.md reads, and the chunked scores agree with the whole logits'."""

from __future__ import annotations


def test_one_round_prints_every_line(capsys, benchmark_script):
    module = benchmark_script("head_chunks")
    lines = module.main(["--rounds", "1", "--batch", "3", "--length", "8", "--vocab", "300"])
    printed = capsys.readouterr().out
    for dtype in ("float32", "bfloat16"):
        for key in ("whole_seconds", "best_head_values", "max_abs_diff_log_p", "hit_mismatches"):
            assert f"{key}_{dtype}=" in printed, key
        for v in module.VALUES:
            assert lines[f"head_seconds_{dtype}_{v}"] > 0
            assert lines[f"head_chunks_speedup_{dtype}_{v}"] > 0
        assert lines[f"best_head_values_{dtype}"] in module.VALUES
        for v in module.COLUMNS:
            assert lines[f"columns_seconds_{dtype}_{v}"] > 0
        assert lines[f"best_column_values_{dtype}"] in module.COLUMNS
        assert lines[f"columns_speedup_{dtype}"] > 0 and lines[f"columns_over_rows_{dtype}"] > 0
    # the same scores: float32 to its rounding, bfloat16 to its step (a logit of a few units)
    assert lines["max_abs_diff_log_p_float32"] <= 1e-4
    assert lines["max_abs_diff_log_p_bfloat16"] <= 0.1
    assert lines["hit_mismatches_float32"] == 0
    assert "load_average_end=" in printed
