"""Deterministic fault injection for tests: ``FUSIONSEG_FAULT=point`` or ``point:N`` SIGKILLs the process.

Code calls :func:`maybe_fail` at named points (e.g. ``"preprocess.mid_case"``); when the environment
variable names that point the process kills itself with SIGKILL at the N-th call (1-based, default
the first), exactly like a power cut or the OOM killer would, so tests can check that whatever was
written is either complete or absent.

Example:
    FUSIONSEG_FAULT=preprocess.mid_case:3 fusionseg preprocess --data DIR   # dies inside the 3rd case
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV", "maybe_fail"]

ENV = "FUSIONSEG_FAULT"
_calls: dict[str, int] = {}


def maybe_fail(point: str) -> None:
    """SIGKILL this process if ``FUSIONSEG_FAULT`` names ``point`` and this is its N-th call."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name != point:
        return
    _calls[point] = _calls.get(point, 0) + 1
    if _calls[point] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
