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


def _fresh_mappings(before: set[tuple[int, int]], size: int) -> set[tuple[int, int]]:
    """The anonymous mappings of at least ``size`` bytes that were not there ``before``."""
    return {r for r in hugepages._anonymous_mappings() - before if r[1] - r[0] >= size}


@linux
@pytest.mark.parametrize("enabled", [True, False])
def test_the_graph_block_is_advised_huge_pages_only_when_enabled(enabled, monkeypatch):
    mode = hugepages.kernel_mode()
    if enabled and mode not in ("always", "madvise"):
        pytest.skip(
            f"the kernel offers no huge pages to madvise here (mode {mode!r}: "
            "/sys/kernel/mm/transparent_hugepage/enabled or THP_enabled in /proc/self/status)"
        )
    monkeypatch.setattr(hugepages, "MIN_BYTES", 1 << 20)
    monkeypatch.setattr(hugepages, "ENABLED", enabled)
    advised: list[tuple[int, int, bool]] = []
    madvise = hugepages._madvise

    def spy(start: int, length: int) -> bool:
        advised.append((start, length, ok := madvise(start, length)))
        return ok

    monkeypatch.setattr(hugepages, "_madvise", spy)
    # 100 000 x (64 x 4 + 16 x 8 + 12) bytes = 40 MB: above glibc's largest mmap threshold
    # (32 MB), so the block is a mapping of its own even in a long-lived process
    rows, block = 100_000, 100_000 * 396
    before, hg_before = hugepages._anonymous_mappings(), _advised_regions()
    index = _index(rows)
    fresh = _fresh_mappings(before, block)
    new_hg = {r for r in _advised_regions() - hg_before if r[1] - r[0] >= block}
    if not enabled:
        assert advised == [] and new_hg == set(), (advised, new_hg)
    elif not fresh:
        pytest.skip("the allocator placed hnswlib's block in memory it already held (no new "
                    "mapping of 40 MB appeared): there was nothing to advise")  # fmt: skip
    else:
        # the block's mapping was advised, the kernel accepted it, and smaps shows the flag
        assert any(ok and length >= block for _, length, ok in advised), advised
        assert any(a <= s and e <= b for s, e in fresh for a, b in new_hg), (fresh, new_hg)
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
