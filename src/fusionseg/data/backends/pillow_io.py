"""2D raster images (PNG, BMP, TIFF, JPEG) through Pillow: arrays (C, H, W), identity geometry.

Images: palette/CMYK/YCbCr/RGBA become RGB (alpha dropped), LA/1-bit become grey. Label maps keep
palette indices; an RGB mask is accepted only when it is grey stored as RGB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fusionseg.data.backends.common import corrupt, meta_dict
from fusionseg.errors import InputError

__all__ = ["read", "read_header", "write"]

_COLOUR_MODES = ("RGB", "RGBA", "P", "CMYK", "YCbCr")


def _array(img: Any, label: bool) -> np.ndarray:
    """PIL image → (C, H, W); label maps keep palette indices, images drop alpha."""
    mode = img.mode
    if label:
        # JPEG masks (Kvasir-SEG): compression noise differs per colour channel; read them as grey.
        data = np.asarray(img.convert("L") if img.format == "JPEG" and mode != "L" else img)
        if (
            data.ndim == 3
            and mode in ("LA", "RGBA")
            and data[..., :-1].min() == data[..., :-1].max() < data[..., -1].max()
        ):
            raise InputError(
                f"{img.filename}: the mask is drawn in the alpha channel only (its grey/colour values are all "
                f"{int(data[..., 0].min())}); save it as a single-channel image of class indices or 0/255"
            )
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


def _read(path: Path, label: bool, header_only: bool) -> tuple[np.ndarray | None, dict]:
    from PIL import Image

    try:
        with Image.open(path) as img:
            if getattr(img, "n_frames", 1) > 1:
                raise InputError(f"{path}: multi-page image ({img.n_frames} frames); save one 2D image per file")
            mode, size = img.mode, img.size
            if label and img.format == "JPEG" and path.suffix.lower() not in (".jpg", ".jpeg"):
                raise InputError(
                    f"{path}: JPEG data under a {path.suffix} name; JPEG changes label values, save the mask as "
                    f"a real {path.suffix} (or name it .jpg to have it read as a lossy mask)"
                )
            data = None if header_only else _array(img, label)
    except InputError:
        raise
    except Exception as exc:
        raise corrupt(path, exc) from exc
    channels = 3 if mode in _COLOUR_MODES and not label else 1
    if data is not None:
        channels = data.shape[0]
    meta = meta_dict(path, "image", np.eye(3), (1.0, 1.0), (size[1], size[0]), channels, {"mode": mode})
    return data, meta


def read_header(path: Path) -> dict:
    return _read(path, label=False, header_only=True)[1]


def read(path: Path, label: bool) -> tuple[np.ndarray, dict]:
    data, meta = _read(path, label, header_only=False)
    assert data is not None  # header_only=False always reads the voxels
    return data, meta


def write(array: np.ndarray, meta: dict, path: Path, channels: bool = False) -> None:
    """Write a 2D label map (uint8, or uint16 for PNG/TIFF)."""
    from PIL import Image

    if channels:
        raise InputError(f"{path}: 2D image formats hold label maps only; write probabilities as .npz")
    if array.ndim != 2:
        raise InputError(f"{path}: PNG/TIFF hold 2D masks but the label map is {array.ndim}D; write .nii.gz")
    if path.suffix.lower() == ".bmp" and array.dtype != np.uint8:
        raise InputError(f"{path}: BMP holds 8-bit labels but values reach {int(array.max())}; write .png")
    Image.fromarray(array).save(path)
