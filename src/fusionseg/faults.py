"""Fault injection for tests: die as a pre-empted job would, at a named point of a long command.

``FUSIONSEG_FAULT="point"`` or ``"point:N"`` kills the process with SIGKILL at the N-th call (1-based,
default 1) of :func:`maybe_fail` with that ``point``. The variable is read once, at import; unset,
a call costs one string comparison.

Example:
    $ FUSIONSEG_FAULT=train.step:5 fusionseg train ...   # killed during the 5th training iteration
"""

from __future__ import annotations

import os
import signal

__all__ = ["maybe_fail"]

_POINT, _, _COUNT = os.environ.get("FUSIONSEG_FAULT", "").partition(":")
_calls_left = int(_COUNT or 1)


def maybe_fail(point: str) -> None:
    """SIGKILL this process if ``point`` is the one named by ``FUSIONSEG_FAULT`` and its count is reached."""
    global _calls_left
    if point != _POINT:
        return
    _calls_left -= 1
    if _calls_left <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
