"""The test tree itself: pytest imports test modules by basename (rootdir-relative, no
packages), so two test files of one name in tests/ and tests/browser/ stop the whole run at
collection. Twice it did; this says so in one line instead."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).parent


def test_no_two_test_files_share_a_basename():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
