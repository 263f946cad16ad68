"""User-facing errors: one line, actionable, shown by the CLI without a traceback."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["CASE_ERRORS", "FusionSegError", "InputError", "find_input_error", "for_each_case"]


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


# What a bad case raises (unreadable file, wrong shape, out of memory, ...): the case fails, the others go on.
CASE_ERRORS = (InputError, ValueError, OSError, RuntimeError, MemoryError, AssertionError)


def for_each_case(
    cases: Sequence[tuple[str, list[Path]]],
    work: Callable[[str, list[Path]], Path],
    progress: bool = True,
    done: Callable[[str, list[Path]], Path | None] | None = None,
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Run ``work(case_id, files) -> written path`` on every case; a case raising one of :data:`CASE_ERRORS`
    is recorded with its message's first line and the next case runs → (written paths, [(case_id, message)]).

    ``done(case_id, files)`` → the complete output of a case an earlier, interrupted run already wrote
    (skipped, counted as written), else None.
    """
    written, failed = [], []
    finished = {cid: done(cid, files) for cid, files in cases} if done is not None else {}
    skipped = [path for path in finished.values() if path is not None]
    if skipped and progress:
        same = "the same model, options and inputs"
        print(f"{len(skipped)} of {len(cases)} case(s) already written with {same}; skipped")
    todo = [(cid, files) for cid, files in cases if finished.get(cid) is None]
    for i, (cid, files) in enumerate(todo, 1):
        start = time.perf_counter()
        try:
            out_path = work(cid, files)
        except CASE_ERRORS as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            failed.append((cid, message))
            if progress:
                print(f"[{i}/{len(todo)}] {cid}: FAILED: {message}", file=sys.stderr)
            continue
        written.append(out_path)
        if progress:
            print(f"[{i}/{len(todo)}] {cid} → {out_path} ({time.perf_counter() - start:.1f} s)")
    return skipped + written, failed
