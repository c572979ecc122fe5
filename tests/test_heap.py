"""The kept heap of a pass (hopaudit/heap.py): when it trims, and what glibc does inside it."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from hopaudit import heap


class _Machine:
    """A resident reading and a trim by hand: the trim drops what is free."""

    def __init__(self, live: int) -> None:
        self.live, self.free, self.trims = live, 0, 0

    def read(self) -> int:
        return self.live + self.free

    def trim(self) -> None:
        self.free = 0
        self.trims += 1

    def batch(self, working: int, kept: int = 0) -> None:
        """A batch that needed ``working`` bytes (freed after, kept resident) and kept
        ``kept`` bytes of rows."""
        self.free = max(self.free, working)
        self.live += kept


MB = 1 << 20


def test_same_shaped_batches_never_trim():
    m = _Machine(live=500 * MB)
    keeper = heap.HeapKeeper(read=m.read, trim=m.trim)
    for _ in range(50):
        m.batch(working=200 * MB)
        keeper.batch_done()
    assert m.trims == 0
    assert keeper.slack == 200 * MB


def test_growth_beyond_a_quarter_working_set_trims_and_bounds_what_stays_unused():
    m = _Machine(live=500 * MB)
    keeper = heap.HeapKeeper(read=m.read, trim=m.trim)
    most_unused = 0
    for _ in range(100):
        m.batch(working=100 * MB)
        m.free += 5 * MB  # fragmentation: freed memory the next batch cannot reuse
        most_unused = max(most_unused, m.free)
        keeper.batch_done()
    # a trim when a quarter working set grew past it, so neither at every batch nor never
    assert 5 <= m.trims <= 25
    assert most_unused <= keeper.slack + keeper.slack // 4 + 5 * MB


def test_the_working_set_is_the_largest_a_fresh_batch_left():
    m = _Machine(live=500 * MB)
    keeper = heap.HeapKeeper(read=m.read, trim=m.trim)
    m.batch(working=80 * MB)
    keeper.batch_done()
    assert keeper.slack == 80 * MB
    m.batch(working=200 * MB)  # a larger batch, not fresh: above 80 + 20, so a trim
    keeper.batch_done()
    assert m.trims == 1
    m.batch(working=150 * MB)  # fresh after the trim: the working set grows to it
    keeper.batch_done()
    assert keeper.slack == 150 * MB and m.trims == 1


def test_tiny_batches_have_a_floor_of_slack():
    m = _Machine(live=100 * MB)
    keeper = heap.HeapKeeper(read=m.read, trim=m.trim)
    for _ in range(20):
        m.batch(working=1 * MB, kept=MB // 2)
        keeper.batch_done()
    assert keeper.slack == heap.MIN_SLACK
    assert m.trims <= 1


def test_without_a_reading_every_batch_trims():
    trims = []
    keeper = heap.HeapKeeper(read=lambda: None, trim=lambda: trims.append(1))
    for _ in range(3):
        keeper.batch_done()
    assert len(trims) == 3


def _mmapped_bytes() -> int:
    """glibc's ``mallinfo2().hblkhd``: bytes in blocks it mapped instead of taking from a heap."""
    lib = ctypes.CDLL(None)

    class Info(ctypes.Structure):
        _fields_ = [
            (n, ctypes.c_size_t)
            for n in [
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            ]
        ]

    lib.mallinfo2.restype = Info
    return int(lib.mallinfo2().hblkhd)


def _glibc_with_mallinfo2() -> bool:
    return heap._glibc() is not None and hasattr(ctypes.CDLL(None), "mallinfo2")


_USER_SET = "this process was started with glibc's thresholds set, which the pass leaves alone"


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc 2.33+ (mallinfo2)")
@pytest.mark.skipif(heap.user_set_thresholds(), reason=_USER_SET)
def test_inside_a_pass_a_large_block_comes_from_the_heap_and_after_it_is_mapped_again():
    size = 48 * MB  # above the threshold left after a pass (32 MiB), below the one within
    with heap.kept_heap() as keeper:
        before = _mmapped_bytes()
        a = np.ones(size, dtype=np.uint8)
        inside = _mmapped_bytes() - before
        del a
        keeper.batch_done()
    before = _mmapped_bytes()
    b = np.ones(size, dtype=np.uint8)
    after = _mmapped_bytes() - before
    del b
    assert inside == 0
    assert after >= size


@pytest.mark.skipif(heap._glibc() is None, reason="glibc only")
@pytest.mark.skipif(heap.user_set_thresholds(), reason=_USER_SET)
def test_nested_passes_keep_the_outer_settings_until_the_outer_ends():
    with heap.kept_heap():
        with heap.kept_heap():
            pass
        assert heap._depth == 1
        assert heap._kept
    assert heap._depth == 0


@pytest.mark.parametrize(
    ("env", "set_by_user"),
    [
        ({}, False),
        ({"MALLOC_MMAP_THRESHOLD_": "65536"}, True),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4096"}, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, False),
    ],
)
def test_thresholds_a_user_set_are_recognised(env, set_by_user):
    assert heap.user_set_thresholds(env) is set_by_user


def test_with_thresholds_set_by_the_user_the_pass_leaves_them_and_trims_every_batch(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    calls = []
    monkeypatch.setattr(heap, "_set", lambda *a: calls.append(a) or True)
    trims = []
    monkeypatch.setattr(heap, "release_freed_memory", lambda: trims.append(1))
    with heap.kept_heap() as keeper:
        keeper._trim = lambda: trims.append(1)  # the keeper's own trim, counted the same
        keeper.batch_done()
        keeper.batch_done()
    assert calls == []
    assert keeper.trims == 2
    assert not heap._kept
