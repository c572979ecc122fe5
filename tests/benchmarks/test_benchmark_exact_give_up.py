"""benchmarks/exact_give_up.py at one round on a few hundred rows: it prints every line
benchmarks/README.md reads, and the three variants find the same distances."""

from __future__ import annotations


def test_one_round_prints_every_line(capsys, benchmark_script):
    module = benchmark_script("exact_give_up")
    module.main(["--n", "400", "--rounds", "1"])
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines() if "=" in line)
    for kind in ("gaussian", "clustered"):
        for v in ("float32", "shipped", "never_given_up"):
            assert float(lines[f"seconds_{v}_{kind}"]) > 0
        assert 0 <= float(lines[f"uncertified_{kind}"]) <= 1
        assert 0 <= float(lines[f"uncertified_float32_{kind}"]) <= 1
        assert float(lines[f"give_up_speedup_{kind}"]) > 0
        assert float(lines[f"bf16_speedup_{kind}"]) > 0
        assert lines[f"same_distances_{kind}"] == "True"
    assert "load_average_end" in lines


def test_real_rows_are_smollm2_s_at_unit_rms(capsys, benchmark_script):
    module = benchmark_script("exact_give_up")
    module.main(["--n", "300", "--rounds", "1", "--kinds", "real"])
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines() if "=" in line)
    assert lines["same_distances_real"] == "True"
    assert 0 <= float(lines["uncertified_float32_real"]) <= 1
    x = module.data("real", 300)
    assert x.shape == (300, 576)
    assert abs(float((x.astype("float64") ** 2).mean()) - 1.0) < 1e-5
