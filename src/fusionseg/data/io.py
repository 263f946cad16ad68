"""Reading and writing images and label maps while keeping their geometry.

Every reader returns ``(array, meta)``; ``meta`` is a plain dict that a writer takes back to
produce a file in the same geometry:

- ``format``: ``"nifti"``, ``"nrrd"`` (3D volumes) or ``"png"``, ``"jpeg"``, ``"tiff"`` (2D images).
- ``affine``: (D+1, D+1) float64 voxel → world matrix in RAS+ mm (3D); identity for 2D images.
- ``spacing``: voxel size in mm per array axis; ``spatial_shape``: array spatial shape.
- ``header``: the format's own header (nibabel header / NRRD dict) used when writing back.

Arrays keep the file's voxel order: NIfTI/NRRD (X, Y, Z), 2D images (H, W). Images come back
as float32 (C, *S), label maps as integer (*S).

Example:
    >>> image, meta = read_image("case_0000.nii.gz")   # (1, X, Y, Z) float32
    >>> write_label(prediction, meta, "pred.nii.gz")    # same affine and header geometry
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fusionseg.errors import InputError

__all__ = [
    "EXTENSIONS_2D",
    "EXTENSIONS_3D",
    "SUPPORTED_EXTENSIONS",
    "file_format",
    "read_header",
    "read_image",
    "read_label",
    "split_extension",
    "write_label",
]

EXTENSIONS_3D = (".nii.gz", ".nii", ".nrrd")
EXTENSIONS_2D = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SUPPORTED_EXTENSIONS = EXTENSIONS_3D + EXTENSIONS_2D
_FORMATS = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
}
# NRRD world spaces → sign flips that bring them to RAS+ (the convention of NIfTI and MONAI).
_NRRD_TO_RAS = {
    "left-posterior-superior": (-1, -1, 1),
    "lps": (-1, -1, 1),
    "right-anterior-superior": (1, 1, 1),
    "ras": (1, 1, 1),
    "left-anterior-superior": (-1, 1, 1),
    "las": (-1, 1, 1),
}


def split_extension(path: str | Path) -> tuple[str, str]:
    """``"a/case_0000.nii.gz"`` → ``("case_0000", ".nii.gz")`` (lower-case extension)."""
    name = Path(path).name
    lower = name.lower()
    for ext in SUPPORTED_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)], ext
    suffix = Path(name).suffix
    return name[: len(name) - len(suffix)], suffix.lower()


def file_format(path: str | Path) -> str:
    """Format name of ``path`` from its extension; InputError for unsupported ones."""
    ext = split_extension(path)[1]
    if ext not in _FORMATS:
        raise InputError(
            f"{path}: unsupported file extension {ext or '(none)'!r}; "
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)} (convert other formats, e.g. .mha/.dcm, to NIfTI)"
        )
    return _FORMATS[ext]


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"{path}: file not found; check the path and the dataset layout")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes); re-export or remove it")


def _corrupt(path: Path, exc: BaseException) -> InputError:
    return InputError(f"{path}: cannot read the file ({_one_line(exc)}); it is corrupt or truncated, re-export it")


# --------------------------------------------------------------------------------------------- NIfTI


def _nifti_spatial(data: np.ndarray) -> np.ndarray:
    """NIfTI data → (C, X, Y, Z): 4th dim (or 5th, ITK vector style) holds channels."""
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim == 3:
        return data[None]
    if data.ndim == 4:
        return np.moveaxis(data, 3, 0)
    if data.ndim == 5 and data.shape[3] == 1:
        return np.moveaxis(data[:, :, :, 0], 3, 0)
    raise ValueError(f"unsupported NIfTI shape {data.shape}")


def _nifti_meta(path: Path, img: Any) -> dict:
    shape = tuple(int(s) for s in img.shape[:3]) + (1,) * max(0, 3 - len(img.shape))
    channels = 1
    if len(img.shape) == 4:
        channels = int(img.shape[3])
    elif len(img.shape) == 5:
        channels = int(img.shape[4])
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3]) + (1.0,) * max(0, 3 - len(img.shape))
    return {
        "path": str(path),
        "format": "nifti",
        "affine": np.asarray(img.affine, dtype=np.float64),
        "spacing": zooms,
        "spatial_shape": shape,
        "num_channels": channels,
        "header": img.header.copy(),
    }


def _read_nifti(path: Path, label: bool) -> tuple[np.ndarray, dict]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        meta = _nifti_meta(path, img)
        data = np.asanyarray(img.dataobj) if label else img.get_fdata(dtype=np.float32)
        data = _nifti_spatial(np.asarray(data))
    except InputError:
        raise
    except Exception as exc:  # nibabel raises many types for bad files (ImageFileError, EOFError, zlib.error, ...)
        raise _corrupt(path, exc) from exc
    return data, meta


# ---------------------------------------------------------------------------------------------- NRRD


def _nrrd_geometry(header: dict) -> tuple[list[int], np.ndarray, tuple[float, ...]]:
    """Spatial axes of an NRRD header, the RAS affine, and the spacing."""
    ndim = int(header["dimension"])
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
    flips = _NRRD_TO_RAS.get(str(header.get("space", "")).lower())
    if flips is not None and n == 3:
        affine[:3] *= np.asarray(flips, dtype=np.float64)[:, None]
    spacing = tuple(float(np.linalg.norm(r)) for r in rows)
    return spatial_axes, affine, spacing


def _read_nrrd(path: Path, label: bool, header_only: bool = False) -> tuple[np.ndarray | None, dict]:
    import nrrd

    try:
        if header_only:
            data, header = None, nrrd.read_header(str(path))
        else:
            data, header = nrrd.read(str(path), index_order="F")
        spatial_axes, affine, spacing = _nrrd_geometry(header)
    except Exception as exc:
        raise _corrupt(path, exc) from exc
    sizes = [int(s) for s in header["sizes"]]
    channel_axes = [i for i in range(len(sizes)) if i not in spatial_axes]
    if len(channel_axes) > 1 or len(spatial_axes) not in (2, 3):
        raise InputError(f"{path}: NRRD with sizes {sizes} is not a 3D (optionally multi-channel) volume")
    meta = {
        "path": str(path),
        "format": "nrrd",
        "affine": affine,
        "spacing": spacing,
        "spatial_shape": tuple(sizes[i] for i in spatial_axes),
        "num_channels": sizes[channel_axes[0]] if channel_axes else 1,
        "header": dict(header),
    }
    if data is None:
        return None, meta
    data = np.moveaxis(data, channel_axes[0], 0) if channel_axes else data[None]
    return (data if label else data.astype(np.float32, copy=False)), meta


# ------------------------------------------------------------------------------------- PNG, JPEG, TIFF


def _read_2d(path: Path, label: bool, header_only: bool = False) -> tuple[np.ndarray | None, dict]:
    from PIL import Image

    try:
        with Image.open(path) as img:
            if getattr(img, "n_frames", 1) > 1:
                raise InputError(f"{path}: multi-page image ({img.n_frames} frames); save one 2D image per file")
            mode = img.mode
            size = img.size
            data = None if header_only else _pil_array(img, label)
    except InputError:
        raise
    except Exception as exc:
        raise _corrupt(path, exc) from exc
    channels = 3 if mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr") and not label else 1
    meta = {
        "path": str(path),
        "format": _FORMATS[split_extension(path)[1]],
        "affine": np.eye(3),
        "spacing": (1.0, 1.0),
        "spatial_shape": (size[1], size[0]),
        "num_channels": channels,
        "header": {"mode": mode},
    }
    if data is not None:
        meta["num_channels"] = data.shape[0]
    return data, meta


def _pil_array(img: Any, label: bool) -> np.ndarray:
    """PIL image → (C, H, W); label maps keep palette indices, images drop alpha."""
    mode = img.mode
    if label:
        data = np.asarray(img)
        if data.ndim == 3:  # RGB(A) mask: fine when it is grey stored as RGB
            rgb = data[..., :3]
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise InputError(
                    f"{img.filename}: colour mask; store label masks as single-channel images of class "
                    "indices (0, 1, 2, ...) or 0/255 for binary"
                )
            data = rgb[..., 0]
        return data[None]
    if mode in ("P", "CMYK", "YCbCr", "RGBA"):
        img = img.convert("RGB")
    elif mode in ("LA", "1"):
        img = img.convert("L")
    data = np.asarray(img)
    data = data[None] if data.ndim == 2 else np.moveaxis(data, -1, 0)
    return data.astype(np.float32)


# ------------------------------------------------------------------------------------------- public


def read_header(path: str | Path) -> dict:
    """Geometry (``meta`` without the voxel data) of an image file; reads only what it must."""
    path = Path(path)
    fmt = file_format(path)
    _check_file(path)
    if fmt == "nifti":
        import nibabel as nib

        try:
            return _nifti_meta(path, nib.load(str(path)))
        except Exception as exc:
            raise _corrupt(path, exc) from exc
    if fmt == "nrrd":
        return _read_nrrd(path, label=False, header_only=True)[1]
    return _read_2d(path, label=False, header_only=True)[1]


def read_image(path: str | Path) -> tuple[np.ndarray, dict]:
    """Image file → (float32 array (C, *S), meta). NIfTI/NRRD give (C, X, Y, Z), 2D formats (C, H, W)."""
    path = Path(path)
    fmt = file_format(path)
    _check_file(path)
    if fmt == "nifti":
        data, meta = _read_nifti(path, label=False)
    elif fmt == "nrrd":
        data, meta = _read_nrrd(path, label=False)
    else:
        data, meta = _read_2d(path, label=False)
    return np.ascontiguousarray(data, dtype=np.float32), meta


def read_label(path: str | Path) -> tuple[np.ndarray, dict]:
    """Label map → (integer array (*S), meta with ``spacing`` in mm).

    Binary 2D masks stored as 0/255 are mapped to 0/1; float-typed volumes must hold whole numbers.
    """
    path = Path(path)
    fmt = file_format(path)
    _check_file(path)
    if fmt == "nifti":
        data, meta = _read_nifti(path, label=True)
    elif fmt == "nrrd":
        data, meta = _read_nrrd(path, label=True)
    else:
        data, meta = _read_2d(path, label=True)
    if data.shape[0] != 1:
        raise InputError(
            f"{path}: label map has {data.shape[0]} channels; store labels as one channel of class indices"
        )
    data = data[0]
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)):
            raise InputError(f"{path}: label map contains NaN/Inf; store labels as integer class indices")
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise InputError(f"{path}: label map holds non-integer values; store labels as integer class indices")
        data = rounded
    elif data.dtype.kind == "b":
        data = data.astype(np.uint8)
    elif data.dtype.kind not in "iu":
        raise InputError(f"{path}: label map has unsupported data type {data.dtype}; use an integer type")
    if fmt in ("png", "jpeg", "tiff") and data.size and data.max() == 255:
        values = np.unique(data)
        if np.all(np.isin(values, (0, 255))):  # binary mask stored as 0/255
            data = data == 255
    small = data.size and data.min() >= 0 and data.max() < 256
    data = data.astype(np.uint8 if small else np.int64)
    meta["num_channels"] = 1
    return data, meta


def _label_dtype(max_value: int) -> type:
    return np.uint8 if max_value < 256 else np.uint16


def write_label(label_map: np.ndarray, meta: dict, path: str | Path, binary_as_255: bool = False) -> Path:
    """Write an integer label map (*S) with the geometry in ``meta`` (from a reader) to ``path``.

    The format follows ``path``'s extension: NIfTI keeps ``meta``'s affine (and its qform/sform
    codes), NRRD keeps space, directions and origin, 2D masks are written as PNG/TIFF (with
    ``binary_as_255`` a 0/1 map is stored as 0/255 so it is visible in image viewers).
    """
    path = Path(path)
    fmt = file_format(path)
    label_map = np.asarray(label_map)
    if label_map.dtype.kind not in "iub":
        raise ValueError(f"write_label expects an integer label map, got dtype {label_map.dtype}")
    if label_map.ndim != len(meta["spatial_shape"]) or tuple(label_map.shape) != tuple(meta["spatial_shape"]):
        raise ValueError(
            f"label map shape {tuple(label_map.shape)} does not match the reference grid {tuple(meta['spatial_shape'])}"
        )
    max_value = int(label_map.max()) if label_map.size else 0
    data = label_map.astype(_label_dtype(max_value))
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "nifti":
        _write_nifti(data, meta, path)
    elif fmt == "nrrd":
        _write_nrrd(data, meta, path)
    elif fmt == "jpeg":
        raise InputError(f"{path}: JPEG is lossy and would corrupt the label values; save masks as .png or .tif")
    else:
        from PIL import Image

        if data.ndim != 2:
            raise InputError(f"{path}: PNG/TIFF hold 2D masks but the label map is {data.ndim}D; write .nii.gz")
        if binary_as_255 and max_value <= 1:
            data = data * np.uint8(255)
        Image.fromarray(data).save(path)
    return path


def _write_nifti(data: np.ndarray, meta: dict, path: Path) -> None:
    import nibabel as nib

    affine = np.asarray(meta["affine"], dtype=np.float64)
    if data.ndim == 2:
        data = data[..., None]
    ref = meta.get("header")
    if meta.get("format") == "nifti" and ref is not None:
        header = ref.copy()
        header.set_data_dtype(data.dtype)
        header.set_slope_inter(1.0, 0.0)
        img = nib.Nifti1Image(data, affine, header=header)
        img.set_qform(affine, code=int(ref["qform_code"]) or 1)
        img.set_sform(affine, code=int(ref["sform_code"]) or 1)
    else:
        img = nib.Nifti1Image(data, affine if affine.shape == (4, 4) else np.eye(4))
        img.set_qform(img.affine, code=1)
        img.set_sform(img.affine, code=1)
    nib.save(img, str(path))


def _write_nrrd(data: np.ndarray, meta: dict, path: Path) -> None:
    import nrrd

    affine = np.asarray(meta["affine"], dtype=np.float64)
    ref = meta.get("header") if meta.get("format") == "nrrd" else None
    header: dict[str, Any] = {"encoding": "gzip"}
    if ref is not None and "space" in ref:
        header["space"] = ref["space"]
        flips = np.asarray(_NRRD_TO_RAS.get(str(ref["space"]).lower(), (1, 1, 1)), dtype=np.float64)
    else:
        header["space"] = "right-anterior-superior"
        flips = np.ones(3)
    world = affine[:3] * flips[:, None]  # back from RAS to the file's space
    header["space directions"] = world[:, :3].T
    header["space origin"] = world[:, 3]
    header["kinds"] = ["domain"] * 3
    nrrd.write(str(path), data, header, index_order="F")
