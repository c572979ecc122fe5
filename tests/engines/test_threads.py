"""The audit's thread caps: every pool at most the CPUs the process may use, restored after."""

from __future__ import annotations

import os

import pytest
import torch

from hopaudit.cpus import cgroup_quota, usable_cpus
from hopaudit.engines.threads import ENV_CAPS, capped_threads, thread_settings


def test_usable_cpus_is_the_affinity_mask_at_most():
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_quota_reads_v2_and_v1(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_quota(tmp_path) == expected


def test_capped_threads_lowers_torch_and_restores_it(monkeypatch):
    for key in ENV_CAPS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NUMBA_NUM_THREADS", "7")  # the user's own setting is kept
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with capped_threads(1) as n:
            assert n == 1
            assert torch.get_num_threads() == 1
            assert os.environ["RAYON_NUM_THREADS"] == "1"
            assert os.environ["OMP_NUM_THREADS"] == "1"
            assert os.environ["NUMBA_NUM_THREADS"] == "7"
            assert thread_settings()["torch_intra_op"] == 1
        assert torch.get_num_threads() == 2
        assert "RAYON_NUM_THREADS" not in os.environ
        assert os.environ["NUMBA_NUM_THREADS"] == "7"
    finally:
        torch.set_num_threads(before)


def test_capped_threads_restores_after_an_exception():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(KeyboardInterrupt), capped_threads(1):
            raise KeyboardInterrupt
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_capped_threads_never_raises_a_smaller_pool():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with capped_threads(2):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
