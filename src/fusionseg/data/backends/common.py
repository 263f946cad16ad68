"""Shared helpers of the file backends: one-line errors for missing, empty and corrupt files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fusionseg.errors import InputError

__all__ = ["MAX_VOXELS", "check_file", "corrupt", "exception_line", "meta_dict"]

MAX_VOXELS = (
    2**31
)  # voxels × channels a file may claim (8 GiB as float32); more is a corrupt header or no medical image


def exception_line(exc: BaseException) -> str:
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
    return InputError(f"{path}: cannot read the file ({exception_line(exc)}); it is corrupt or truncated, re-export it")


def meta_dict(
    path: Path,
    fmt: str,
    affine: np.ndarray,
    spacing: tuple[float, ...],
    spatial_shape: tuple[int, ...],
    num_channels: int,
    header: object,
) -> dict:
    """The reader ``meta`` every backend returns (see :mod:`fusionseg.data.io`).

    InputError for geometry nothing can use: non-finite or singular affines, spacings that are not
    positive numbers, and headers claiming more than :data:`MAX_VOXELS` (checked before voxels are read).
    """
    _check_geometry(path, affine, spacing, spatial_shape, num_channels)
    return {
        "path": str(path),
        "format": fmt,
        "affine": np.asarray(affine, dtype=np.float64),
        "spacing": tuple(float(s) for s in spacing),
        "spatial_shape": tuple(int(s) for s in spatial_shape),
        "num_channels": int(num_channels),
        "header": header,
    }


def _check_geometry(path: Path, affine: np.ndarray, spacing: tuple, shape: tuple, channels: int) -> None:
    matrix = np.asarray(affine, dtype=np.float64)
    n = matrix.shape[0] - 1
    if not np.all(np.isfinite(matrix)) or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(
            f"{path}: header geometry holds NaN/Inf or non-positive spacing (spacing {tuple(spacing)}); "
            "fix the header's spacing and direction (e.g. re-export the image)"
        )
    axes = np.linalg.norm(matrix[:n, :n], axis=0)
    if not np.all(axes > 0) or abs(np.linalg.det(matrix[:n, :n] / axes)) < 1e-6:  # unit axes: any spacing is fine
        raise InputError(f"{path}: header direction matrix is singular (axes collapse); fix the header's direction")
    voxels = float(np.prod([float(s) for s in shape])) * max(int(channels), 1)
    if voxels > MAX_VOXELS or min((int(s) for s in shape), default=1) < 1:
        raise InputError(
            f"{path}: header claims shape {tuple(int(s) for s in shape)} × {channels} channel(s) "
            f"({voxels * 4 / 2**30:,.0f} GiB as float32, limit {MAX_VOXELS * 4 / 2**30:.0f} GiB); "
            "the header is corrupt or the image must be cropped or downsampled first"
        )
