"""Progress bars draw on terminals only; files and pipes get no bar (and so no ``\\r`` redraws)."""

from __future__ import annotations

import io

from fusionseg.runtime.progress import progress_bar, stream_is_terminal


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_only():
    terminal = _Terminal()
    bar = progress_bar(3, "epoch 1/2", stream=terminal)
    assert bar is not None
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert "epoch 1/2" in terminal.getvalue() and "\r" in terminal.getvalue()
    assert progress_bar(3, "epoch 1/2", enabled=False, stream=terminal) is None
    assert progress_bar(3, "epoch 1/2", stream=io.StringIO()) is None  # a file or a pipe


def test_stream_is_terminal_tolerates_odd_streams():
    closed = io.StringIO()
    closed.close()
    assert not stream_is_terminal(closed) and not stream_is_terminal(None) and not stream_is_terminal(object())
    assert stream_is_terminal(_Terminal())
