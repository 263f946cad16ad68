"""The checkpoints a prediction uses: files as given, or a cross-validation run folder's folds.

A run folder of ``fusionseg train --folds`` stands for its ``fold_*/best.pt`` (in fold order) and the
``postprocessing.json`` cross-validation chose; any other folder for its ``best.pt``.

Example:
    >>> paths, postprocessing = resolve_checkpoints([Path("runs/cv")])   # [fold_0/best.pt, ...], postprocessing.json
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fusionseg.errors import InputError
from fusionseg.inference.postprocess import POSTPROCESSING_FILE

__all__ = ["resolve_checkpoints"]


def resolve_checkpoints(paths: Sequence[str | Path]) -> tuple[list[Path], Path | None]:
    """Checkpoint files named by ``paths`` → (files, postprocessing JSON of a cross-validation run or None).

    A file is used as is. A folder stands for its ``fold_*/best.pt`` (a cross-validation run, in fold
    order; its ``postprocessing.json`` is returned when present) or else its ``best.pt``.
    """

    files: list[Path] = []
    plan = None
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        folds = sorted(path.glob("fold_*/best.pt"), key=lambda p: _fold_number(p.parent.name))
        if folds:
            files += folds
            if (path / POSTPROCESSING_FILE).is_file() and len(paths) == 1:
                plan = path / POSTPROCESSING_FILE
        elif (path / "best.pt").is_file():
            files.append(path / "best.pt")
        else:
            raise InputError(
                f"--checkpoint {path} is a folder without best.pt or fold_*/best.pt; "
                "pass a checkpoint file or a run folder"
            )
    return files, plan


def _fold_number(name: str) -> tuple[int, str]:
    tail = name.rpartition("_")[2]
    return (int(tail), name) if tail.isdigit() else (1 << 30, name)
