"""Checkpoints: atomic writes, safe (``weights_only=True``) loading, model rebuild and exact-resume RNG state.

A fusionseg checkpoint is a plain dict of tensors and plain data (no pickled objects)::

    {"format": "fusionseg", "version": 1,
     "model": {"name": "unet", "kwargs": {...}},      # rebuild with create_model(name, **kwargs)
     "preprocessing": {...},                          # Preprocessing.to_dict(): what predict reads
     "state_dict": {...}, "optimizer": {...}, "epoch": 3, "rng": capture_rng_state(), ...}

Weights of other code bases become such checkpoints in :mod:`fusionseg.checkpoints.importers`.

Example:
    >>> save_checkpoint("run/last.pt", {"format": "fusionseg", "version": 1, "state_dict": {}})
    >>> load_checkpoint("run/last.pt")["version"]
    1
"""

from __future__ import annotations

import os
import random
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fusionseg.data.preprocessing import AnyPreprocessing, preprocessing_from_dict
from fusionseg.errors import InputError
from fusionseg.faults import maybe_fail
from fusionseg.files import atomic_write
from fusionseg.nets.weights import one_line, read_weights_file
from fusionseg.runtime.distributed import unwrap_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "build_checkpoint",
    "capture_rng_state",
    "check_fields",
    "load_checkpoint",
    "rebuild_model",
    "restore_rng_state",
    "save_checkpoint",
    "to_plain_data",
]

CHECKPOINT_FORMAT = "fusionseg"
CHECKPOINT_VERSION = 1

_PLAIN_SCALARS = (str, int, float, bool, complex, bytes, type(None), torch.dtype, torch.device, torch.Size)


# --------------------------------------------------------------------------------------------- saving
def to_plain_data(obj: Any, where: str = "state") -> Any:
    """``obj`` with only tensors and plain data, so that ``torch.load(weights_only=True)`` accepts it.

    Paths become ``str``, numpy scalars Python numbers, numpy arrays tensors; containers are
    copied (tensors are not). Anything else is a programming error: ``TypeError`` naming the entry.
    """
    if isinstance(obj, (torch.Tensor, *_PLAIN_SCALARS)):
        return obj
    if isinstance(obj, Mapping):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            if not isinstance(k, str | int | float | bool | type(None)):
                raise TypeError(f"checkpoint key {where}[{k!r}] is a {type(k).__name__}; use str or int keys")
            out[k] = to_plain_data(v, f"{where}[{k!r}]")
        if hasattr(obj, "_metadata"):  # state_dict versions, read by some modules' _load_from_state_dict
            # an attribute torch sets on its state_dict OrderedDicts, which typeshed's OrderedDict does not declare
            out._metadata = to_plain_data(obj._metadata, f"{where}._metadata")  # type: ignore[attr-defined]
        return out
    if isinstance(obj, list | tuple | set):
        items = [to_plain_data(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return type(obj)(items) if type(obj) in (list, tuple, set) else items  # namedtuple → list
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    raise TypeError(
        f"checkpoint entry {where} is a {type(obj).__module__}.{type(obj).__qualname__}; checkpoints hold only "
        "tensors and plain data (str/int/float/bool/None/list/tuple/dict) — convert it (e.g. vars(namespace))"
    )


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    A crash at any moment leaves either the previous file or the new one, never a torn file.
    ``state`` is checked first (:func:`to_plain_data`), so every file written here loads with
    ``weights_only=True``. An unwritable folder raises :class:`InputError`.
    """
    path = Path(path)
    state = to_plain_data(state)
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(state, f)
        maybe_fail("checkpoint.write")  # written to the temporary name, not yet renamed
    return path


# --------------------------------------------------------------------------------------------- loading
def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", *, allow_numpy: bool = False
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; refuse pickled code or a corrupt file with one clear line.

    Args:
        path: a fusionseg checkpoint or any ``torch.save``-d dict (official ``.pth``/``.model``).
        map_location: where tensors go (default CPU).
        allow_numpy: also accept numpy arrays/scalars (data only, never code) — official nnU-Net
            ``.model`` files store metrics as numpy scalars.

    Raises:
        InputError: missing/empty/unreadable file, not a PyTorch file (LFS pointer, HTML page, garbage),
            a torn or corrupt file, or a file containing pickled Python objects (possible code).
    """
    return read_weights_file(path, map_location, allow_numpy=allow_numpy, what="checkpoint")


# --------------------------------------------------------------------------------------------- model
def build_checkpoint(
    model: nn.Module,
    *,
    preprocessing: AnyPreprocessing | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    epoch: int = 0,
    step: int = 0,
    best_metric: float | None = None,
    train_args: dict | None = None,
    rng: bool = True,
) -> dict[str, Any]:
    """The checkpoint dict of ``model`` (DDP / compiled wrappers are unwrapped).

    Example:
        >>> save_checkpoint("run/last.pt", build_checkpoint(model, optimizer=opt, epoch=3))
    """
    model = unwrap_model(model)
    config = getattr(model, "config", None)
    if not (isinstance(config, dict) and "name" in config):
        raise TypeError(f"{type(model).__name__} has no .config {{'name', 'kwargs'}}; build it with create_model()")
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": {"name": config["name"], "kwargs": dict(config.get("kwargs", {}))},
        "preprocessing": None if preprocessing is None else preprocessing.to_dict(),
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": int(epoch),
        "step": int(step),
        "best_metric": None if best_metric is None else float(best_metric),
        "rng": capture_rng_state() if rng else None,
        "train_args": train_args or {},
    }


def _check_fusionseg(ckpt: dict, source: str) -> None:
    if ckpt.get("format") != CHECKPOINT_FORMAT or not isinstance(ckpt.get("model"), dict):
        raise InputError(
            f"{source} is not a fusionseg checkpoint (no 'format'/'model' entries); "
            "for official D-Net / DS-TransUNet weights run `fusionseg import-weights` first"
        )
    version = ckpt.get("version", 1)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise InputError(f"{source} has checkpoint version {version!r}, newer than this fusionseg; upgrade fusionseg")
    if "state_dict" not in ckpt or not isinstance(ckpt["state_dict"], dict):
        raise InputError(f"{source} has no 'state_dict'; it is incomplete — use another checkpoint")
    check_fields(ckpt, source)


def _is_count(value: Any, minimum: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_fields(ckpt: dict, source: str = "checkpoint") -> None:
    """:class:`InputError` naming the first malformed field of a fusionseg checkpoint (before anything uses it).

    >>> check_fields(load_checkpoint("altered.pt"), "altered.pt")    # its preprocessing's patch_size is "abc"
    InputError: altered.pt: preprocessing.patch_size is 'abc', expected positive integers like [96, 96]; ...
    """

    def bad(field: str, value: Any, expected: str) -> InputError:
        shown = one_line(repr(value), 60)
        return InputError(f"{source}: {field} is {shown}, expected {expected}; the file was altered — use another one")

    model = ckpt.get("model")
    if isinstance(model, dict):
        if not isinstance(model.get("name"), str):
            raise bad("model.name", model.get("name"), "a model name")
        if not isinstance(model.get("kwargs") or {}, dict):
            raise bad("model.kwargs", model.get("kwargs"), "a mapping of model arguments")
    if ckpt.get("preprocessing") is not None:
        try:
            preprocessing_from_dict(ckpt["preprocessing"])
        except InputError as err:
            raise InputError(f"{source}: {err}; the file was altered — use another one") from None
    for key in ("epoch", "step"):
        if key in ckpt and not _is_count(ckpt[key], 0):
            raise bad(key, ckpt[key], "an integer ≥ 0")
    for key in ("optimizer", "scheduler", "scaler", "rng"):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], dict):
            raise bad(key, ckpt[key], "a mapping or None")
    best = ckpt.get("best_metric")
    if best is not None and (isinstance(best, bool) or not isinstance(best, int | float)):
        raise bad("best_metric", best, "a number or None")
    if not isinstance(ckpt.get("history", []), list) or not isinstance(ckpt.get("train_args") or {}, dict):
        raise bad("history/train_args", type(ckpt.get("history")).__name__, "a list / a mapping")


