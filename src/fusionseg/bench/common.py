"""Shared benchmark helpers: wall time and peak tensor memory of a callable, and table printing.

Peak memory on CPU is the resident-set high-water mark during the call above the resident
size before it (Linux; large blocks are returned to the OS on free so it tracks live tensors);
on CUDA ``torch.cuda.max_memory_allocated``. Time is the median of ``repeats`` runs after ``warmup``.

Example:
    >>> stats = measure(lambda: torch.randn(256, 256) @ torch.randn(256, 256), repeats=3)
    >>> sorted(stats)
    ['peak_mb', 'time_s']
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import statistics
import time
from collections.abc import Callable, Sequence

import torch

__all__ = ["format_table", "measure", "peak_memory_mb", "time_call"]

WARM_MMAP_THRESHOLD = 32 * 2**20  # glibc's dynamic threshold after warm-up (its maximum on 64-bit)


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device: torch.device | None = None) -> float:
    """Median wall time of ``fn()`` in seconds (glibc: blocks up to 32 MiB from the heap, as after warm-up)."""
    _set_mmap_threshold(WARM_MMAP_THRESHOLD)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _set_mmap_threshold(nbytes: int) -> None:
    """glibc: allocations above ``nbytes`` get their own mapping, returned to the OS on free."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: RSS-based peaks are then upper bounds
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, nbytes)  # M_MMAP_THRESHOLD (fixed from now on, no longer dynamic)
        libc.mallopt(-1, 2 * nbytes)  # M_TRIM_THRESHOLD


def _proc_status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not found in /proc/self/status")


def peak_memory_mb(fn: Callable[[], object], device: torch.device | None = None) -> float:
    """Peak MiB allocated above the memory in use before ``fn()`` (its results are dropped).

    CUDA: ``torch.cuda.max_memory_allocated``. CPU (Linux): the resident-set high-water mark,
    reset through ``/proc/self/clear_refs`` just before the call, minus the resident size then.
    """
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    if not os.path.exists("/proc/self/clear_refs"):
        return float("nan")
    # While measuring, every large block is its own mapping (resident memory tracks live tensors);
    # afterwards blocks up to 32 MiB come from the heap again (glibc's warm default), so timings
    # taken after a memory measurement do not pay a page fault per allocation.
    _set_mmap_threshold(128 * 1024)
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # freed heap blocks back to the OS, else reuse reads ~0
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident size
        base = _proc_status_mb("VmRSS")
        fn()
        return _proc_status_mb("VmHWM") - base
    finally:
        _set_mmap_threshold(WARM_MMAP_THRESHOLD)


def measure(
    fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device: torch.device | None = None
) -> dict[str, float]:
    """``{"time_s": median seconds, "peak_mb": peak tensor MiB}`` of ``fn()``."""
    return {"time_s": time_call(fn, repeats, warmup, device), "peak_mb": peak_memory_mb(fn, device)}


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table; floats get 3 significant decimals."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
