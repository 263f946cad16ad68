"""Checkpoints: atomic writes and safe (``weights_only=True``) loading.

A fusionseg checkpoint is a plain dict of tensors and plain data (no pickled objects)::

    {"format": "fusionseg", "version": 1,
     "model": {"name": "unet", "kwargs": {...}},      # rebuild with create_model(name, **kwargs)
     "preprocessing": {...},                          # plain data used by predict
     "state_dict": {...}, "optimizer": {...}, "epoch": 3, ...}

Example:
    >>> save_checkpoint("run/last.pt", {"format": "fusionseg", "version": 1, "state_dict": {}})
    >>> load_checkpoint("run/last.pt")["version"]
    1
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from fusionseg.errors import InputError

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "fusionseg"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    A crash at any moment leaves either the previous file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; pickled code or a corrupt file is refused clearly."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise InputError(f"checkpoint {path} is empty (0 bytes); use another checkpoint or retrain")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise InputError(
            f"refusing to load {path}: it contains pickled Python objects, not only tensors and plain data "
            f"({str(err).splitlines()[0][:160]}). Only load files you trust; re-save the weights as a plain state_dict"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise InputError(
            f"checkpoint {path} is corrupt or not a PyTorch file: {str(err).splitlines()[0][:200]}"
        ) from None
    if not isinstance(obj, dict):
        raise InputError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict (state_dict or checkpoint)")
    return obj
