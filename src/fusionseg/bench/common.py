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
from collections.abc import Callable

import torch

from fusionseg.evaluation.report import format_table
from fusionseg.runtime.devices import tune_cpu_allocator

__all__ = ["format_table", "gemm_gflops", "measure", "peak_memory_mb", "time_call"]

WARM_MMAP_THRESHOLD = 32 * 2**20  # glibc's dynamic threshold after warm-up (its maximum on 64-bit)


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device: torch.device | None = None) -> float:
    """Median wall time of ``fn()`` in seconds (glibc: blocks up to 32 MiB from the heap, as after warm-up)."""
    tune_cpu_allocator(WARM_MMAP_THRESHOLD)
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


def gemm_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 3) -> float:
    """This machine's matrix-multiply rate in ``dtype`` now (GFLOP/s of an n×n @ n×n product, median of ``repeats``):
    the practical peak that benchmarks report their models' rates against."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(dtype)
    b = torch.randn(n, n, generator=generator).to(dtype)
    return 2 * n**3 / time_call(lambda: a @ b, repeats=repeats, warmup=1) / 1e9


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
    tune_cpu_allocator(128 * 1024)
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # freed heap blocks back to the OS, else reuse reads ~0
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident size
        resident = _proc_status_mb("VmRSS")
        fn()
        return _proc_status_mb("VmHWM") - resident
    finally:
        tune_cpu_allocator(WARM_MMAP_THRESHOLD)


def measure(
    fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device: torch.device | None = None
) -> dict[str, float]:
    """``{"time_s": median seconds, "peak_mb": peak tensor MiB}`` of ``fn()``."""
    return {"time_s": time_call(fn, repeats, warmup, device), "peak_mb": peak_memory_mb(fn, device)}
