"""The description of a training run (:class:`TrainConfig`), stored in every checkpoint as ``train_args``,
and run-config files (``fusionseg train --config run.yaml``; every run folder gets ``config.yaml``).

Example:
    >>> config = TrainConfig(data=Path("phantoms"), model="unet", fusion="dff", epochs=2, iters_per_epoch=5)
    >>> config.check()          # InputError naming the option for bad values
    >>> read_run_config("run.yaml")                 # {"iters_per_epoch": 5, ...}: keys with _ in place of -
    >>> write_run_config("runs/x/config.yaml", {"data": "phantoms", "epochs": 2})
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fusionseg.errors import InputError
from fusionseg.training.optim import OPTIMIZERS

__all__ = [
    "RENAMED_FIELDS",
    "RUN_CONFIG_FILE",
    "TrainConfig",
    "current_field_names",
    "nearest_key",
    "parse_fold",
    "read_run_config",
    "write_run_config",
]

RUN_CONFIG_FILE = "config.yaml"
MAX_RUN_CONFIG_BYTES = 1 << 20  # a run's config.yaml is about 1 kB
MAX_RATE = 1e3  # --lr / --weight-decay above this overflow the optimizer's float32 arithmetic long before 1e38
MAX_WORKERS_PER_CORE = 4  # --workers beyond this only exhausts memory (a process each)


# Old names of TrainConfig fields → today's, for the ``train_args`` of checkpoints written before a rename.
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


@dataclass
class TrainConfig:
    """Everything a training run depends on. One iteration trains on ``batch_size`` patches."""

    data: Path
    output: Path = Path("runs/fusionseg")
    model: str = "unet"
    fusion: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    deep_supervision: bool | None = None  # None: the model's own default
    epochs: int = 50
    iters_per_epoch: int = 50
    time_budget: float | None = None  # wall seconds of the whole run (validation and checkpoint writes included)
    stop_after: int | None = None  # epochs to run in this invocation, then exit (continue with resume)
    batch_size: int = 2
    patch_size: tuple[int, ...] | None = None
    target_spacing: tuple[float, ...] | str | None = None  # mm per axis, "median", "keep", or None (the plan's)
    optimizer: str = "sgd"
    lr: float | None = None  # default 1e-2 (sgd) / 1e-3 (adamw)
    weight_decay: float | None = None  # default 3e-5 (sgd) / 1e-2 (adamw)
    momentum: float = 0.99
    grad_clip: float | None = 12.0
    amp: bool = False
    channels_last: bool = False
    augment: bool = True
    val_every: int = 1
    val_fraction: float = 0.2  # hold-out when no fold is given
    val_overlap: float = 0.25
    fold: int | str | None = None  # nnU-Net fold of splits_final.json (0-based), "all" (train on every case), or None
    num_folds: int = 5  # folds made when splits_final.json does not exist yet
    splits: Path | None = None  # splits_final.json to read or write (default: in the dataset folder)
    seed: int = 0
    resume: bool = False
    overwrite: bool = False  # replace the run already in ``output`` (without it, train refuses to)
    init: Path | None = None  # initial weights (fusionseg checkpoint or state_dict), loaded where names/shapes fit
    pretrained: tuple[Path, ...] | None = None  # local ImageNet Swin checkpoints for the encoders (DS-TransUNet)
    workers: int = 0  # processes that load patches and preprocess the cases the cache lacks (0: this one)
    cache: Path | None = None  # root of the preprocessed-data cache (None: $FUSIONSEG_CACHE or ~/.cache/...)
    device: str = "auto"
    threads: str | int | None = None  # CPU intra-op threads: None = leave as is, "auto" = idle usable cores, a count
    progress: bool = True

    def check(self) -> None:
        """:class:`InputError` naming the option for values that cannot work."""
        for name in ("epochs", "iters_per_epoch", "batch_size", "val_every"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise InputError(f"--time-budget must be > 0 seconds, got {self.time_budget}")
        if self.stop_after is not None and self.stop_after < 1:
            raise InputError(f"--stop-after must be ≥ 1 epoch, got {self.stop_after}")
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
        if self.workers < 0:
            raise InputError(f"--workers must be ≥ 0, got {self.workers}")
        if self.workers > (limit := MAX_WORKERS_PER_CORE * (os.cpu_count() or 1)):
            raise InputError(
                f"--workers {self.workers} is more processes than this machine can run ({limit} at most: "
                f"{MAX_WORKERS_PER_CORE} per core); pass about the number of cores, or 0"
            )
        if not Path(self.data).is_dir():
            raise InputError(
                f"--data {self.data} is not a folder; pass a dataset folder (see `fusionseg train --help`)"
            )
        data = Path(os.path.realpath(self.data))
        for option, path in (("--output", self.output), ("--cache", self.cache)):
            real = None if path is None else Path(os.path.realpath(path))
            if real is not None and (real == data or (data in real.parents and _in_case_folder(real, data))):
                raise InputError(
                    f"{option} {path} lies in the dataset's own files (--data {self.data}), which are only read: "
                    f"choose a {option} outside them, e.g. {data.parent / 'runs'}"
                )

    def plain(self) -> dict[str, Any]:
        """JSON-able copy (paths → str, tuples → lists)."""

        def conv(v):
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, tuple | list):
                return [conv(x) for x in v]
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            return v

        return {k: conv(v) for k, v in asdict(self).items()}


# Folders of a dataset that hold its cases (nnU-Net/MSD, images/ + masks/ layouts): nothing is written there.
CASE_FOLDERS = {"imagestr", "labelstr", "imagests", "labelsts", "images", "masks", "test", "train", "val", "labels"}


def _in_case_folder(path: Path, data: Path) -> bool:
    """Whether ``path`` (inside ``data``) lies in one of the dataset's case folders (``data/images/...``)."""
    return path.relative_to(data).parts[0].lower() in CASE_FOLDERS


def nearest_key(key: str, valid: Iterable[str]) -> str:
    """The valid key closest to ``key`` (difflib), for "did you mean" hints."""
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return close[0] if close else valid[0]


def read_run_config(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON run-config file → ``{key with _ for -: value}``.

    Raises :class:`InputError` (one line) for a missing or unparsable file or one that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--config {path} does not exist; pass a YAML or JSON run config (e.g. runs/x/config.yaml)")
    if path.stat().st_size > MAX_RUN_CONFIG_BYTES:
        raise InputError(
            f"--config {path} is {path.stat().st_size:,} bytes, more than a run config needs "
            f"(limit {MAX_RUN_CONFIG_BYTES:,}); pass the config.yaml of a run or a short file of option: value"
        )
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(
            f"--config {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
            "save it as UTF-8"
        ) from None
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        values = json.loads(text) if kind == "JSON" else _safe_yaml(text)
    except RecursionError:
        raise InputError(f"--config {path} is nested too deeply to be a run config") from None
    except Exception as err:  # json.JSONDecodeError, yaml.YAMLError
        raise InputError(f"--config {path} is not valid {kind}: {' '.join(str(err).split())[:160]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InputError(f"--config {path} must hold a mapping of option: value, got a {type(values).__name__}")
    return {str(k).strip().lstrip("-").replace("-", "_"): v for k, v in values.items()}


def _safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` without aliases (``*name``): a run config needs none, and nested aliases ("billion
    laughs") expand a few hundred bytes into gigabytes."""
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                anchor = self.peek_event().anchor
                raise yaml.YAMLError(f"aliases are not allowed in a run config (found *{anchor}); write values out")
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=NoAliases)


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
