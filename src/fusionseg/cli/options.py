"""Options shared by the ``fusionseg`` commands: one concept, one name, one syntax everywhere.

Every command builds its parser from these helpers, so ``--threads``, ``--device``, ``--amp``,
``--no-progress``, ``--checkpoint``, ``--patch-size``, ``--time-budget``, ``--seed`` (a value) /
``--num-seeds`` (a count) mean the same thing in every command that has them (the table is in
docs/cli.md). A renamed option keeps its old spelling as a hidden alias (:func:`add_old_spelling`:
same value, one line on stderr naming the new name); commands take no abbreviations.

Example:
    >>> p = argparse.ArgumentParser()
    >>> add_runtime_options(p)
    >>> p.add_argument("--patch-size", type=sizes, action=SizesAction)
    >>> p.parse_args(["--patch-size", "96", "96"]).patch_size
    (96, 96)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TypeVar

from fusionseg.errors import InputError

__all__ = [
    "OldSpelling",
    "SizesAction",
    "add_old_spelling",
    "add_runtime_options",
    "boolean",
    "floats",
    "parse_json_object",
    "path",
    "positive_float",
    "positive_int",
    "sizes",
]


def sizes(text: str) -> tuple[int, ...]:
    """``"96,96"``, ``"96x96"`` or ``"96"`` → positive ints (one value per spatial axis, or one for all)."""
    try:
        values = tuple(int(v) for v in str(text).replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 96,96 or 64,64,64, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes like 96,96, got {text!r}")
    return values


class SizesAction(argparse.Action):
    """Collect sizes written as ``96,96`` or as separate words ``96 96`` into one tuple."""

    def __init__(self, option_strings, dest, **kwargs):
        kwargs.setdefault("nargs", "+")
        kwargs.setdefault("metavar", "N[,N...]")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        flat: tuple = ()
        for v in values:
            flat += v if isinstance(v, tuple) else (v,)
        setattr(namespace, self.dest, flat)


def floats(text: str) -> tuple[float, ...]:
    """``"1.0,1.0,1.5"`` → floats."""
    try:
        values = tuple(float(v) for v in str(text).replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1.0,1.0,1.5, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected numbers like 1.0,1.0,1.5, got {text!r}")
    return values


_Number = TypeVar("_Number", int, float)


def _positive(text: str, number: type[_Number], what: str) -> _Number:
    value: _Number | None
    try:
        value = number(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive {what}, got {text!r}") from None
    return value


def positive_int(text: str) -> int:
    """``"3"`` → 3; argparse error for anything but an integer ≥ 1."""
    return _positive(text, int, "integer")


def positive_float(text: str) -> float:
    """``"0.5"`` → 0.5; argparse error for anything but a finite number > 0."""
    return _positive(text, float, "number")


def path(text: str) -> Path:
    """``"data/x"`` → Path; argparse error for an empty string (``Path("")`` would silently be ``.``)."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


def boolean(text: str) -> bool:
    lowered = str(text).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_json_object(text: str, option: str, example: str) -> dict:
    """``text`` parsed as a JSON object (e.g. ``--model-kwargs``); InputError naming ``option`` otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{option} is not valid JSON ({err.msg}); e.g. '{example}'") from None
    except RecursionError:
        raise InputError(f"{option} is nested too deeply; pass a flat JSON object, e.g. '{example}'") from None
    if not isinstance(value, dict):
        raise InputError(f"{option} must be a JSON object, e.g. '{example}'")
    return value


def add_runtime_options(
    parser: argparse.ArgumentParser, *, device: bool = True, amp: bool = True, progress: bool = True
) -> None:
    """``--threads``, and optionally ``--device``, ``--amp``, ``--no-progress`` (same meaning in every command)."""
    parser.add_argument(
        "--threads",
        default="auto",
        help="CPU threads: auto = the usable cores that are idle now (default), or a number",
    )
    if device:
        parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    if amp:
        parser.add_argument(
            "--amp",
            action="store_true",
            help="mixed precision where it is faster: float16 on CUDA, bfloat16 on CPUs with native bf16 "
            "(elsewhere float32, with a note)",
        )
    if progress:
        parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress output")


class OldSpelling(argparse.Action):
    """A renamed option's old spelling: does what the option ``new`` does, after one line on stderr naming it."""

    def __init__(self, option_strings, dest, new: argparse.Action, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    @property
    def new_name(self) -> str:
        return self.new.option_strings[0]

    def __call__(self, parser, namespace, values, option_string=None):
        print(
            f"{parser.prog}: note: {option_string} is now {self.new_name} (the old name still works)", file=sys.stderr
        )
        self.new(parser, namespace, values, self.new_name)


def add_old_spelling(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Keep ``old`` working as a hidden alias of the option ``new`` (added before): same dest, type and value.

    Example:
        >>> p = argparse.ArgumentParser(prog="fusionseg train")
        >>> p.add_argument("--workers", type=int, default=0)
        >>> add_old_spelling(p, "--num-workers", "--workers")
        >>> p.parse_args(["--num-workers", "2"]).workers  # stderr: ...: note: --num-workers is now --workers
        2
    """
    target = parser._option_string_actions[new]
    # target.type may be None, argparse's own default, which typeshed's add_argument does not accept
    parser.add_argument(
        old, action=OldSpelling, new=target, dest=target.dest, nargs=target.nargs, const=target.const,
        type=target.type, choices=target.choices, metavar=target.metavar,  # type: ignore[arg-type]
        default=argparse.SUPPRESS, help=argparse.SUPPRESS,
    )  # fmt: skip
