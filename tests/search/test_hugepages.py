"""hnswlib's level-0 block is advised huge pages (read back from the kernel's own smaps), and
the index gives the same neighbours either way."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from hopaudit.search import HnswIndex, hugepages, knn_self

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only (madvise)")


def _advised_regions() -> set[tuple[int, int]]:
    """(start, stop) of the mappings whose VmFlags hold ``hg`` (MADV_HUGEPAGE), from smaps."""
    out, current = set(), None
    with open("/proc/self/smaps") as handle:
        for line in handle:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                current = tuple(int(v, 16) for v in head.split("-"))
            elif head == "VmFlags:" and "hg" in line.split()[1:]:
                out.add(current)
    return out


def _index(rows: int, dim: int = 64) -> HnswIndex:
    return HnswIndex(dim, max_elements=rows, threads=1)


@linux
@pytest.mark.parametrize("enabled", [True, False])
def test_the_graph_block_is_advised_huge_pages_only_when_enabled(enabled, monkeypatch):
    monkeypatch.setattr(hugepages, "MIN_BYTES", 1 << 20)
    monkeypatch.setattr(hugepages, "ENABLED", enabled)
    # 100 000 x (64 x 4 + 16 x 8 + 12) bytes = 40 MB: above glibc's largest mmap threshold
    # (32 MB), so the block is a mapping of its own even in a long-lived process
    rows = 100_000
    before = _advised_regions()
    index = _index(rows)
    new = {r for r in _advised_regions() - before if r[1] - r[0] >= rows * 396}
    assert bool(new) == enabled, new
    del index


@linux
def test_the_neighbours_are_the_same_with_and_without(monkeypatch):
    monkeypatch.setattr(hugepages, "MIN_BYTES", 1 << 20)
    x = np.random.default_rng(0).normal(size=(3000, 64)).astype(np.float32)
    found = []
    for enabled in (True, False):
        monkeypatch.setattr(hugepages, "ENABLED", enabled)
        index = _index(20_000)
        index.add(x)
        found.append(knn_self(index, x, 5))
    np.testing.assert_array_equal(found[0][0], found[1][0])
    np.testing.assert_array_equal(found[0][1], found[1][1])


def test_a_failure_to_read_the_mappings_changes_nothing(monkeypatch):
    def refuse() -> set:
        raise OSError("no /proc here")

    monkeypatch.setattr(hugepages, "MIN_BYTES", 1 << 20)
    monkeypatch.setattr(hugepages, "_anonymous_mappings", refuse)
    x = np.random.default_rng(1).normal(size=(500, 64)).astype(np.float32)
    index = _index(20_000)
    index.add(x)
    ids, _ = knn_self(index, x, 3)
    assert ids.shape == (500, 3)
