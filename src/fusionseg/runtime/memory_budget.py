"""How much memory prediction may use for its slabs: ``--memory`` values and the default share of free RAM.

The budget bounds the working set of :mod:`fusionseg.inference.slab_inference` (the blended class scores
of a slab, their resampling to the input grid and the label conversion); the image, the model and the
output label map come on top. Without ``--memory`` the budget is a quarter of the RAM the kernel reports
as available (``MemAvailable`` of ``/proc/meminfo``, else ``os.sysconf``), capped at 1 GiB: slab size
costs no extra windows, so a small budget is nearly free in time.

Example:
    >>> parse_memory("1.5G"), parse_memory("512M"), parse_memory("2000000")
    (1610612736, 536870912, 2000000)
    >>> default_memory_budget() <= 1 << 30
    True
"""

from __future__ import annotations

import os
import re

from fusionseg.errors import InputError

__all__ = ["available_memory", "default_memory_budget", "format_bytes", "parse_memory"]

DEFAULT_SHARE = 0.25
DEFAULT_CAP = 1 << 30
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_memory(text: str | int) -> int:
    """``"2G"``, ``"512M"``, ``"1.5GiB"`` or a number of bytes → bytes; InputError naming the expected form."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise InputError(f"--memory {text!r}: give a positive size such as 2G, 512M or 1.5GiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def available_memory() -> int | None:
    """Bytes the kernel could give this process now (``MemAvailable``), or None where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_memory_budget() -> int:
    """A quarter of the available RAM, at most 1 GiB (1 GiB when the RAM cannot be read)."""
    free = available_memory()
    return DEFAULT_CAP if free is None else max(64 << 20, min(DEFAULT_CAP, int(free * DEFAULT_SHARE)))


def format_bytes(size: float) -> str:
    """``1536 << 20`` → ``"1.5 GiB"`` (B, KiB, ... PiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} PiB"
