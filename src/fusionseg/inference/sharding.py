"""Which cases this process predicts when several share a cohort: ``--shard I/N`` or torchrun's RANK/WORLD_SIZE.

Shard ``I`` of ``N`` (0-based) takes every ``N``-th case from the ``I``-th of the sorted case list, so the
shards of one cohort are disjoint and cover it. Under ``torchrun`` (``WORLD_SIZE`` > 1) each rank takes shard
``RANK`` of ``WORLD_SIZE``; an explicit ``--shard`` wins. The outputs' resumable markers make a rerun (of any
shard layout) skip finished cases and redo those of a killed process.

Example:
    >>> parse_shard("1/3")
    (1, 3)
    >>> take_shard(["a", "b", "c", "d", "e"], (1, 3))
    ['b', 'e']
    >>> shard_from_env({"RANK": "2", "WORLD_SIZE": "4"})
    (2, 4)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TypeVar

from fusionseg.errors import InputError

__all__ = ["choose_shard", "parse_shard", "shard_from_env", "shard_lock_name", "take_shard"]

T = TypeVar("T")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` with 0 <= I < N → (I, N); InputError otherwise."""
    index, sep, count = str(text).partition("/")
    if not (sep and index.strip().isdigit() and count.strip().isdigit()) or not 0 <= int(index) < int(count):
        raise InputError(f"--shard {text!r}: give I/N with 0 <= I < N, e.g. --shard 0/4 ... --shard 3/4")
    return int(index), int(count)


def shard_from_env(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) under torchrun with more than one process, else None."""
    environ = os.environ if environ is None else environ
    try:
        world, rank = int(environ.get("WORLD_SIZE", "1")), int(environ.get("RANK", "0"))
    except ValueError as exc:
        raise InputError(f"RANK / WORLD_SIZE must be integers, got {exc}; start the processes with torchrun") from exc
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise InputError(
            f"RANK {rank} is outside 0..{world - 1} (WORLD_SIZE {world}); start the processes with torchrun"
        )
    return rank, world


def choose_shard(option: str | None, environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``--shard`` when given, else torchrun's rank, else None (all cases)."""
    return parse_shard(option) if option else shard_from_env(environ)


def take_shard(cases: Sequence[T], shard: tuple[int, int] | None) -> list[T]:
    """The cases of ``shard`` (every N-th from the I-th), or all of them."""
    if shard is None:
        return list(cases)
    index, count = shard
    return list(cases[index::count])


def shard_lock_name(shard: tuple[int, int] | None) -> str:
    """The lock file of one shard's writer in a shared output folder (``.fusionseg-lock`` for a whole run).

    Shards of one cohort write disjoint cases into one folder, so each holds its own lock: a second process
    on the same shard is refused, the other shards are not.
    """
    return ".fusionseg-lock" if shard is None else f".fusionseg-lock-shard-{shard[0]}-of-{shard[1]}"
