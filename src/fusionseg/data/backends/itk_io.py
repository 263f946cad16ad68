"""MetaImage (``.mha``, ``.mhd`` + raw data) and GIPL through SimpleITK.

ITK stores geometry as spacing, origin and a direction matrix in LPS; arrays come back (Z, Y, X)
with vector components last. Here arrays are (C, X, Y, Z) like the other readers and the affine
is RAS+ (3D; 2D images keep ITK's own 2D physical frame):
``affine[:3, :3] = F @ direction @ diag(spacing)``, ``affine[:3, 3] = F @ origin`` with F = diag(-1, -1, 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fusionseg.data.backends.common import corrupt, meta_dict
from fusionseg.errors import InputError

__all__ = ["itk_affine", "read", "read_header", "sitk_module", "write"]


def sitk_module(what: str = "reading/writing .mha/.mhd/.gipl") -> Any:
    """SimpleITK, or an InputError naming the install command."""
    try:
        import SimpleITK
    except ImportError as exc:
        raise InputError(f"{what} needs SimpleITK; install it with `pip install SimpleITK`") from exc
    return SimpleITK


def _flips(n: int) -> np.ndarray:
    return np.array([-1.0, -1.0, 1.0]) if n == 3 else np.ones(n)


def itk_affine(spacing: tuple, origin: tuple, direction: tuple) -> np.ndarray:
    """RAS+ affine (3D; 2D keeps ITK's frame) of ITK's LPS spacing, origin and direction."""
    n = len(spacing)
    flips = _flips(n)[:, None]
    affine = np.eye(n + 1)
    affine[:n, :n] = flips * (np.asarray(direction, dtype=np.float64).reshape(n, n) * np.asarray(spacing))
    affine[:n, n] = flips[:, 0] * np.asarray(origin, dtype=np.float64)
    return affine


def _geometry_from_affine(affine: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """(spacing, origin, direction) in ITK's LPS convention from a RAS affine."""
    n = affine.shape[0] - 1
    flips = _flips(n)[:, None]
    linear = flips * affine[:n, :n]
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / spacing
    origin = flips[:, 0] * affine[:n, n]
    return tuple(float(s) for s in spacing), tuple(float(o) for o in origin), tuple(direction.ravel().tolist())


def _meta_from(path: Path, size: tuple, spacing: tuple, origin: tuple, direction: tuple, components: int) -> dict:
    dims = len(size)
    header = _header(spacing, origin, direction)
    if dims == 4:  # a 4D scalar image: the 4th axis holds channels (as in NIfTI)
        sub = np.asarray(direction, dtype=np.float64).reshape(4, 4)[:3, :3].ravel()
        affine = itk_affine(tuple(spacing[:3]), tuple(origin[:3]), tuple(sub))
        return meta_dict(path, "metaimage", affine, spacing[:3], size[:3], size[3], header)
    if dims not in (2, 3):
        raise InputError(f"{path}: {dims}D image; only 2D and 3D images (optionally multi-channel) are supported")
    return meta_dict(path, "metaimage", itk_affine(spacing, origin, direction), spacing, size, components, header)


def _header(spacing: tuple, origin: tuple, direction: tuple) -> dict:
    return {"spacing": tuple(spacing), "origin": tuple(origin), "direction": tuple(direction)}


def read_header(path: Path) -> dict:
    sitk = sitk_module()
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        info = (
            tuple(reader.GetSize()),
            tuple(reader.GetSpacing()),
            tuple(reader.GetOrigin()),
            tuple(reader.GetDirection()),
            int(reader.GetNumberOfComponents()),
        )
    except Exception as exc:
        raise corrupt(path, exc) from exc
    return _meta_from(path, *info)


def read(path: Path, label: bool) -> tuple[np.ndarray, dict]:
    sitk = sitk_module()
    read_header(path)  # a corrupt or absurd header is refused before the voxels are allocated
    try:
        img = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(img)  # (Z, Y, X[, components]) — reversed axes
        info = (
            tuple(img.GetSize()),
            tuple(img.GetSpacing()),
            tuple(img.GetOrigin()),
            tuple(img.GetDirection()),
            int(img.GetNumberOfComponentsPerPixel()),
        )
    except Exception as exc:
        raise corrupt(path, exc) from exc
    meta = _meta_from(path, *info)
    dims = len(info[0])
    if info[4] > 1:  # vector image: (*reversed spatial, C) → (C, *spatial)
        data = np.moveaxis(array, -1, 0)
        data = np.transpose(data, (0, *range(data.ndim - 1, 0, -1)))
    elif dims == 4:  # (C, Z, Y, X) with the 4th ITK axis first → (C, X, Y, Z)
        data = np.transpose(array, (0, 3, 2, 1))
    else:
        data = np.transpose(array)[None]
    data = np.ascontiguousarray(data)
    return (data if label else data.astype(np.float32, copy=False)), meta


def write(array: np.ndarray, meta: dict, path: Path, channels: bool = False) -> None:
    """Write a label map (*S) or, with ``channels``, a (C, *S) vector image with ``meta``'s geometry.

    An ITK reference on the same grid keeps its exact spacing/origin/direction; other references
    are converted from their RAS affine. Data are compressed.
    """
    sitk = sitk_module()
    n = array.ndim - (1 if channels else 0)
    # (C, X, Y, Z) → (Z, Y, X, C); (X, Y, Z) → (Z, Y, X)
    itk_array = np.transpose(array, (*range(n, 0, -1), 0)) if channels else np.transpose(array)
    img = sitk.GetImageFromArray(np.ascontiguousarray(itk_array), isVector=channels)
    ref = meta.get("header") if meta.get("format") in ("metaimage", "gipl") else None
    if ref is not None and len(ref["spacing"]) == n:
        spacing, origin, direction = ref["spacing"], ref["origin"], ref["direction"]
    else:
        affine = np.asarray(meta["affine"], dtype=np.float64)
        if affine.shape[0] - 1 != n:
            raise InputError(f"{path}: cannot write a {n}D array with the geometry of a {affine.shape[0] - 1}D image")
        spacing, origin, direction = _geometry_from_affine(affine)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetDirection(tuple(float(d) for d in direction))
    sitk.WriteImage(img, str(path), True)
