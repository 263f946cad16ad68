"""User-facing errors: one line, actionable, shown by the CLI without a traceback."""

from __future__ import annotations

__all__ = ["FusionSegError", "InputError"]


class FusionSegError(Exception):
    """Base class of errors the CLI reports as ``fusionseg COMMAND: error: <message>`` (exit 2)."""


class InputError(FusionSegError, ValueError):
    """Bad user input (files, shapes, labels, options). The message says what is wrong and how to fix it."""
