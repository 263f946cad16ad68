"""``fusionseg plan``, ``fusionseg preprocess`` and ``fusionseg relabel``, each as one call.

:func:`run_plan` fingerprints and plans a dataset and writes ``plans.json`` to its cache folder;
:func:`run_preprocess` plans it and preprocesses every case to that cache (resumable);
:func:`run_relabel` renumbers its label values (:func:`fusionseg.data.relabel.relabel_dataset`). Each
prints what it did and returns the command's exit status.

Example:
    >>> run_plan(Path("Dataset001_Heart"), patch_size=(96, 96, 96))
    ...
    wrote ~/.cache/fusionseg/preprocessed/Dataset001_Heart-.../plans.json
    0
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fusionseg.errors import InputError

__all__ = ["run_plan", "run_preprocess", "run_relabel"]


def run_plan(
    data: Path,
    *,
    cache: Path | None = None,
    patch_size: Sequence[int] | None = None,
    target_spacing: Sequence[float] | str | None = None,
    batch_size: int = 2,
) -> int:
    """Plan ``data`` (target spacing, patch, batch size, normalisation), print it, write plans.json → 0."""
    from fusionseg.data.plan import PLAN_FILE, format_plan, save_plan
    from fusionseg.data.preprocess import cache_folder
    from fusionseg.files import ensure_writable_dir

    _, plan = _plan(data, cache, patch_size, target_spacing, batch_size, workers=0)
    print(format_plan(plan))
    path = save_plan(plan, ensure_writable_dir(cache_folder(plan, cache), "cache folder") / PLAN_FILE)
    print(f"wrote {path}")
    return 0


def run_preprocess(
    data: Path,
    *,
    cache: Path | None = None,
    patch_size: Sequence[int] | None = None,
    target_spacing: Sequence[float] | str | None = None,
    batch_size: int = 2,
    workers: int = 0,
    progress: bool = True,
) -> int:
    """Plan ``data`` and preprocess every case to the cache with ``workers`` processes → 1 if a case failed, else 0."""
    from fusionseg.data.plan import format_plan
    from fusionseg.data.preprocess import preprocess_dataset

    if workers < 0:
        raise InputError(f"--workers must be ≥ 0, got {workers}")
    info, plan = _plan(data, cache, patch_size, target_spacing, batch_size, workers)
    print(format_plan(plan))
    report = preprocess_dataset(info, plan, cache, workers, progress)
    return 1 if report.failed else 0


def _plan(data: Path, cache, patch_size, target_spacing, batch_size: int, workers: int):
    """(dataset info, plan) of ``data``; the voxel statistics are read by ``workers`` processes too."""
    from fusionseg.data import scan_dataset
    from fusionseg.data.plan import plan_dataset

    info = scan_dataset(data)
    if info.mask_rule:
        print(f"note: masks ({info.layout}): {info.mask_rule}")
    plan = plan_dataset(info, target_spacing, patch_size, batch_size, cache=cache, workers=workers)
    return info, plan


def run_relabel(data: Path, output: Path | None = None, *, in_place: bool = False) -> int:
    """Renumber the label values of the dataset ``data`` to 0..K-1, into ``output`` or ``in_place`` → 0."""
    from fusionseg.data.relabel import relabel_dataset

    relabel_dataset(data, output, in_place=in_place)
    return 0
