"""Cross-validation folds in nnU-Net v2's ``splits_final.json`` format.

``splits_final.json`` is a list with one ``{"train": [case ids], "val": [case ids]}`` per fold. If the
dataset folder (or the path given) holds one, it is used as is, so folds match an nnU-Net run on the
same data; otherwise five folds are made exactly like nnU-Net v2 (``generate_crossval_split``):
case ids sorted, ``KFold(n_splits=5, shuffle=True, random_state=12345)`` from scikit-learn —
reimplemented here (NumPy ``RandomState(12345)`` shuffles ``arange(n)``, the first ``n % 5`` folds
get one extra case, each fold's ids keep the sorted order) — and written atomically beside
``dataset.json``. Fold ``"all"`` trains and validates on every case (nnU-Net's ``fold all``).

Example:
    >>> train_ids, val_ids = get_fold(scan_dataset("Dataset004_Hippocampus"), 0)
    >>> len(train_ids), len(val_ids)
    (208, 52)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TypeGuard

import numpy as np

from fusionseg.data.datasets import DatasetInfo
from fusionseg.data.json_input import read_json_file
from fusionseg.errors import InputError
from fusionseg.files import atomic_write

__all__ = [
    "NNUNET_SEED",
    "SPLITS_FILE",
    "get_fold",
    "load_or_create_splits",
    "make_splits",
    "read_splits",
    "write_splits",
]

SPLITS_FILE = "splits_final.json"
NNUNET_SEED = 12345


def _kfold(n: int, num_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, val) index arrays of scikit-learn's ``KFold(num_folds, shuffle=True, random_state=seed)``."""
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(num_folds, n // num_folds)
    sizes[: n % num_folds] += 1
    folds, start = [], 0
    for size in sizes:
        is_val = np.zeros(n, dtype=bool)
        is_val[order[start : start + size]] = True
        folds.append((np.flatnonzero(~is_val), np.flatnonzero(is_val)))
        start += size
    return folds


def make_splits(case_ids: Sequence[str], num_folds: int = 5, seed: int = NNUNET_SEED) -> list[dict[str, list[str]]]:
    """nnU-Net v2's folds of ``case_ids``: ``[{"train": [...], "val": [...]}, ...]`` (ids sorted first)."""
    if not isinstance(num_folds, int) or num_folds < 2:
        raise InputError(f"num_folds must be an integer ≥ 2, got {num_folds!r}")
    ids = sorted(str(c) for c in case_ids)
    if len(set(ids)) != len(ids):
        raise InputError("case ids must be unique to make folds; rename the duplicated cases")
    if len(ids) < num_folds:
        raise InputError(
            f"{len(ids)} training case(s) cannot make {num_folds} folds; add cases, use fewer folds or fold 'all'"
        )
    folds = _kfold(len(ids), num_folds, seed)
    return [{"train": [ids[i] for i in train], "val": [ids[i] for i in val]} for train, val in folds]


def _is_splits(splits: object) -> TypeGuard[list[dict[str, list[str]]]]:
    """Whether ``splits`` is a non-empty list of ``{"train": [str], "val": [str]}`` folds."""
    return (
        isinstance(splits, list)
        and bool(splits)
        and all(
            isinstance(f, dict)
            and all(isinstance(f.get(k), list) and all(isinstance(c, str) for c in f[k]) for k in ("train", "val"))
            for f in splits
        )
    )


def read_splits(path: str | Path, case_ids: Sequence[str] | None = None) -> list[dict[str, list[str]]]:
    """Read and check a ``splits_final.json``; with ``case_ids``, every listed id must be one of them."""
    path = Path(path)
    splits = read_json_file(path, "fix or delete it to make new folds")
    if not _is_splits(splits):
        raise InputError(
            f'{path}: expected a list of {{"train": [case ids], "val": [case ids]}} per fold (nnU-Net format); '
            "fix or delete it to make new folds"
        )
    for i, fold in enumerate(splits):
        both = sorted(set(fold["train"]) & set(fold["val"]))
        twice = sorted({c for k in ("train", "val") for c, n in Counter(fold[k]).items() if n > 1})
        if both or twice:
            what = "in both train and val (validated on what it trained on)" if both else "twice in one list"
            raise InputError(
                f"{path}: fold {i} lists case {(both or twice)[0]!r} {what}; list each case once per fold "
                "(fold 'all' trains and validates on every case) or delete the file to make new folds"
            )
    if case_ids is not None:
        known = set(case_ids)
        for i, fold in enumerate(splits):
            unknown = sorted({c for k in ("train", "val") for c in fold[k]} - known)
            if unknown:
                shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
                raise InputError(
                    f"{path}: fold {i} lists {len(unknown)} case id(s) not in the dataset ({shown}); "
                    "fix the ids or delete the file to make new folds"
                )
    return splits


def write_splits(splits: list[dict[str, list[str]]], path: str | Path) -> Path:
    """Write ``splits`` as nnU-Net does (JSON, indent 4), atomically; InputError if ``path`` is not writable."""
    path = Path(path)
    try:
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(splits, indent=4) + "\n")
    except (OSError, InputError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(
            f"{path}: cannot write the splits ({reason}); pass a writable splits path (e.g. in the run folder)"
        ) from exc
    return path


def _splits_path(info: DatasetInfo, path: str | Path | None) -> Path:
    if path is not None:
        return Path(path)
    if info.root is None:
        raise InputError("the dataset has no folder to keep splits_final.json in; pass a splits path")
    return Path(info.root) / SPLITS_FILE


def load_or_create_splits(
    info: DatasetInfo, path: str | Path | None = None, num_folds: int = 5
) -> list[dict[str, list[str]]]:
    """The folds of ``info``: read ``path`` (default ``<dataset>/splits_final.json``) if it exists,
    else make nnU-Net's ``num_folds`` folds and write them there."""
    path = _splits_path(info, path)
    ids = [c.case_id for c in info.cases]
    if path.is_file():
        return read_splits(path, ids)
    splits = make_splits(ids, num_folds)
    write_splits(splits, path)
    return splits


def get_fold(
    info: DatasetInfo, fold: int | str, path: str | Path | None = None, num_folds: int = 5
) -> tuple[list[str], list[str]]:
    """``(train case ids, validation case ids)`` of ``fold`` (0-based, or ``"all"``: every case in both).

    Folds come from :func:`load_or_create_splits`; a fold number the splits do not have, or a fold with
    no training or no validation cases → InputError.
    """
    ids = [c.case_id for c in info.cases]
    if isinstance(fold, str) and fold.strip().lower() == "all":
        return list(ids), list(ids)
    if isinstance(fold, str) and fold.strip().isdigit():
        fold = int(fold)
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)):
        raise InputError(f"fold must be a number 0..{num_folds - 1} or 'all', got {fold!r}")
    splits = load_or_create_splits(info, path, num_folds)
    if not 0 <= int(fold) < len(splits):
        where = _splits_path(info, path)
        raise InputError(
            f"fold {fold} does not exist: {where} has {len(splits)} folds; use 0..{len(splits) - 1} or 'all'"
        )
    chosen = splits[int(fold)]
    for key, what in (("train", "training"), ("val", "validation")):
        if not chosen[key]:
            where = _splits_path(info, path)
            raise InputError(
                f'fold {fold} of {where} has no {what} cases; list case ids under "{key}" or delete the file '
                "to make new folds"
            )
    return list(chosen["train"]), list(chosen["val"])
