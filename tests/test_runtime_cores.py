"""Cores a process may use: affinity, capped by a container's CPU quota."""

from __future__ import annotations

import os

import pytest

from inference import runtime


@pytest.mark.parametrize("content, cores", [
    ("200000 100000\n", 2),  # 2 CPUs
    ("150000 100000\n", 2),  # 1.5 CPUs: round up, a thread pool is whole threads
    ("50000 100000\n", 1),
    ("max 100000\n", None),  # no limit
    ("garbage", None),
])
def test_the_cgroup_quota_is_read_in_whole_cores(tmp_path, content, cores):
    path = tmp_path / "cpu.max"
    path.write_text(content)
    assert runtime.cgroup_cpu_limit(str(path)) == cores


def test_a_quota_caps_the_affinity(tmp_path, monkeypatch):
    path = tmp_path / "cpu.max"
    path.write_text("100000 100000\n")
    monkeypatch.setattr(runtime, "CGROUP_CPU_MAX", str(path))
    assert runtime.available_cores() == 1
    path.write_text("max 100000\n")
    assert runtime.available_cores() == len(os.sched_getaffinity(0))
