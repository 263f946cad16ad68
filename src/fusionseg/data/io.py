"""Reading and writing images, label maps and probabilities while keeping their geometry.

The format follows the file extension (see :mod:`fusionseg.data.formats`). Every reader returns
``(array, meta)``; ``meta`` is a plain dict that a writer takes back to produce a file in the same
geometry:

- ``format``: the registry name (``"nifti"``, ``"nrrd"``, ``"metaimage"``, ``"png"``, ...).
- ``affine``: (D+1, D+1) float64 voxel → world matrix, RAS+ mm in 3D; identity for 2D raster images.
- ``spacing``: voxel size in mm per array axis; ``spatial_shape``: array spatial shape;
  ``num_channels``: channels in the file.
- ``header``: the format's own header (nibabel header / NRRD dict / ITK geometry) used when writing back.

Arrays keep the file's voxel order: 3D (X, Y, Z) (ITK's (Z, Y, X) arrays are transposed), 2D
images (H, W). Images come back as float32 (C, *S), label maps as integer (*S).

Example:
    >>> image, meta = read_image("case_0000.mha")       # (1, X, Y, Z) float32
    >>> write_label(prediction, meta, "pred.mha")        # same spacing, origin and direction
    >>> write_probabilities(probs, meta, "pred.nii.gz")  # (K, X, Y, Z) float32 → a 4D NIfTI
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusionseg.data.backends.common import check_file
from fusionseg.data.formats import (
    EXTENSIONS_2D,
    EXTENSIONS_3D,
    IMAGE_EXTENSIONS,
    FileFormat,
    Writer,
    format_of,
    split_extension,
)
from fusionseg.errors import InputError

__all__ = [
    "BINARY_MASK_RULE",
    "BINARY_THRESHOLD",
    "EXTENSIONS_2D",
    "EXTENSIONS_3D",
    "LOSSY_CLASS_RULE",
    "SUPPORTED_EXTENSIONS",
    "file_format",
    "label_dtype",
    "read_header",
    "read_image",
    "read_label",
    "split_extension",
    "write_label",
    "write_probabilities",
]

SUPPORTED_EXTENSIONS = IMAGE_EXTENSIONS


def file_format(path: str | Path) -> str:
    """Format name of ``path`` from its extension; InputError for unsupported ones."""
    return format_of(path).name


def _read(path: str | Path, label: bool) -> tuple[np.ndarray, dict, FileFormat]:
    path = Path(path)
    fmt = format_of(path)
    if not fmt.folder:
        check_file(path)
    data, meta = fmt.reader(path, label)
    meta["format"] = fmt.name
    return data, meta, fmt


def read_header(path: str | Path) -> dict:
    """Geometry (``meta`` without the voxel data) of an image file; reads only what it must."""
    path = Path(path)
    fmt = format_of(path)
    if not fmt.folder:
        check_file(path)
    meta = fmt.header_reader(path)
    meta["format"] = fmt.name
    return meta


def read_image(path: str | Path) -> tuple[np.ndarray, dict]:
    """Image file → (float32 array (C, *S), meta). 3D formats give (C, X, Y, Z), 2D formats (C, H, W)."""
    data, meta, _ = _read(path, label=False)
    return _c_order(np.asarray(data, dtype=np.float32)), meta


def _c_order(data: np.ndarray) -> np.ndarray:
    """A C-ordered copy of ``data`` unless it is one; NIfTI's Fortran-ordered volumes go through torch's
    blocked, threaded copy (4× faster than NumPy's strided one on a 512×512×96 CT)."""
    if data.flags.c_contiguous:
        return data
    if not data.flags.writeable or data.dtype.byteorder not in "=|":
        return np.ascontiguousarray(data)
    import torch

    return torch.from_numpy(data).contiguous().numpy()


def read_label(
    path: str | Path, classes: Sequence[int] | None = None, ignore_label: int | None = None
) -> tuple[np.ndarray, dict]:
    """Label map → (integer array (*S), meta with ``spacing`` in mm).

    Binary 2D masks are mapped to 0/1 (:data:`BINARY_MASK_RULE`); lossy (JPEG) masks of a dataset
    declaring more than two ``classes`` (label values, background included) are read as class
    indices instead (:data:`LOSSY_CLASS_RULE`). A mask that reads as all background although its
    file holds other values is an InputError. Float-typed volumes must hold whole numbers. Values
    0..255 come back as uint8, others as int64.
    """
    data, meta, fmt = _read(path, label=True)
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
        if data.size and float(np.abs(data).max()) >= 2**31:
            raise InputError(
                f"{path}: label map holds values up to {float(np.abs(data).max()):.3g}; store integer class indices"
            )
        data = rounded
    elif data.dtype.kind == "b":
        data = data.astype(np.uint8)
    elif data.dtype.kind not in "iu":
        raise InputError(f"{path}: label map has unsupported data type {data.dtype}; use an integer type")
    if fmt.spatial_dims == (2,) and data.size:
        raw_max = int(data.max())
        if not fmt.lossless and classes is not None and len(classes) > 2:
            data = _nearest_class(data, [*classes, *([ignore_label] if ignore_label is not None else [])], path)
        elif not fmt.lossless or data.max() == 255:
            data = _binary_2d_mask(data, fmt.lossless)
        if raw_max > 0 and not data.any():
            raise InputError(
                f"{path}: the mask holds values up to {raw_max} but reads as all background (binary masks: "
                f'foreground >= {BINARY_THRESHOLD}); for class indices declare the classes in dataset.json "labels" '
                "and save the masks as PNG"
            )
    small = data.size and data.min() >= 0 and data.max() < 256
    data = data.astype(np.uint8 if small else np.int64)
    meta["num_channels"] = 1
    return data, meta


BINARY_THRESHOLD = 128
BINARY_MASK_RULE = (
    "2D masks stored as 0/255 are binary: grey value >= 128 is foreground (1), below is background (0); "
    "JPEG masks and 0/255 masks with up to 1% other values (compression or resizing noise) are thresholded so"
)


LOSSY_CLASS_RULE = (
    "JPEG masks of a dataset declaring more than two classes are read as class indices: each pixel takes the "
    "nearest declared label value (JPEG may move pixels at class borders; save masks as PNG for exact labels)"
)
_LOSSY_TOLERANCE = 16  # grey levels a JPEG may move a class index


def _nearest_class(data: np.ndarray, classes: Sequence[int], path: str | Path) -> np.ndarray:
    """Each value of a lossy mask → the nearest of ``classes``; InputError when values lie far from all of them."""
    candidates = np.unique(np.asarray(classes, dtype=np.int64))
    values = np.asarray(data, dtype=np.int64)
    index = np.clip(np.searchsorted(candidates, values), 1, max(len(candidates) - 1, 1))
    lower, upper = candidates[index - 1], candidates[np.minimum(index, len(candidates) - 1)]
    nearest = np.where(np.abs(values - lower) <= np.abs(upper - values), lower, upper)
    far = int(np.abs(values - nearest).max()) if values.size else 0
    if far > _LOSSY_TOLERANCE:
        raise InputError(
            f"{path}: JPEG mask values up to {int(values.max())} are not near the declared label values "
            f"{candidates.tolist()[:8]} (a mask scaled for viewing?); store class indices 0..K-1 as PNG"
        )
    return nearest


def _binary_2d_mask(data: np.ndarray, lossless: bool) -> np.ndarray:
    """0/1 mask of a binary 2D mask (:data:`BINARY_MASK_RULE`); class-index masks (max < 255) are returned as is."""
    if lossless:
        at_ends = np.count_nonzero((data == 0) | (data == 255))
        if at_ends < 0.99 * data.size:  # class indices (e.g. 0, 1, 2, ... with 255 as a class), not a noisy 0/255
            return data
    return data >= BINARY_THRESHOLD


def label_dtype(max_value: int) -> type[np.uint8] | type[np.uint16]:
    """Smallest unsigned type for label values up to ``max_value``: uint8 (< 256) or uint16."""
    if max_value >= 2**16:
        raise InputError(f"label value {max_value} does not fit 16 bits; use at most 65535 classes")
    return np.uint8 if max_value < 256 else np.uint16


def _writable(path: Path) -> tuple[FileFormat, Writer]:
    """The format of ``path`` and its writer (InputError where it has none); creates the parent folder."""
    fmt = format_of(path)
    if fmt.writer is None:
        raise InputError(f"{path}: JPEG is lossy and would corrupt the label values; save masks as .png or .tif")
    path.parent.mkdir(parents=True, exist_ok=True)
    return fmt, fmt.writer


def write_label(label_map: np.ndarray, meta: dict, path: str | Path, binary_as_255: bool = False) -> Path:
    """Write an integer label map (*S) with the geometry in ``meta`` (from a reader) to ``path``.

    The format follows ``path``'s extension (any format of the registry that holds labels): NIfTI
    keeps ``meta``'s affine (and its qform/sform codes), NRRD its space, directions and origin,
    MetaImage its spacing, origin and direction. Values are stored as uint8, or uint16 from 256
    classes on. 2D masks with ``binary_as_255`` store a 0/1 map as 0/255 (visible in viewers).
    """
    path = Path(path)
    fmt, writer = _writable(path)
    label_map = np.asarray(label_map)
    if label_map.dtype.kind not in "iub":
        raise ValueError(f"write_label expects an integer label map, got dtype {label_map.dtype}")
    if label_map.ndim != len(meta["spatial_shape"]) or tuple(label_map.shape) != tuple(meta["spatial_shape"]):
        raise ValueError(
            f"label map shape {tuple(label_map.shape)} does not match the reference grid {tuple(meta['spatial_shape'])}"
        )
    if label_map.size and int(label_map.min()) < 0:
        raise ValueError(f"label maps hold non-negative class indices, got minimum {int(label_map.min())}")
    max_value = int(label_map.max()) if label_map.size else 0
    data = label_map.astype(label_dtype(max_value))
    if binary_as_255 and fmt.spatial_dims == (2,) and max_value <= 1:
        data = data * np.uint8(255)
    writer(data, meta, path)
    return path


def write_probabilities(probabilities: np.ndarray, meta: dict, path: str | Path) -> Path:
    """Write float channels (K, *S) (e.g. class probabilities) with ``meta``'s geometry to ``path``.

    3D formats store a multi-channel file (NIfTI (X, Y, Z, K), NRRD with a leading ``list`` axis,
    MetaImage vector pixels); 2D raster images cannot hold float channels, use ``.npz`` (key
    ``probabilities`` plus the input's ``affine`` and ``spacing``). Values are stored as float32.
    """
    path = Path(path)
    fmt, writer = _writable(path)
    if not fmt.multichannel or fmt.spatial_dims == (2,):
        raise InputError(f"{path}: {fmt.name} cannot hold float channels; write probabilities as .npz or .nii.gz")
    array = np.asarray(probabilities, dtype=np.float32)
    if tuple(array.shape[1:]) != tuple(meta["spatial_shape"]):
        raise ValueError(
            f"probabilities (K, *S) {tuple(array.shape)} do not match the reference grid {tuple(meta['spatial_shape'])}"
        )
    writer(array, meta, path, channels=True)
    return path
