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

__all__ = ["FAULT_POINTS", "check_environment", "maybe_fail"]

# Every point fusionseg calls maybe_fail at (tests/test_hostile_stages.py checks the list against the sources).
FAULT_POINTS = (
    "checkpoint.write", "files.write", "predict.probabilities", "preprocess.case_written", "preprocess.mid_case",
    "train.build_model", "train.checkpoint", "train.load_data", "train.step",
)  # fmt: skip

_POINT, _, _COUNT = os.environ.get("FUSIONSEG_FAULT", "").partition(":")
_VALID = (not _COUNT or (_COUNT.isdigit() and int(_COUNT) >= 1)) and all(c.isalnum() or c in "._-" for c in _POINT)
_calls_left = int(_COUNT) if _VALID and _COUNT else 1
# Why the variable is malformed: reported by check_environment (the CLI calls it first), never at import.
_PROBLEM = None if _VALID else f"FUSIONSEG_FAULT={os.environ.get('FUSIONSEG_FAULT')!r} is malformed"


def check_environment() -> None:
    """:class:`~fusionseg.errors.InputError` (one line) when ``FUSIONSEG_FAULT`` is set but malformed or names
    no point of fusionseg (a typo would silently never fire)."""
    _check_syntax()
    if _POINT and _POINT not in FAULT_POINTS:
        from fusionseg.errors import InputError

        raise InputError(
            f"FUSIONSEG_FAULT={os.environ.get('FUSIONSEG_FAULT')!r} names no fault point; use one of "
            f"{', '.join(FAULT_POINTS)} (e.g. train.step:5), or unset it"
        )


def _check_syntax() -> None:
    if _PROBLEM:
        from fusionseg.errors import InputError

        raise InputError(f"{_PROBLEM}; use point or point:N with N ≥ 1 (e.g. train.step:5), or unset it")


def maybe_fail(point: str) -> None:
    """SIGKILL this process if ``point`` is the one named by ``FUSIONSEG_FAULT`` and its count is reached."""
    global _calls_left
    if point != _POINT:
        return
    _check_syntax()
    _calls_left -= 1
    if _calls_left <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
