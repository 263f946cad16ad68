"""NIfTI (``.nii.gz``, ``.nii``) through nibabel: affine in RAS+ mm, channels on the 4th (or ITK-style 5th) axis."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np

from fusionseg.data.backends.common import corrupt, meta_dict
from fusionseg.errors import InputError

__all__ = ["read", "read_header", "write"]


def _channels_first(data: np.ndarray) -> np.ndarray:
    """NIfTI data → (C, X, Y, Z): the 4th dim (or the 5th, ITK vector style) holds channels."""
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim == 3:
        return data[None]
    if data.ndim == 4:
        return np.moveaxis(data, 3, 0)
    if data.ndim == 5 and data.shape[3] == 1:
        return np.moveaxis(data[:, :, :, 0], 3, 0)
    raise ValueError(f"unsupported NIfTI shape {data.shape}")


def _meta(path: Path, img: Any) -> dict:
    shape = tuple(int(s) for s in img.shape[:3]) + (1,) * max(0, 3 - len(img.shape))
    channels = int(img.shape[-1]) if len(img.shape) in (4, 5) else 1  # (X, Y, Z, C) or ITK's (X, Y, Z, 1, C)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3]) + (1.0,) * max(0, 3 - len(img.shape))
    return meta_dict(path, "nifti", img.affine, zooms, shape, channels, img.header.copy())


def read_header(path: Path) -> dict:
    import nibabel as nib

    try:
        return _meta(path, nib.load(str(path)))
    except InputError:
        raise
    except Exception as exc:
        raise corrupt(path, exc) from exc


def read(path: Path, label: bool) -> tuple[np.ndarray, dict]:
    import nibabel as nib
    from nibabel.spatialimages import SpatialImage

    try:
        img = cast(SpatialImage, nib.load(str(path)))  # nib.load is typed FileBasedImage; NIfTI loads as SpatialImage
        meta = _meta(path, img)
        if np.dtype(img.get_data_dtype()).kind == "c":
            raise InputError(f"{path}: complex voxels; save the magnitude (or real part) as a real-valued image")
        with np.errstate(
            over="ignore", invalid="ignore"
        ):  # scaled values out of float32 range: the NaN/Inf check names them
            data = np.asanyarray(img.dataobj) if label else img.get_fdata(dtype=np.float32)
        data = _channels_first(np.asarray(data))
    except InputError:
        raise
    except Exception as exc:  # nibabel raises many types for bad files (ImageFileError, EOFError, zlib.error, ...)
        raise corrupt(path, exc) from exc
    return data, meta


def write(array: np.ndarray, meta: dict, path: Path, channels: bool = False) -> None:
    """Write a label map (*S) or, with ``channels``, a (C, *S) array as a 4D file, with ``meta``'s affine.

    A NIfTI reference header is reused (qform/sform codes kept); spatial shapes shorter than 3D
    get trailing axes of size 1 (a 2D slice becomes (X, Y, 1)).
    """
    import nibabel as nib

    data = np.moveaxis(array, 0, -1) if channels else array
    spatial = data.shape[:-1] if channels else data.shape
    if len(spatial) < 3:
        pad = (1,) * (3 - len(spatial))
        data = data.reshape(spatial + pad + ((data.shape[-1],) if channels else ()))
    affine = np.asarray(meta["affine"], dtype=np.float64)
    if affine.shape != (4, 4):  # a 2D reference: embed its (3, 3) affine in 3D
        embedded = np.eye(4)
        embedded[:2, :2], embedded[:2, 3] = affine[:2, :2], affine[:2, 2]
        affine = embedded
    ref = meta.get("header")
    if meta.get("format") == "nifti" and ref is not None:
        header = ref.copy()
        header.set_data_dtype(data.dtype)
        header.set_slope_inter(1.0, 0.0)
        img = nib.Nifti1Image(data, affine, header=header)
        img.set_qform(affine, code=int(ref["qform_code"]) or 1)
        img.set_sform(affine, code=int(ref["sform_code"]) or 1)
    else:
        img = nib.Nifti1Image(data, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    nib.save(img, str(path))
