"""What a training run is (:class:`RunDefinition`) and how one invocation runs it (:class:`Invocation`);
:class:`TrainConfig` is both, flat.

A field's home says what happens to it: a :class:`RunDefinition` field is saved in every checkpoint
(``train_args``) and in ``config.yaml``, and a resume warns when it changed (unless the field says
``compare=False``: where the data lies, the run folder, the first weights); an :class:`Invocation` field is
never compared nor saved in checkpoints, and a one-time action (``ONE_TIME``: resume, overwrite, stop after)
stays out of ``config.yaml`` too. Every field is an option of ``fusionseg train`` of the same name (unless
``NO_OPTION``), with a row in docs/cli.md (tests/test_cli_options.py checks the three agree).

Example:
    >>> config = TrainConfig(data=Path("phantoms"), model="unet", fusion="dff", epochs=2, iters_per_epoch=5)
    >>> config.check()          # InputError naming the option for bad values
    >>> config.definition().plain()["epochs"], config.invocation().device
    (2, 'auto')
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fusionseg.errors import InputError
from fusionseg.training.optim import OPTIMIZERS

__all__ = [
    "NO_OPTION",
    "ONE_TIME",
    "RENAMED_FIELDS",
    "Invocation",
    "RunDefinition",
    "TrainConfig",
    "current_field_names",
    "one_time_fields",
    "parse_fold",
]

MAX_RATE = 1e3  # --lr / --weight-decay above this overflow the optimizer's float32 arithmetic long before 1e38
MAX_WORKERS_PER_CORE = 4  # --workers beyond this only exhausts memory (a process each)

# Field metadata: a setting of the Python API only (no option of `fusionseg train`).
NO_OPTION = MappingProxyType({"option": False})
# Field metadata: an action of this invocation (left out of config.yaml: a rerun from it does not repeat it).
ONE_TIME = MappingProxyType({"one_time": True})

# Old names of fields → today's, for the ``train_args`` of checkpoints written before a rename.
RENAMED_FIELDS = {"num_workers": "workers"}


def current_field_names(saved: dict[str, Any]) -> dict[str, Any]:
    """Saved ``train_args`` under today's field names: ``{"num_workers": 2}`` → ``{"workers": 2}``."""
    return {RENAMED_FIELDS.get(key, key): value for key, value in saved.items()}


def parse_fold(value: int | str) -> int | str:
    """A fold number ≥ 0 or ``"all"`` (InputError naming ``--fold`` otherwise)."""
    text = str(value).strip().lower()
    if text == "all":
        return "all"
    if isinstance(value, bool) or not text.isdigit():
        raise InputError(f"--fold must be a fold number (0, 1, ...) or 'all', got {value!r}")
    return int(text)


