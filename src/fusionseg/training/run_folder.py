"""One run per output folder: refuse to start a new run over the checkpoints of another.

Example:
    >>> claim_run_folder(Path("runs/x"))   # InputError when runs/x holds last.pt or best.pt
"""

from __future__ import annotations

from pathlib import Path

from fusionseg.checkpoints.checkpoint import (
    load_checkpoint,
)
from fusionseg.errors import InputError

__all__ = ["RUN_CHECKPOINTS", "claim_run_folder"]


RUN_CHECKPOINTS = ("last.pt", "best.pt")


def claim_run_folder(
    output: Path, *, resume: bool = False, overwrite: bool = False, folds: list[int] | str | None = None
) -> None:
    """Refuse to start a new run over the run already in ``output`` (its checkpoints, or those of the
    cross-validation ``folds`` about to be trained: a list, or ``"all"``) unless ``resume`` continues it or
    ``overwrite`` replaces it (the old checkpoints are deleted then).

    >>> claim_run_folder(Path("runs/x"))   # InputError when runs/x holds last.pt or best.pt
    """
    output = Path(output)
    found = [output / name for name in RUN_CHECKPOINTS]
    if folds is not None:
        dirs = sorted(output.glob("fold_*")) if folds == "all" else [output / f"fold_{k}" for k in folds]
        found += [d / name for d in dirs for name in RUN_CHECKPOINTS]
    found = [p for p in found if p.is_file()]
    if resume or not found:
        return
    if overwrite:
        for path in found:
            path.unlink(missing_ok=True)
        return
    try:
        state = "finished" if load_checkpoint(found[0]).get("finished") else "unfinished"
    except InputError:
        state = "unreadable"
    raise InputError(
        f"--output {output} already holds a run ({found[0].relative_to(output)}, {state}); continue it with --resume, "
        "replace it with --overwrite, or choose another --output"
    )
