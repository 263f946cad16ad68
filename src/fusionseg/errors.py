"""User-facing errors: one line, actionable, shown by the CLI without a traceback."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FusionSegError", "InputError", "ensure_file", "find_input_error"]


class FusionSegError(Exception):
    """Base class of errors the CLI reports as ``fusionseg COMMAND: error: <message>`` (exit 2)."""


class InputError(FusionSegError, ValueError):
    """Bad user input (files, shapes, labels, options). The message says what is wrong and how to fix it."""


def find_input_error(exc: BaseException | None) -> FusionSegError | None:
    """The user error behind ``exc`` (following ``__cause__``/``__context__``, e.g. through MONAI's
    ``RuntimeError`` wrapper around a failing transform), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, FusionSegError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def ensure_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` as a Path if it is a readable, non-empty file; :class:`InputError` naming the problem otherwise."""
    path = Path(path)
    if not path.exists():
        where = "" if path.parent.is_dir() else f" (folder {path.parent} does not exist either)"
        raise InputError(f"{what} {path} does not exist{where}; check the path")
    if path.is_dir():
        raise InputError(f"{what} {path} is a directory; pass the file inside it")
    if not os.access(path, os.R_OK):
        raise InputError(f"{what} {path} is not readable (permission denied); fix its permissions")
    if path.stat().st_size == 0:
        raise InputError(f"{what} {path} is empty (0 bytes); the copy or download was probably interrupted")
    return path
