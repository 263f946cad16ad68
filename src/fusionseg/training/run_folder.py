"""One run per output folder: refuse to start a new run over the checkpoints of another; the folder's
``config.yaml`` (the command's options: ``fusionseg train --config RUN/config.yaml`` repeats the run).

Example:
    >>> claim_run_folder(Path("runs/x"))   # InputError when runs/x holds last.pt or best.pt
    >>> write_run_config(Path("runs/x") / RUN_CONFIG_FILE, {"data": "phantoms", "epochs": 2})
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fusionseg.checkpoints.checkpoint import load_checkpoint
from fusionseg.errors import InputError

__all__ = ["RUN_CHECKPOINTS", "RUN_CONFIG_FILE", "claim_run_folder", "write_run_config"]


RUN_CHECKPOINTS = ("last.pt", "best.pt")
RUN_CONFIG_FILE = "config.yaml"


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


def write_run_config(path: str | os.PathLike, options: dict[str, Any]) -> Path:
    """Write ``options`` (option name → plain value) to ``path`` as YAML, atomically; keys are written with -."""
    import yaml

    from fusionseg.files import write_text_atomic

    def plain(value: Any) -> Any:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    body = {k.replace("_", "-"): plain(v) for k, v in options.items()}
    header = "# fusionseg train --config this file repeats the run (command-line options override it)\n"
    return write_text_atomic(path, header + yaml.safe_dump(body, sort_keys=False, default_flow_style=None))
