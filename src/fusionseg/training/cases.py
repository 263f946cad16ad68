"""Which cases a run trains and validates on, and in which order each epoch draws them.

Example:
    >>> split_cases(["a", "b", "c", "d", "e"], val_fraction=0.2, seed=0)   # seeded hold-out
    (['a', 'b', 'd', 'e'], ['c'])
    >>> epoch_indices(3, 5, torch.Generator().manual_seed(epoch_seed(0, epoch=1, rank=0)))
    [2, 0, 1, 1, 2]                      # concatenated permutations: every case equally often
"""

from __future__ import annotations

import random

import torch

from fusionseg.errors import InputError

__all__ = ["epoch_indices", "epoch_seed", "split_cases"]


def split_cases(cases: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic (train, val) split; no validation below 2 cases or with ``val_fraction`` 0."""
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    order = list(range(len(cases)))
    random.Random(seed).shuffle(order)
    num_val = 0 if len(cases) < 2 or val_fraction == 0 else max(1, round(val_fraction * len(cases)))
    val = sorted(order[:num_val])
    train_ids = sorted(order[num_val:])
    return [cases[i] for i in train_ids], [cases[i] for i in val]


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of every random generator of ``epoch`` on process ``rank`` (a resumed run draws the same)."""
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % 2**31


def epoch_indices(num_items: int, count: int, generator: torch.Generator) -> list[int]:
    """``count`` case indices: concatenated random permutations (every case equally often)."""
    chunks, total = [], 0
    while total < count:
        chunks.append(torch.randperm(num_items, generator=generator))
        total += num_items
    return torch.cat(chunks)[:count].tolist()
