"""bench/common.py: markdown tables, timing and the CPU peak-memory probe."""

from __future__ import annotations

import os

import pytest
import torch

from fusionseg.bench.common import format_table, measure, peak_memory_mb, time_call


def test_format_table():
    table = format_table(["module", "time (s)", "ratio"], [["DFF", 0.012345, 2], ["TIF", 1234.5, "n/a"]])
    assert table.splitlines() == [
        "| module | time (s) | ratio |",
        "|---|---|---|",
        "| DFF | 0.0123 | 2 |",
        "| TIF | 1234 | n/a |",
    ]


def test_time_call_counts_calls_and_returns_median(monkeypatch):
    """A fake clock (no dependence on this machine's speed): calls take 5, 1, 3 time units after 2 warm-ups."""
    durations = iter([9.0, 9.0, 5.0, 1.0, 3.0])
    clock = {"now": 0.0}
    calls = []

    def fn():
        calls.append(1)
        clock["now"] += next(durations)

    monkeypatch.setattr("fusionseg.bench.common.time.perf_counter", lambda: clock["now"])
    assert time_call(fn, repeats=3, warmup=2) == 3.0
    assert len(calls) == 5


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="RSS peak needs Linux /proc")
def test_peak_memory_detects_a_64_mb_allocation():
    def allocate():
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB of float32, touched
        return float(x[-1])

    peak = peak_memory_mb(allocate)
    assert 56 < peak < 80
    assert peak_memory_mb(lambda: None) < 8
    stats = measure(allocate, repeats=2, warmup=0)
    assert set(stats) == {"time_s", "peak_mb"} and 56 < stats["peak_mb"] < 80
