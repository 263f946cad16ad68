"""User-facing errors: one line, actionable, shown by the CLI without a traceback."""

from __future__ import annotations

__all__ = ["FusionSegError", "InputError", "find_input_error"]


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
