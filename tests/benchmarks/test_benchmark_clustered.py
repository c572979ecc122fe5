"""benchmarks/clustered.py at toy sizes: every line benchmarks/README.md reads is printed, and
the recall it prints is that of the searches against exact search."""

from __future__ import annotations


def test_toy_sizes_print_every_line(capsys, benchmark_script):
    module = benchmark_script("clustered")
    module.main(["--sizes", "2000", "4000", "--data", "synthetic"])
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines() if "=" in line)
    for n in (2000, 4000):
        for kind in ("exact", "clustered", "hnsw"):
            assert float(lines[f"seconds_{kind}_synthetic_{n}"]) > 0
        for kind in ("clustered", "hnsw"):
            assert 0.9 <= float(lines[f"recall_at_1_{kind}_synthetic_{n}"]) <= 1.0
        assert int(lines[f"probes_clustered_synthetic_{n}"]) >= 1
    crossing = lines["exact_clustered_crossover_synthetic"]
    assert crossing == "none" or 2000 <= float(crossing) <= 4000
    # the interpolation itself, by hand: ratios 2 and 0.5 cross halfway in log space
    assert module.crossover([1000, 4000], [2.0, 0.5]) == "2000"
    assert module.crossover([1000, 4000], [2.0, 1.5]) == "none"


def test_blocks_mode_times_both_and_finds_the_same_neighbours(
    capsys, benchmark_script, monkeypatch
):
    from hopaudit.search import clustered

    monkeypatch.setattr(clustered, "_SEARCH_PAIRS", 4096)  # several blocks at a toy size
    monkeypatch.setattr(clustered, "_PAIR_BYTES", 1 << 20)
    module = benchmark_script("clustered")
    module.main(["--blocks", "2", "--sizes", "3000", "--data", "synthetic"])
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines() if "=" in line)
    assert int(lines["query_blocks_synthetic_3000"]) > 1
    assert float(lines["seconds_blocks_synthetic_3000"]) > 0
    assert float(lines["seconds_one_block_synthetic_3000"]) > 0
    assert int(lines["blocks_mismatched_ids_synthetic_3000"]) == 0
    assert clustered._SEARCH_PAIRS == 4096  # put back as it was
