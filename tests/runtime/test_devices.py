"""Runtime decisions: mixed precision per device, thread choice, device choice, allocator tuning.

Hardware-dependent choices are tested for both kinds of machine by replacing the capability check,
so the suite asserts the documented behaviour on CPUs with and without native bf16.
"""

from __future__ import annotations

import pytest
import torch

from fusionseg.errors import InputError
from fusionseg.runtime import devices as runtime


@pytest.mark.parametrize(
    ("device", "native", "amp", "expected"),
    [
        ("cpu", True, True, torch.bfloat16),
        ("cpu", False, True, None),
        ("cpu", True, False, None),
        ("cuda", False, True, torch.float16),
        ("cuda", True, False, None),
        ("meta", True, True, None),
    ],
)
def test_amp_dtype_rule(device, native, amp, expected, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    assert runtime.amp_dtype(device, amp) is expected


@pytest.mark.parametrize("native", [True, False])
def test_resolve_amp_notes_the_fallback_once(native, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    lines = []
    dtype = runtime.resolve_amp("cpu", True, lines.append)
    assert dtype is (torch.bfloat16 if native else None)
    assert lines == ([] if native else [runtime.NO_BF16_NOTE])
    assert runtime.resolve_amp("cpu", False, lines.append) is None and len(lines) == (0 if native else 1)


def test_cpu_capability_check_is_a_bool():
    assert isinstance(runtime.cpu_has_native_bf16(), bool)


def test_autocast_context(monkeypatch):
    x = torch.randn(2, 3)
    with runtime.autocast("cpu", torch.bfloat16):
        assert torch.mm(x, x.t()).dtype == torch.bfloat16
    with runtime.autocast("cpu", None):
        assert torch.mm(x, x.t()).dtype == torch.float32


def test_choose_threads_auto_counts_idle_usable_cores(monkeypatch):
    monkeypatch.setattr(runtime, "available_cores", lambda: 8)
    monkeypatch.setattr(runtime, "idle_cores", lambda window_s=0.25: 2.6)
    threads, why = runtime.choose_threads("auto")
    assert threads == 3 and "8 usable" in why and "2.6 idle" in why
    monkeypatch.setattr(runtime, "idle_cores", lambda window_s=0.25: 0.1)
    assert runtime.choose_threads("auto")[0] == 1  # never below one
    monkeypatch.setattr(runtime, "idle_cores", lambda window_s=0.25: 64.0)
    assert runtime.choose_threads("auto")[0] == 8  # never above the usable cores
    monkeypatch.setattr(runtime, "idle_cores", lambda window_s=0.25: None)
    assert runtime.choose_threads("auto") == (8, "auto: 8 usable core(s), idleness unknown")


def test_choose_threads_numbers_and_errors():
    assert runtime.choose_threads(3) == (3, "as asked")
    assert runtime.choose_threads("2") == (2, "as asked")
    assert runtime.choose_threads(None)[0] == torch.get_num_threads()
    for bad in ("many", 0, "-1"):
        with pytest.raises(InputError, match="--threads"):
            runtime.choose_threads(bad)


def test_idle_cores_from_proc_stat(monkeypatch):
    samples = iter([(100.0, 400.0), (150.0, 600.0)])  # 50 of 200 jiffies busy → 75 % idle
    monkeypatch.setattr(runtime, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(runtime.time, "sleep", lambda s: None)
    assert runtime.idle_cores() == pytest.approx(3.0)
    monkeypatch.setattr(runtime, "_cpu_times", lambda: None)
    assert runtime.idle_cores() is None


def test_set_threads_applies_and_restores():
    before = torch.get_num_threads()
    try:
        assert runtime.set_threads(1) == (1, "as asked") and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_pick_device():
    assert runtime.pick_device("cpu") == torch.device("cpu")
    assert runtime.pick_device("auto").type in ("cpu", "cuda")
    with pytest.raises(InputError, match="unknown device"):
        runtime.pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            runtime.pick_device("cuda")


def test_tune_cpu_allocator_is_harmless():
    assert isinstance(runtime.tune_cpu_allocator(32 << 20), bool)
    x = torch.ones(10_000_000)  # a 40 MB block after the change still computes
    assert float(x.sum()) == 1e7
