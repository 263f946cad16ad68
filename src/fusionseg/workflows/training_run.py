"""``fusionseg train`` as one call: claim the run folder, then train one run or cross-validate.

:func:`run_training` checks the config, takes the run folder's lock, refuses to start over another run
unless the config resumes or overwrites it (:func:`~fusionseg.training.run_folder.claim_run_folder`),
writes ``config.yaml`` (the command's options, which repeat the run), then trains
(:func:`~fusionseg.training.trainer.train`) or, with ``cross_validate``, trains every fold asked for
(:func:`~fusionseg.workflows.crossval.run_cross_validation`). Under torchrun only rank 0 takes the lock
and writes the folder's files.

Example:
    >>> run_training(TrainConfig(data=Path("phantoms"), output=Path("runs/x"), epochs=2))
    best checkpoint: runs/x/best.pt
    0
    >>> run_training(TrainConfig(data=Path("Dataset004"), output=Path("runs/cv")), cross_validate="0,1")
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

from fusionseg.errors import InputError
from fusionseg.training.config import TrainConfig

__all__ = ["run_training"]


def run_training(
    config: TrainConfig,
    *,
    cross_validate: str | Sequence[int] | None = None,
    run_config: Mapping[str, Any] | None = None,
) -> int:
    """Train ``config`` into ``config.output`` → exit status 0 (errors raise :class:`InputError`).

    ``cross_validate``: ``"all"`` or fold numbers (``"0,1,2"``) to train as a cross-validation into
    ``output/fold_N``; ``run_config``: the options written to ``output/config.yaml`` (None: no file).
    """
    from fusionseg.files import folder_lock
    from fusionseg.training.run_folder import RUN_CONFIG_FILE, claim_run_folder, write_run_config
    from fusionseg.workflows.crossval import parse_folds

    config.check()
    if config.splits is not None and config.fold is None and cross_validate is None:
        raise InputError(
            f"--splits {config.splits} is read only with --fold or --cross-validate; add one, or leave --splits out "
            "(without them the validation cases are a seeded --val-fraction hold-out)"
        )
    is_main = os.environ.get("RANK", "0") == "0"  # under torchrun the main process holds the lock for all
    with folder_lock(config.output, "training run") if is_main else contextlib.nullcontext():
        if is_main:
            folds = None if cross_validate is None else parse_folds(cross_validate)
            claim_run_folder(config.output, resume=config.resume, overwrite=config.overwrite, folds=folds)
            if run_config is not None:
                write_run_config(config.output / RUN_CONFIG_FILE, dict(run_config))
        if cross_validate is not None:
            from fusionseg.workflows.crossval import CROSSVAL_SUMMARY, run_cross_validation

            summary = run_cross_validation(config, parse_folds(cross_validate))
            if summary:
                print(f"wrote {config.output / CROSSVAL_SUMMARY} and {config.output / 'postprocessing.json'}")
            return 0
        from fusionseg.training.trainer import train

        best = train(config)
    if is_main:
        print(f"best checkpoint: {best}")
    return 0
