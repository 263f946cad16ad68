"""A training run's state on disk, and how ``resume`` reads it back.

At every epoch boundary the run folder gets ``last.pt`` (model, optimizer, scheduler, scaler, RNG
states, counters and history: :class:`TrainState`), then ``best.pt`` when the validation Dice
improved, then ``log.csv`` and the learning curve. ``last.pt`` comes first so that a resume always
finds the newest state; it records ``is_best``, so a kill before ``best.pt`` is written is repaired
on resume (:meth:`RunFiles.repair_best`). A resume reads the first readable of ``last.pt``,
``best.pt`` and warns about each setting of the run that changed since (:func:`restore_training`).

Example:
    >>> files = RunFiles(Path("runs/x"))
    >>> ckpt, path = files.newest_checkpoint(log=print)   # None when neither file is readable
    >>> state = restore_training(ckpt, path, model, optimizer, scheduler, scaler, config.definition(), print)
    >>> state.epoch, state.best
    (3, 0.82)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fusionseg.checkpoints.checkpoint import check_fields, load_checkpoint, restore_rng_state, save_checkpoint
from fusionseg.errors import InputError
from fusionseg.faults import maybe_fail
from fusionseg.files import write_csv_atomic
from fusionseg.nets.weights import one_line
from fusionseg.training.config import RunDefinition

__all__ = ["CSV_FIELDS", "RunFiles", "TrainState", "restore_training"]

CSV_FIELDS = ("epoch", "step", "train_loss", "val_dice", "lr", "train_time_s", "epoch_time_s")


@dataclass
class TrainState:
    """Counters and history of a run (saved in ``last.pt``, restored by ``resume``)."""

    epoch: int = 0
    step: int = 0
    best_metric: float = -math.inf
    train_time: float = 0.0  # seconds spent in training iterations (validation and writes excluded)
    run_time: float = 0.0  # wall seconds of the run up to the last checkpoint (what the time budget counts)
    budget_spent: float | None = None  # the time budget the run ended on (a rerun with it trains no more)
    training_start: float | None = None  # run_time when training began: the LR schedule spans the rest of the budget
    history: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)  # {"step", "train_loss", "time_s"} every few iterations

    @property
    def best(self) -> float | None:
        return self.best_metric if math.isfinite(self.best_metric) else None

    def checkpoint_entries(self) -> dict[str, Any]:
        """What a checkpoint holds of the state beyond the counters of
        :func:`~fusionseg.checkpoints.checkpoint.build_checkpoint`."""
        return {
            "train_time": float(self.train_time),
            "run_time": float(self.run_time),
            "budget_spent": self.budget_spent,
            "training_start": self.training_start,
            "history": self.history,
            "curve": self.curve,
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> TrainState:
        """The state a checkpoint was written at (older checkpoints lack some entries: defaults)."""
        best = ckpt.get("best_metric")
        return cls(
            epoch=int(ckpt.get("epoch", 0)),
            step=int(ckpt.get("step", 0)),
            best_metric=-math.inf if best is None else float(best),
            train_time=float(ckpt.get("train_time", 0.0)),
            run_time=float(ckpt.get("run_time", ckpt.get("train_time", 0.0))),
            budget_spent=ckpt.get("budget_spent"),
            training_start=ckpt.get("training_start"),
            history=list(ckpt.get("history", [])),
            curve=list(ckpt.get("curve", [])),
        )


class RunFiles:
    """The files of a run folder: ``last.pt``, ``best.pt``, ``log.csv``, ``learning_curve.png``."""

    def __init__(self, output: Path) -> None:
        self.output = Path(output)
        self.last_path, self.best_path = self.output / "last.pt", self.output / "best.pt"

    def save(self, ckpt: dict, state: TrainState, as_best: bool, finished: bool) -> None:
        """``last.pt`` (with ``finished`` and ``is_best``), then ``best.pt`` (when ``as_best``), then the logs."""
        save_checkpoint(self.last_path, {**ckpt, "finished": finished, "is_best": as_best})
        maybe_fail("train.checkpoint")
        if as_best:
            save_checkpoint(self.best_path, ckpt)
        self.write_logs(state)

    def write_logs(self, state: TrainState) -> None:
        """``log.csv`` (rewritten from the history: a resumed run's log has no duplicated epochs) and the
        learning curve."""
        from fusionseg.evaluation.report import plot_learning_curve

        write_csv_atomic(self.output / "log.csv", state.history, CSV_FIELDS)
        plot_learning_curve(state.history, self.output / "learning_curve.png", curve=state.curve)

    def newest_checkpoint(self, log: Callable[..., None]) -> tuple[dict, Path] | None:
        """The first readable of ``last.pt``, ``best.pt`` → (checkpoint, path); None when none is.

        An unreadable file (torn by a crash of an older writer, emptied by a full disk) is reported in one line.
        """
        for path in (self.last_path, self.best_path):
            if not path.exists():
                continue
            try:
                ckpt = load_checkpoint(path)
                check_fields(ckpt, str(path))
                return ckpt, path
            except InputError as err:
                log(f"warning: --resume: skipping {path}: {err}")
        return None

    def repair_best(self, ckpt: dict, path: Path) -> None:
        """Write ``best.pt`` from ``last.pt`` (``ckpt``, read from ``path``) when the run was killed between them."""
        best_written = self.best_path.exists() and self.best_path.stat().st_mtime_ns >= path.stat().st_mtime_ns
        if path == self.last_path and ckpt.get("is_best") and not best_written:
            save_checkpoint(self.best_path, {k: v for k, v in ckpt.items() if k not in ("finished", "is_best")})


def restore_training(
    ckpt: dict,
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    definition: RunDefinition,
    log: Callable[..., None],
) -> TrainState:
    """Load ``ckpt`` (read from ``path``) into the model, optimizer, scheduler, scaler and the random
    generators → the run's :class:`TrainState`. InputError when it holds another model or optimizer; one
    warning per setting of ``definition`` that differs from the run's (the results will differ)."""
    saved_model, config = ckpt.get("model", {}), model.config
    if saved_model.get("name") != config["name"] or saved_model.get("kwargs") != config["kwargs"]:  # type: ignore[index]
        raise InputError(
            f"--resume: {path} holds model {saved_model}, not {config}; use the same --model/--fusion options"
        )
    for key, saved, now in definition.changes_from(ckpt.get("train_args") or {}):
        log(f"warning: resuming with {key}={now}, but the run used {saved}; results differ")
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        raise InputError(f"--resume: {path} does not fit the model ({one_line(str(err), 160)})") from None
    if ckpt.get("optimizer") is None:  # e.g. written by import-weights: weights only
        log(
            f"note: {path} holds weights only (no optimizer state, e.g. from import-weights); continuing from "
            f"epoch {int(ckpt.get('epoch', 0))} with a fresh optimizer and learning-rate schedule"
        )
    else:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scheduler") is not None:
                scheduler.load_state_dict(ckpt["scheduler"])
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise InputError(
                f"--resume: the optimizer state in {path} does not fit ({one_line(str(err), 120)}); use the same "
                "--optimizer, or start a new run with --init"
            ) from None
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    restore_rng_state(ckpt.get("rng"))
    log(f"resuming from {path} at epoch {ckpt.get('epoch', 0)} (step {ckpt.get('step', 0)})")
    return TrainState.from_checkpoint(ckpt)