def rebuild_model(ckpt: dict[str, Any] | str | os.PathLike, strict: bool = True) -> nn.Module:
    """Build the checkpoint's model with ``create_model(name, **kwargs)`` and load its weights (eval mode).

    ``ckpt`` is a loaded checkpoint dict or a path. A mismatch between weights and model raises
    :class:`InputError` listing the missing / unexpected / mis-shaped keys (``strict=False``
    loads what fits and skips the rest).
    """
    from fusionseg.nets.registry import create_model
    from fusionseg.nets.weights import load_pretrained

    source = "checkpoint"
    if not isinstance(ckpt, dict):
        source = f"checkpoint {ckpt}"
        ckpt = load_checkpoint(ckpt)
    _check_fusionseg(ckpt, source)
    name, kwargs = ckpt["model"].get("name"), ckpt["model"].get("kwargs") or {}
    try:
        model = create_model(name, **kwargs)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"{source} describes model {name!r} with {kwargs} that this fusionseg cannot build "
            f"({one_line(str(err), 160)}); use the fusionseg version that wrote it"
        ) from None
    load_pretrained(model, ckpt["state_dict"], strict=strict)
    return model.eval()


# --------------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict[str, Any]:
    """Plain-data snapshot of the torch (CPU + CUDA), numpy-global and Python ``random`` generators."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any] | None) -> None:
    """Put back the generators captured by :func:`capture_rng_state` (None or missing parts are skipped)."""
    if not state:
        return
    if state.get("torch") is not None:
        torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    npy = state.get("numpy")
    if npy is not None:
        keys = np.asarray(npy["keys"].numpy() if isinstance(npy["keys"], torch.Tensor) else npy["keys"], np.uint32)
        np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    py = state.get("python")
    if py is not None:
        version, internal, gauss = py
        random.setstate((version, tuple(internal), gauss))