def _plain(value: Any) -> Any:
    """JSON-able copy: paths → str, tuples → lists (also inside lists and dicts)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(x) for x in value]
    if isinstance(value, dict):
        return {k: _plain(x) for k, x in value.items()}
    return value


@dataclass
class RunDefinition:
    """What a training run is: its data, model and how it learns. One iteration trains on ``batch_size`` patches.

    Two definitions are equal when they describe the same run: the fields with ``compare=False`` may
    differ (the data moved, another run folder, the first weights a resume no longer reads).
    """

    data: Path = field(compare=False)
    output: Path = field(default=Path("runs/fusionseg"), compare=False)
    model: str = "unet"
    fusion: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    deep_supervision: bool | None = None  # None: the model's own default
    epochs: int = 50
    iters_per_epoch: int = 50
    time_budget: float | None = None  # wall seconds of the whole run (validation and checkpoint writes included)
    batch_size: int = 2
    patch_size: tuple[int, ...] | None = None
    target_spacing: tuple[float, ...] | str | None = None  # mm per axis, "median", "keep", or None (the plan's)
    optimizer: str = "sgd"
    lr: float | None = None  # default 1e-2 (sgd) / 1e-3 (adamw)
    weight_decay: float | None = None  # default 3e-5 (sgd) / 1e-2 (adamw)
    momentum: float = field(default=0.99, metadata=NO_OPTION)
    grad_clip: float | None = 12.0
    amp: bool = False
    channels_last: bool = False
    augment: bool = True
    val_every: int = 1
    val_fraction: float = 0.2  # hold-out when no fold is given
    val_overlap: float = field(default=0.25, metadata=NO_OPTION)
    fold: int | str | None = None  # nnU-Net fold of splits_final.json (0-based), "all" (train on every case), or None
    num_folds: int = 5  # folds made when splits_final.json does not exist yet
    splits: Path | None = None  # splits_final.json to read or write (default: in the dataset folder)
    seed: int = 0
    # initial weights (fusionseg checkpoint or state_dict), loaded where names/shapes fit; read when the run starts
    init: Path | None = field(default=None, compare=False)
    pretrained: tuple[Path, ...] | None = None  # local ImageNet Swin checkpoints for the encoders (DS-TransUNet)

    def check(self) -> None:
        """:class:`InputError` naming the option for values that cannot work."""
        for name in ("epochs", "iters_per_epoch", "batch_size", "val_every"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise InputError(f"--time-budget must be > 0 seconds, got {self.time_budget}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.fold is not None:
            self.fold = parse_fold(self.fold)
        if isinstance(self.num_folds, bool) or not isinstance(self.num_folds, int) or self.num_folds < 2:
            raise InputError(f"--num-folds must be an integer ≥ 2, got {self.num_folds!r}")
        for name, value in (("lr", self.lr), ("weight_decay", self.weight_decay), ("grad_clip", self.grad_clip)):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise InputError(f"--{name.replace('_', '-')} must be a finite number ≥ 0, got {value}")
        for name, value in (("lr", self.lr), ("weight_decay", self.weight_decay)):
            if value is not None and value > MAX_RATE:
                raise InputError(f"--{name.replace('_', '-')} must be ≤ {MAX_RATE:g}, got {value:g}; e.g. 1e-2")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not -(2**63) <= self.seed < 2**63:
            raise InputError(f"--seed must be an integer between -2**63 and 2**63 - 1, got {self.seed!r}; e.g. 0")
        if str(self.optimizer).lower() not in OPTIMIZERS:
            raise InputError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if not Path(self.data).is_dir():
            raise InputError(
                f"--data {self.data} is not a folder; pass a dataset folder (see `fusionseg train --help`)"
            )
        _check_outside_cases("--output", self.output, self.data)

    def plain(self) -> dict[str, Any]:
        """JSON-able copy of every field (paths → str, tuples → lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def changes_from(self, saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """(field, saved value, value now) of each compared field that differs from ``saved`` (the ``train_args``
        of a checkpoint; fields it lacks count as unchanged, old field names as today's), by field name."""
        saved = current_field_names(saved)
        changed = []
        for f in sorted(fields(RunDefinition), key=lambda f: f.name):
            now = _plain(getattr(self, f.name))
            if f.compare and f.name in saved and saved[f.name] != now:
                changed.append((f.name, saved[f.name], now))
        return changed


@dataclass
class Invocation:
    """How one invocation runs a training run: this machine's settings and what to do with the run folder now.
    Results do not depend on them (never compared on resume, not in checkpoints)."""

    device: str = "auto"
    threads: str | int | None = None  # CPU intra-op threads: None = leave as is, "auto" = idle usable cores, a count
    progress: bool = True
    workers: int = 0  # processes that load patches and preprocess the cases the cache lacks (0: this one)
    cache: Path | None = None  # root of the preprocessed-data cache (None: $FUSIONSEG_CACHE or ~/.cache/...)
    resume: bool = field(default=False, metadata=ONE_TIME)
    overwrite: bool = field(default=False, metadata=ONE_TIME)  # replace the run in ``output`` (else train refuses)
    stop_after: int | None = field(default=None, metadata=ONE_TIME)  # epochs to run now, then exit

    def check(self) -> None:
        """:class:`InputError` naming the option for values that cannot work."""
        if self.stop_after is not None and self.stop_after < 1:
            raise InputError(f"--stop-after must be ≥ 1 epoch, got {self.stop_after}")
        if self.resume and self.overwrite:
            raise InputError("--resume and --overwrite exclude each other: continue the run, or replace it")
        if self.workers < 0:
            raise InputError(f"--workers must be ≥ 0, got {self.workers}")
        if self.workers > (limit := MAX_WORKERS_PER_CORE * (os.cpu_count() or 1)):
            raise InputError(
                f"--workers {self.workers} is more processes than this machine can run ({limit} at most: "
                f"{MAX_WORKERS_PER_CORE} per core); pass about the number of cores, or 0"
            )


def one_time_fields() -> tuple[str, ...]:
    """Names of the :class:`Invocation` fields that are actions of one invocation (``ONE_TIME``)."""
    return tuple(f.name for f in fields(Invocation) if f.metadata.get("one_time"))


@dataclass
class TrainConfig(Invocation, RunDefinition):
    """A training run and how this invocation runs it: every field of :class:`RunDefinition`, then of
    :class:`Invocation`, flat (``config.epochs``, ``config.device``); what :class:`~fusionseg.training.trainer.Trainer`
    takes. :meth:`definition` is what checkpoints save."""

    def check(self) -> None:
        """:class:`InputError` naming the option for values that cannot work."""
        RunDefinition.check(self)
        Invocation.check(self)
        _check_outside_cases("--cache", self.cache, self.data)

    def definition(self) -> RunDefinition:
        """The run this config describes (saved in checkpoints as ``train_args``)."""
        return RunDefinition(**{f.name: getattr(self, f.name) for f in fields(RunDefinition)})

    def invocation(self) -> Invocation:
        """How this invocation runs it."""
        return Invocation(**{f.name: getattr(self, f.name) for f in fields(Invocation)})


# Folders of a dataset that hold its cases (nnU-Net/MSD, images/ + masks/ layouts): nothing is written there.
CASE_FOLDERS = {"imagestr", "labelstr", "imagests", "labelsts", "images", "masks", "test", "train", "val", "labels"}


def _in_case_folder(path: Path, data: Path) -> bool:
    """Whether ``path`` (inside ``data``) lies in one of the dataset's case folders (``data/images/...``)."""
    return path.relative_to(data).parts[0].lower() in CASE_FOLDERS


def _check_outside_cases(option: str, path: Path | None, data: Path) -> None:
    """InputError when ``path`` (given as ``option``) is the dataset folder or lies in its case folders."""
    real, root = (None if path is None else Path(os.path.realpath(path))), Path(os.path.realpath(data))
    if real is not None and (real == root or (root in real.parents and _in_case_folder(real, root))):
        raise InputError(
            f"{option} {path} lies in the dataset's own files (--data {data}), which are only read: "
            f"choose a {option} outside them, e.g. {root.parent / 'runs'}"
        )
