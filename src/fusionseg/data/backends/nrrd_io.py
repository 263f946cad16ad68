"""NRRD (``.nrrd``, detached-header ``.nhdr``) through pynrrd: space directions/origin ↔ RAS+ affine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fusionseg.data.backends.common import corrupt, meta_dict
from fusionseg.errors import InputError

__all__ = ["read", "read_header", "write"]

# NRRD world spaces → sign flips that bring them to RAS+ (the convention of NIfTI and MONAI).
_TO_RAS = {
    "left-posterior-superior": (-1, -1, 1),
    "lps": (-1, -1, 1),
    "right-anterior-superior": (1, 1, 1),
    "ras": (1, 1, 1),
    "left-anterior-superior": (-1, 1, 1),
    "las": (-1, 1, 1),
}


def _geometry(header: dict) -> tuple[list[int], np.ndarray, tuple[float, ...]]:
    """Spatial axes of an NRRD header, the RAS affine, and the spacing."""
    ndim = int(header["dimension"])
    if not 2 <= ndim <= 4 or len(header.get("sizes", ())) != ndim:  # checked before per-axis loops over ndim
        raise ValueError(
            f"dimension {ndim} with sizes {[int(s) for s in header.get('sizes', ())][:8]}; expected a 2D/3D image"
        )
    directions = header.get("space directions")
    if directions is not None:
        directions = np.asarray(directions, dtype=np.float64)
        spatial_axes = [i for i in range(ndim) if np.all(np.isfinite(directions[i]))]
        rows = directions[spatial_axes]
    else:
        spacings = np.asarray(header.get("spacings", [1.0] * ndim), dtype=np.float64)
        spatial_axes = [i for i in range(ndim) if np.isfinite(spacings[i])]
        rows = np.diag(spacings[spatial_axes])
    n = len(spatial_axes)
    origin = np.asarray(header.get("space origin", np.zeros(rows.shape[1])), dtype=np.float64)
    affine = np.eye(n + 1)
    affine[: rows.shape[1], :n] = rows.T  # row i of "space directions" = world vector of axis i
    affine[: rows.shape[1], n] = origin
    flips = _TO_RAS.get(str(header.get("space", "")).lower())
    if flips is not None and n == 3:
        affine[:3] *= np.asarray(flips, dtype=np.float64)[:, None]
    spacing = tuple(float(np.linalg.norm(r)) for r in rows)
    return spatial_axes, affine, spacing


def _read(path: Path, label: bool, header_only: bool) -> tuple[np.ndarray | None, dict]:
    import nrrd

    try:
        if header_only:
            data, header = None, nrrd.read_header(str(path))
        else:
            data, header = nrrd.read(str(path), index_order="F")
        spatial_axes, affine, spacing = _geometry(header)
    except Exception as exc:
        raise corrupt(path, exc) from exc
    sizes = [int(s) for s in header["sizes"]]
    channel_axes = [i for i in range(len(sizes)) if i not in spatial_axes]
    if len(channel_axes) > 1 or len(spatial_axes) not in (2, 3):
        raise InputError(f"{path}: NRRD with sizes {sizes} is not a 2D/3D (optionally multi-channel) image")
    shape = tuple(sizes[i] for i in spatial_axes)
    channels = sizes[channel_axes[0]] if channel_axes else 1
    meta = meta_dict(path, "nrrd", affine, spacing, shape, channels, dict(header))
    if data is None:
        return None, meta
    data = np.moveaxis(data, channel_axes[0], 0) if channel_axes else data[None]
    return (data if label else data.astype(np.float32, copy=False)), meta


def read_header(path: Path) -> dict:
    return _read(path, label=False, header_only=True)[1]


def read(path: Path, label: bool) -> tuple[np.ndarray, dict]:
    _read(path, label, header_only=True)  # a corrupt or absurd header is refused before the voxels are allocated
    data, meta = _read(path, label, header_only=False)
    assert data is not None  # header_only=False always reads the voxels
    return data, meta


def write(array: np.ndarray, meta: dict, path: Path, channels: bool = False) -> None:
    """Write a label map (*S) or, with ``channels``, a (C, *S) array (a ``list`` axis first) to ``.nrrd``.

    3D: the space of an NRRD reference is kept (directions and origin converted back from RAS),
    otherwise the file is written in RAS. 2D: ``space dimension`` 2 with the reference's directions.
    """
    import nrrd

    affine = np.asarray(meta["affine"], dtype=np.float64)
    n = affine.shape[0] - 1
    ref = meta.get("header") if meta.get("format") == "nrrd" else None
    header: dict[str, Any] = {"encoding": "gzip"}
    if n == 3:
        space = ref["space"] if ref is not None and "space" in ref else "right-anterior-superior"
        flips = np.asarray(_TO_RAS.get(str(space).lower(), (1, 1, 1)), dtype=np.float64)
        world = affine[:3] * flips[:, None]  # back from RAS to the file's space
        header["space"] = space
    else:
        world = affine[:n]
        header["space dimension"] = n
    directions = world[:, :n].T
    if channels:
        directions = np.vstack([np.full((1, n), np.nan), directions])
    header["space directions"] = directions
    header["space origin"] = world[:, n]
    header["kinds"] = (["list"] if channels else []) + ["domain"] * n
    nrrd.write(str(path), np.ascontiguousarray(array), header, index_order="F")
