"""Shared helpers of the file backends: one-line errors for missing, empty and corrupt files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fusionseg.errors import InputError

__all__ = ["check_file", "corrupt", "meta_dict", "one_line"]


def one_line(exc: BaseException) -> str:
    """``"TypeName: message"`` on a single line."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def check_file(path: Path) -> None:
    """InputError when ``path`` is missing or empty."""
    if not path.is_file():
        raise InputError(f"{path}: file not found; check the path and the dataset layout")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes); re-export or remove it")


def corrupt(path: Path, exc: BaseException) -> InputError:
    """The InputError for a file a library failed to parse."""
    return InputError(f"{path}: cannot read the file ({one_line(exc)}); it is corrupt or truncated, re-export it")


def meta_dict(
    path: Path,
    fmt: str,
    affine: np.ndarray,
    spacing: tuple[float, ...],
    spatial_shape: tuple[int, ...],
    num_channels: int,
    header: object,
) -> dict:
    """The reader ``meta`` every backend returns (see :mod:`fusionseg.data.io`)."""
    return {
        "path": str(path),
        "format": fmt,
        "affine": np.asarray(affine, dtype=np.float64),
        "spacing": tuple(float(s) for s in spacing),
        "spatial_shape": tuple(int(s) for s in spatial_shape),
        "num_channels": int(num_channels),
        "header": header,
    }
