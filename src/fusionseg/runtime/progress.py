"""Progress bars that only draw on a terminal: logs get one line per epoch or case, never bar redraws.

A tqdm bar rewrites its line with ``\\r`` several times a second; written to a file or a pipe that becomes
kilobytes of redraws per minute. :func:`progress_bar` returns a bar only when the stream it draws on is a
terminal, else ``None`` — callers then print their one summary line per epoch (or per case) as usual.

Example:
    >>> bar = progress_bar(total=25, desc="epoch 1/12")   # None under pytest / in `cmd > log 2>&1`
    >>> for _ in range(25):
    ...     if bar is not None:
    ...         bar.update(1)
"""

from __future__ import annotations

import sys
from typing import IO, Any

__all__ = ["progress_bar", "stream_is_terminal"]


def stream_is_terminal(stream: IO | None) -> bool:
    """True when ``stream`` is an interactive terminal (False for files, pipes, captured output)."""
    try:
        return stream is not None and bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(total: int, desc: str, enabled: bool = True, stream: IO | None = None) -> Any | None:
    """A ``tqdm`` bar of ``total`` steps on ``stream`` (default stderr) if ``enabled`` and a terminal, else None."""
    stream = sys.stderr if stream is None else stream
    if not (enabled and stream_is_terminal(stream)):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=stream)
