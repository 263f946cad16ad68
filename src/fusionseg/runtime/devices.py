"""Where and how a job runs: device, CPU threads, mixed precision, seeding, the CPU allocator.

Every command (train, predict, evaluate-time inference, export checks, demo, benchmarks) takes
these decisions through this module, so one rule holds everywhere:

- **Mixed precision** (``--amp``): float16 autocast (+ GradScaler in training) on CUDA; bfloat16
  autocast on a CPU only where the CPU has native bf16 (AVX-512 BF16 / AMX on x86, what oneDNN
  reports). Elsewhere bf16 is emulated and runs many times *slower* than float32, so ``--amp``
  falls back to float32 with a one-line note (:data:`NO_BF16_NOTE`). Where a reduced dtype is
  offered, :mod:`fusionseg.runtime.precision` times one step of the model in both and keeps the
  reduced one only when it is faster (``--amp`` is never slower than float32).
- **Threads** (``--threads``, default ``auto``): the cores this process may use that are idle
  right now, measured from ``/proc/stat`` over a short window (not the 1-minute load average,
  which still counts work that has finished). The choice and its reason are logged.
- **Allocator**: training and inference on CPU allocate the same large activation buffers every
  step; glibc maps each block above its mmap threshold (at most 32 MiB by default) freshly and
  returns it on free, so every step pays page faults for every large tensor. :func:`tune_cpu_allocator`
  keeps such blocks in the heap for reuse.

Example:
    >>> device = pick_device("auto")
    >>> threads, why = choose_threads("auto")
    >>> with autocast(device, amp_dtype(device, amp=True)):
    ...     logits = model(x)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import time
from contextlib import nullcontext

import numpy as np
import torch

from fusionseg.errors import InputError

__all__ = [
    "NO_BF16_NOTE",
    "amp_dtype",
    "autocast",
    "available_cores",
    "choose_threads",
    "cpu_has_native_bf16",
    "idle_cores",
    "pick_device",
    "resolve_amp",
    "seed_everything",
    "set_threads",
    "tune_cpu_allocator",
]

NO_BF16_NOTE = (
    "note: --amp ignored: this CPU has no native bfloat16 support (bf16 would be emulated, slower); using float32"
)

# Blocks up to this size stay in glibc's heap after free (reused without page faults).
_HEAP_BLOCK_LIMIT = 1 << 30
_IDLE_SAMPLE_S = 0.25
MAX_THREADS_PER_CORE = 4  # --threads above this many per core only makes OpenMP thrash (a million exhausts memory)


# ------------------------------------------------------------------------------------------- device


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA (``cuda:local_rank``) when available, else CPU; ``cpu``, ``cuda``, ``cuda:N``, ``mps``.

    Raises :class:`InputError` when the device asked for is not available.
    """
    name = str(name).lower()
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name} asked for, but no CUDA device is available; use --device cpu or auto")
        device = torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
        return device
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise InputError("--device mps asked for, but MPS is not available; use --device cpu or auto")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")


# ----------------------------------------------------------------------------------- mixed precision


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (oneDNN's check: AVX-512 BF16 / AMX, or Arm BF16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def amp_dtype(device: torch.device | str, amp: bool) -> torch.dtype | None:
    """The autocast dtype ``--amp`` means on ``device``, or None for float32.

    CUDA → float16; CPU → bfloat16 only with native support (:func:`cpu_has_native_bf16`), else None;
    other devices → None.
    """
    if not amp:
        return None
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.float16
    if kind == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def resolve_amp(device: torch.device | str, amp: bool, log=print) -> torch.dtype | None:
    """:func:`amp_dtype`, printing :data:`NO_BF16_NOTE` through ``log`` when ``--amp`` falls back to float32."""
    dtype = amp_dtype(device, amp)
    if amp and dtype is None and torch.device(device).type == "cpu":
        log(NO_BF16_NOTE)
    return dtype


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """``torch.autocast`` in ``dtype`` on ``device``, or a no-op for None (float32)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


# ------------------------------------------------------------------------------------------- threads


def available_cores() -> int:
    """Cores this process may run on (CPU affinity, e.g. ``taskset`` or a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``; None where it is not available."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


def idle_cores(window_s: float = _IDLE_SAMPLE_S) -> float | None:
    """How many of the machine's cores were idle over the last ``window_s`` seconds (None: unknown)."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(window_s)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    busy = (second[0] - first[0]) / (second[1] - first[1])
    return (1.0 - busy) * (os.cpu_count() or 1)


def choose_threads(spec: str | int | None = "auto") -> tuple[int, str]:
    """Intra-op threads for ``--threads`` → (threads, reason for the log).

    ``auto``: the cores this process may use that are idle now (rounded, at least 1) — on a busy
    machine more threads than idle cores make OpenMP spin and run several times slower. A number:
    that many. None: leave the process's setting (PyTorch's default, or what the caller chose, e.g. the demo).
    """
    if spec is None:
        return torch.get_num_threads(), "as set for this process"
    if str(spec).lower() == "auto":
        cores = available_cores()
        idle = idle_cores()
        if idle is None:
            return cores, f"auto: {cores} usable core(s), idleness unknown"
        threads = max(1, min(cores, int(idle + 0.5)))
        return threads, f"auto: {cores} usable core(s), {idle:.1f} idle over the last {_IDLE_SAMPLE_S:g} s"
    try:
        threads = int(spec)
    except (TypeError, ValueError):
        raise InputError(f"--threads must be 'auto' or a positive integer, got {spec!r}") from None
    if threads < 1:
        raise InputError(f"--threads must be ≥ 1, got {threads}")
    limit = MAX_THREADS_PER_CORE * (os.cpu_count() or 1)
    if threads > limit:
        raise InputError(
            f"--threads {threads} is more than {MAX_THREADS_PER_CORE} per core of this machine ({limit}); "
            "pass --threads auto or at most the number of cores"
        )
    return threads, "as asked"


def set_threads(spec: str | int | None = "auto") -> tuple[int, str]:
    """Apply :func:`choose_threads` to torch → (threads in use, reason)."""
    threads, reason = choose_threads(spec)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads, reason


# -------------------------------------------------------------------------------------- randomness


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -------------------------------------------------------------------------------------- allocator


def tune_cpu_allocator(block_limit: int = _HEAP_BLOCK_LIMIT) -> bool:
    """Keep freed blocks up to ``block_limit`` bytes in glibc's heap for reuse (no-op elsewhere) → applied?

    glibc serves blocks above its mmap threshold (dynamic, at most 32 MiB) with a fresh mapping
    and unmaps them on free, so a training step that allocates the same 50–500 MB activations
    every time pays a page fault per 4 KiB page on each of them (measured: half the wall time
    of a 3D U-Net step). Raising the mmap and trim thresholds lets freed blocks be reused.
    Memory that was used stays reserved by the process until it exits.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, ctypes.c_int(min(block_limit, 2**31 - 1)))  # M_MMAP_THRESHOLD
        if ok != 1:  # older glibc caps the threshold at 32 MiB
            return False
        libc.mallopt(-1, ctypes.c_int(min(2 * block_limit, 2**31 - 1)))  # M_TRIM_THRESHOLD
        return True
    return False
